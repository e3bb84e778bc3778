# The two commands: `make demo` (everything, locally) and `make test` (what CI runs).
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin

.PHONY: install controlplane helm kstatus seaweedfs jaeger promtool image-tools image sync-crds sync-monitoring demo test test-unit clean bench bench-sweep bench-export bench-probe bench-query bench-move bench-shards chaos

$(VENV)/.installed: pyproject.toml client/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]' -e './client[pinecone]'
	touch $@

install: $(VENV)/.installed

# Builds etcd, kube-apiserver and kube-controller-manager from Go modules once (cached in ~/.cache/tenantstore).
controlplane: install
	$(BIN)/python -m tenantstore_dev.controlplane build

# Builds helm from its Go module once (cached beside the control plane); $$HELM points at another helm.
helm: install
	$(BIN)/python -m tenantstore_dev.controlplane helm

# Builds kstatus (cli-utils' status library, as Flux's `wait: true` uses it) once, beside helm; $$KSTATUS overrides.
kstatus: install
	$(BIN)/python -m tenantstore_dev.controlplane kstatus

# Builds SeaweedFS's weed (a real S3-compatible server for the export tests) once, beside helm; $$WEED overrides.
seaweedfs: install
	$(BIN)/python -m tenantstore_dev.controlplane seaweedfs

# Builds Jaeger (the trace tests' OTLP receiver and query API) once, beside helm; $$JAEGER overrides.
jaeger: install
	$(BIN)/python -m tenantstore_dev.controlplane jaeger

# buildah and debootstrap, from Debian's packages (CI runs as root): the image is built without a Docker daemon.
image-tools:
	@command -v buildah >/dev/null && command -v debootstrap >/dev/null || { apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends buildah debootstrap >/dev/null; }

# The operator's image from the Dockerfile, on a Debian base made by debootstrap (no registry needed), then checked:
# `tenantstore run --help` inside it, its user non-root, no dev harness, its Python packages listed.
image: install image-tools
	$(BIN)/python -m tenantstore_dev.image build
	$(BIN)/python -m tenantstore_dev.image check

# crds/ is the source; the chart and the kustomize base carry copies (tests fail when they drift).
sync-crds:
	cp crds/*.yaml charts/tenantstore-operator/crds/
	cp crds/*.yaml manifests/base/crds/

# promtool tests the alert rules; Debian's prometheus package provides it (CI runs as root).
promtool:
	@command -v promtool >/dev/null || { apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null; }

# The PrometheusRule in manifests/ is generated from the chart's rules file (a test checks they agree).
sync-monitoring: install
	$(BIN)/python -c "import yaml; groups = yaml.safe_load(open('charts/tenantstore-operator/files/prometheus-rules.yaml')); \
	doc = {'apiVersion': 'monitoring.coreos.com/v1', 'kind': 'PrometheusRule', 'metadata': {'name': 'tenantstore-operator', \
	'namespace': 'tenantstore-system', 'labels': {'app.kubernetes.io/name': 'tenantstore-operator'}}, 'spec': groups}; \
	f = open('manifests/monitoring/prometheusrule.yaml', 'w'); \
	f.write('# Generated from charts/tenantstore-operator/files/prometheus-rules.yaml (make sync-monitoring).\n'); \
	yaml.safe_dump(doc, f, sort_keys=False, width=120)"

demo: controlplane
	$(BIN)/python -m tenantstore_dev demo

test: controlplane helm kstatus seaweedfs jaeger promtool
	$(BIN)/pytest

# The fast tier: no control plane, no Postgres (tests/backends need Postgres; `make test` runs them).
test-unit: install
	$(BIN)/pytest tests/unit

# The provisioning benchmark: the operator against the floor on the real control plane and Postgres (bench/README.md).
# `make bench N=1000`; BENCH_ARGS passes more options, e.g. BENCH_ARGS=--profile. Results go to bench/results/.
# The sweep runs the floor up to N = 1,000 only (--floor-up-to); its 10,000 alone takes about an hour and a half.
N ?= 200
SWEEP ?= 100,300,1000,3000,10000
bench: controlplane
	$(BIN)/python -m bench.provisioning --n $(N) $(BENCH_ARGS)

bench-sweep: controlplane
	$(BIN)/python -m bench.provisioning --sweep $(SWEEP) $(BENCH_ARGS)

# The export benchmark: one TenantStoreExport of a tenant with N vectors (384 dimensions) and N rows.
# `make bench-export` (N defaults to 100000 here). Prints one `export:` line; results in bench/results/.
bench-export: N = 100000
bench-export: controlplane
	$(BIN)/python -m bench.export --n $(N)

# A move to a StoreClass on a second Postgres server and back: a tenant with N vectors (384 dimensions) and N rows
# (default 10000), a client writing all along. Prints `move:` lines (time, freeze); results in bench/results/.
bench-move: N = 10000
bench-move: controlplane
	$(BIN)/python -m bench.class_move --n $(N)

# The search-latency probe's cost: N tenants (default 1000) on an embedded Postgres, loaded through the client
# library, one probe pass over all of them. Prints one `search-probe:` line; results in bench/results/.
bench-probe: N = 1000
bench-probe: install
	$(BIN)/python -m bench.search_probe --n $(N)

# What isolation costs per query: N tenants (default 100) in one shared index, 10 with dedicated tables and the
# global index, 10,000 384-dimensional vectors each; a tenant's query through its own role against the superuser's.
bench-query: N = 100
bench-query: install
	$(BIN)/python -m bench.query --n $(N)

# Provisioning by several active replicas (`--shards`): N TenantStores (default 1000) by one operator without
# shards, then by 1 and 3 replicas of 12 shards (REPLICAS=0,2,4 to change). Results in bench/results/.
bench-shards: N = 1000
bench-shards: REPLICAS = 0,1,3
bench-shards: controlplane
	$(BIN)/python -m bench.sharding --n $(N) --replicas $(REPLICAS)

# Chaos: N tenants of every tier provisioned and torn down while the operator is SIGKILLed (KILLS times, default
# max(3, N/4)), Postgres goes away for a few seconds and the kube-apiserver restarts; SEED repeats a run.
# `make chaos N=50`; `make test` runs it with 6 tenants and 3 kills. Prints one `chaos: seed=...` summary line.
chaos: N = 50
chaos: controlplane
	CHAOS_N=$(N) $(if $(KILLS),CHAOS_KILLS=$(KILLS)) $(if $(SEED),CHAOS_SEED=$(SEED)) \
	  $(BIN)/pytest tests/e2e/test_chaos.py -s -p no:cacheprovider

clean:
	rm -rf $(VENV) .pytest_cache
