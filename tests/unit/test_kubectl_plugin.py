"""`kubectl tenantstore`'s rendering and flags, on TenantStores shaped as the operator writes them (the plugin against
the real API server: tests/e2e/test_kubectl_plugin_e2e.py)."""
from __future__ import annotations

import datetime

import pytest

from tenantstore import kubectl_plugin as plugin

NOW = datetime.datetime(2026, 12, 1, 12, 0, tzinfo=datetime.timezone.utc)
ACME = {
    "metadata": {"name": "acme", "namespace": "customers", "generation": 3},
    "spec": {"tenantId": "acme", "tier": "pro", "storeClassName": "standard"},
    "status": {
        "phase": "Ready", "observedGeneration": 3, "storeClassName": "standard", "secretName": "acme-store",
        "isolation": {"relational": "schema", "vector": "namespace"},
        "relational": {"host": "db", "port": 5432, "database": "tenants", "schema": "tenant_acme", "role": "tenant_acme"},
        "vectorStore": {"backend": "pgvector", "index": "shared-384-cosine-1", "namespace": "acme",
                        "table": "tenantstore_vectors.tenant_acme"},
        "quotas": {"maxDocuments": 10000, "maxStorageBytes": "1Gi", "maxConnections": 20, "maxDailyQueries": 0},
        "usage": {"documents": 2500, "storageBytes": 3 * 2**20, "connections": 2, "dailyQueries": 17,
                  "measuredAt": "2026-12-01T11:59:30Z"},
        "credentials": [{"name": "viewer", "access": "readOnly", "secretName": "acme-viewer"}],
        "cost": {"currency": "EUR", "monthToDate": 1.5, "projected": 45.0, "budget": {"monthlyLimit": 10}},
        "conditions": [{"type": "Ready", "status": "True", "reason": "Provisioned", "message": "ready"},
                       {"type": "QuotaExceeded", "status": "False", "reason": "WithinLimits", "message": "ok"}]}}
EVENTS = [{"type": "Normal", "reason": "Provisioned", "message": "role created", "lastTimestamp": "2026-12-01T11:00:00Z",
           "metadata": {}}]


def test_a_tenantstore_reads_as_a_tree() -> None:
    tree = plugin.status_tree(ACME, EVENTS, NOW)
    assert tree.splitlines()[0] == "TenantStore customers/acme  tenant acme, tier pro"
    for expected in ("├─ Phase      Ready  (Ready=True Provisioned; generation 3/3)",
                     "├─ StoreClass standard",
                     "├─ Postgres   role tenant_acme, schema tenant_acme in database tenants at db:5432",
                     "├─ Vectors    pgvector index shared-384-cosine-1, namespace acme "
                     "(table tenantstore_vectors.tenant_acme)",
                     "├─ Secret     acme-store; credentials viewer (readOnly, Secret acme-viewer)",
                     "├─ Usage      measured 30s ago",
                     "│   documents      [#####...............]  25%  2,500 / 10,000",
                     "│   storage        [....................]   0%  3.0 MiB / 1.0 GiB",
                     "│   daily queries  (no limit)                   17",
                     "├─ Cost       EUR 1.50 this month, projected 45.00; budget 10.00 [###.................]  15%",
                     "      1h  Normal   Provisioned              role created"):
        assert expected in tree.splitlines(), f"{expected!r} not in\n{tree}"
    assert "password" not in tree


def test_every_tenantstore_of_the_namespace_in_a_table() -> None:
    table = plugin.status_table([ACME]).splitlines()
    assert table[0].split() == ["NAME", "TENANT", "TIER", "PHASE", "READY", "DOCUMENTS", "STORECLASS"]
    assert table[1].split() == ["acme", "acme", "pro", "Ready", "True", "2,500", "/", "10,000", "standard"]


SECRET = {"host": "db", "port": "5432", "database": "tenants", "user": "tenant_acme", "password": "s3cret",
          "schema": "tenant_acme", "vectorBackend": "pgvector", "vectorTable": "tenantstore_vectors.tenant_acme",
          "globalStore": "standard-global-3-cosine", "globalTable": "tenantstore_vectors.global_3_cosine_x",
          "globalUri": "postgresql://tenant_acme:s3cret@db:5432/tenants"}


def test_credentials_never_show_the_password_unless_asked() -> None:
    hidden = plugin.credential_lines(SECRET, "env", show_password=False)
    assert "s3cret" not in hidden and "PGUSER=tenant_acme" in hidden.splitlines()
    assert "TENANTSTORE_VECTOR_TABLE=tenantstore_vectors.tenant_acme" in hidden.splitlines()
    assert "TENANTSTORE_GLOBAL_TABLE=tenantstore_vectors.global_3_cosine_x" in hidden.splitlines()
    assert "PGPASSWORD=s3cret" in plugin.credential_lines(SECRET, "env", show_password=True).splitlines()
    assert "s3cret" not in plugin.credential_lines(SECRET, "psql", show_password=False)
    assert plugin.credential_lines(SECRET, "psql", show_password=True).startswith("PGPASSWORD='s3cret' psql ")


def test_a_scoped_credential_is_found_by_name() -> None:
    assert plugin.secret_name(ACME, None) == "acme-store"
    assert plugin.secret_name(ACME, "viewer") == "acme-viewer"
    with pytest.raises(plugin.PluginError, match="no credential 'app'"):
        plugin.secret_name(ACME, "app")


def test_kubectls_flags_may_stand_anywhere_before_a_double_dash() -> None:
    flags, rest = plugin.split_globals(["psql", "acme", "-n", "customers", "--context=dev", "--", "-n", "x"])
    assert flags == {"namespace": "customers", "context": "dev"}
    assert rest == ["psql", "acme", "--", "-n", "x"]


def test_psqls_own_arguments_follow_a_double_dash_and_the_plugins_flags_may_follow_the_name() -> None:
    flags, args, passthrough = plugin.parse(["psql", "acme", "--credential", "viewer", "-n", "customers", "--",
                                             "-tAc", "SELECT 1", "--credential", "x"])
    assert flags == {"namespace": "customers"}
    assert (args.command, args.name, args.credential) == ("psql", "acme", "viewer")
    assert passthrough == ["-tAc", "SELECT 1", "--credential", "x"]


def test_arguments_after_a_double_dash_are_refused_where_no_psql_runs(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        plugin.parse(["status", "acme", "--", "-x"])
    assert "arguments after -- are psql's" in capsys.readouterr().err
