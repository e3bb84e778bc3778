# The two commands: `make demo` (everything, locally) and `make test` (what CI runs).
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin

.PHONY: install controlplane helm sync-crds demo test test-unit clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

install: $(VENV)/.installed

# Builds etcd, kube-apiserver and kube-controller-manager from Go modules once (cached in ~/.cache/tenantstore).
controlplane: install
	$(BIN)/python -m tenantstore.devcluster build

# Builds helm from its Go module once (cached beside the control plane); $$HELM points at another helm.
helm: install
	$(BIN)/python -m tenantstore.devcluster helm

# crds/ is the source; the chart and the kustomize base carry copies (tests fail when they drift).
sync-crds:
	cp crds/*.yaml charts/tenantstore-operator/crds/
	cp crds/*.yaml manifests/base/crds/

demo: controlplane
	$(BIN)/tenantstore demo

test: controlplane helm
	$(BIN)/pytest

test-unit: install
	$(BIN)/pytest tests/unit tests/backends

clean:
	rm -rf $(VENV) .pytest_cache
