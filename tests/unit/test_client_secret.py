"""The client library's reading of a Secret: mounted files (as the kubelet lays them out), environment variables,
and what each key means."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import tenantstore_client as ts
from tenantstore_client.secret import Coordinates, SecretReader

PGVECTOR = {"uri": "postgresql://tenant_acme:pw@db:5432/tenants", "vectorBackend": "pgvector",
            "vectorTable": "tenantstore_vectors.tenant_acme", "vectorNamespace": "acme", "vectorMetric": "euclidean",
            "vectorDimension": "384"}


def kubelet_mount(directory: Path, data: dict[str, str]) -> None:
    """Keys are links into a timestamped directory through `..data`, which the kubelet swaps on update."""
    version = directory / "..2026_12_01_00_00_00.000000001"
    version.mkdir(parents=True)
    for key, value in data.items():
        (version / key).write_text(value)
    (directory / "..data").symlink_to(version.name)
    for key in data:
        (directory / key).symlink_to(Path("..data") / key)


def test_a_mounted_secret_reads_as_its_keys(tmp_path: Path) -> None:
    kubelet_mount(tmp_path, {**PGVECTOR, "vectorAccess": "readOnly"})
    coordinates = Coordinates.from_secret(ts.SecretDirectory(tmp_path).read())
    assert (coordinates.backend, coordinates.table, coordinates.namespace) == \
        ("pgvector", "tenantstore_vectors.tenant_acme", "acme")
    assert (coordinates.metric, coordinates.dimension, coordinates.read_only, coordinates.writes_blocked) == \
        ("euclidean", 384, True, False)


def test_environment_variables_are_the_keys_in_upper_snake_case(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [n for n in os.environ if n.startswith("APP_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("APP_URI", PGVECTOR["uri"])
    monkeypatch.setenv("APP_VECTOR_BACKEND", "pgvector")
    monkeypatch.setenv("APP_VECTOR_TABLE", "tenant_acme.vectors")
    monkeypatch.setenv("APP_WRITES_BLOCKED", "true")
    monkeypatch.setenv("APP_PINECONE_API_KEY", "pk")
    read = ts.Environment("APP_").read()
    assert read == {"uri": PGVECTOR["uri"], "vectorBackend": "pgvector", "vectorTable": "tenant_acme.vectors",
                    "writesBlocked": "true", "pineconeApiKey": "pk"}
    coordinates = Coordinates.from_secret(read)
    assert coordinates.writes_blocked and coordinates.namespace == "" and coordinates.dimension is None


@pytest.mark.parametrize(("data", "message"), [
    ({}, "vectorBackend is None"),
    ({**PGVECTOR, "vectorBackend": "qdrant"}, "'qdrant'"),
    ({k: v for k, v in PGVECTOR.items() if k != "vectorTable"}, "lacks vectorTable"),
    ({"vectorBackend": "pinecone", "vectorNamespace": "acme"}, "lacks vectorHost"),
])
def test_a_secret_that_does_not_describe_a_store_is_refused(data: dict[str, str], message: str) -> None:
    with pytest.raises(ts.ConfigurationError, match=message):
        Coordinates.from_secret(data)


def test_a_missing_mount_is_a_configuration_error(tmp_path: Path) -> None:
    with pytest.raises(ts.ConfigurationError, match="cannot read"):
        ts.SecretDirectory(tmp_path / "absent").read()


def test_the_secret_is_read_again_once_stale(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    for key, value in PGVECTOR.items():
        (tmp_path / "data" / key).write_text(value)
    fresh, cached = SecretReader(ts.SecretDirectory(tmp_path / "data"), 0), \
        SecretReader(ts.SecretDirectory(tmp_path / "data"), 3600)
    (tmp_path / "data" / "writesBlocked").write_text("true\n")
    assert fresh.current().writes_blocked
    assert not cached.current().writes_blocked  # within refresh_seconds the last read stands
