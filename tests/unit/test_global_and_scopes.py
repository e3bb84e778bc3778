"""The pieces of global knowledge and scopes that need no backend: spec.globalStore as the operator reads it, what
a tenant Secret carries to reach the global index, and how the client library confines a scoped call."""
from __future__ import annotations

import pytest
import tenantstore_client as ts
from tenantstore_client import scopes
from tenantstore_client.secret import Coordinates

from tenantstore.backends import GlobalPlacement, RelationalPlacement
from tenantstore.globalstore import reader_keys
from tenantstore.models import GlobalIndex, InvalidResource, Metric, StoreClass

CLASS = {"metadata": {"name": "standard"}, "spec": {"postgres": {"adminSecretRef": {"name": "a", "namespace": "b"}}}}


def with_global(raw: object) -> StoreClass:
    return StoreClass.from_body({**CLASS, "spec": {**CLASS["spec"], "globalStore": raw}})


def test_a_class_has_one_global_index_per_dimension_and_metric() -> None:
    store_class = with_global({"indexes": [{"dimension": 384}, {"dimension": 384, "metric": "dotproduct"}],
                               "writerSecretNamespace": "platform"})
    assert store_class.global_index_for(384, Metric.COSINE) == GlobalIndex("standard", 384, Metric.COSINE)
    assert store_class.global_index_for(768, Metric.COSINE) is None
    assert store_class.global_writer_namespace == "platform"
    with pytest.raises(InvalidResource, match="one global index per dimension and metric"):
        with_global({"indexes": [{"dimension": 3}, {"dimension": 3, "metric": "cosine"}]})
    assert StoreClass.from_body(CLASS).global_indexes == ()


def test_global_names_fit_postgres_and_differ_per_class_and_shape() -> None:
    long_name = "a" * 253
    names = {GlobalIndex(klass, dimension, Metric.COSINE).writer_role
             for klass in (long_name, long_name[:-1] + "b") for dimension in (3, 4)}
    assert len(names) == 4 and all(len(name) <= 63 for name in names)
    index = GlobalIndex("standard", 384, Metric.COSINE)
    assert index.store_name == index.writer_secret == "standard-global-384-cosine"


RELATIONAL = RelationalPlacement(host="db", port=5432, database="tenants", schema="tenant_acme", role="tenant_acme")
TABLE = GlobalPlacement(backend="pgvector", name="g", table="tenantstore_vectors.global_3_cosine_x", database="tenants")


def test_a_tenant_secret_reaches_the_global_index_with_the_tenants_own_login() -> None:
    assert reader_keys(TABLE, RELATIONAL, "pw", owner=True) == {
        "globalStore": "g", "globalTable": "tenantstore_vectors.global_3_cosine_x",
        "globalUri": "postgresql://tenant_acme:pw@db:5432/tenants"}
    own_database = RelationalPlacement("db", 5432, "tenant_acme", "public", "tenant_acme")
    assert reader_keys(TABLE, own_database, "pw", owner=True)["globalUri"].endswith("/tenants")
    assert reader_keys(TABLE, own_database, "pw", owner=False) == {}  # a scoped login may not connect there
    assert reader_keys(None, RELATIONAL, "pw", owner=True) == {}
    pinecone = GlobalPlacement(backend="pinecone", name="g", namespace="_global", host="h", index="shared-3-cosine-0")
    assert reader_keys(pinecone, RELATIONAL, "pw", owner=False) == {"globalStore": "g", "globalHost": "h",
                                                                     "globalNamespace": "_global"}


def test_the_global_view_of_a_secret_is_read_only() -> None:
    coordinates = Coordinates.from_secret({"vectorBackend": "pgvector", "uri": "postgresql://t@db/own",
                                           "vectorTable": "s.t", "tenantId": "acme", "globalStore": "g",
                                           "globalTable": "tenantstore_vectors.g", "globalUri": "postgresql://t@db/x"})
    view = coordinates.global_view()
    assert (view.table, view.uri, view.read_only, view.tenant_id, view.store_name) == (
        "tenantstore_vectors.g", "postgresql://t@db/x", True, "", "g")
    with pytest.raises(ts.ConfigurationError, match="names no global index"):
        Coordinates.from_secret({"vectorBackend": "pgvector", "uri": "u", "vectorTable": "s.t"}).global_view()


def test_a_scoped_call_is_fenced_by_scope_and_tenant() -> None:
    assert scopes.user("alice") == "user_alice" and scopes.project("q4") == "project_q4"
    for bad in ("alice", "user_", "team_x", "user_a b", "user_" + "x" * 200, 7):
        with pytest.raises(ts.InvalidRequest):
            scopes.listed(bad)  # type: ignore[arg-type]
    assert scopes.confined({"lang": "en"}, [], "acme") == {"lang": "en"}  # unscoped: the whole store
    assert scopes.confined({"lang": "en"}, ["user_alice"], "acme") == {"$and": [
        {"_scope": {"$in": ["user_alice"]}}, {"_tenant": "acme"}, {"lang": "en"}]}
    assert scopes.in_scopes({"_scope": "user_alice", "_tenant": "acme"}, ["user_alice"], "acme")
    assert not scopes.in_scopes({"_scope": "user_alice", "_tenant": "other"}, ["user_alice"], "acme")
    assert scopes.visible({"_scope": "user_alice", "_tenant": "acme", "lang": "en"}) == {"lang": "en"}
    assert scopes.kind(["user_a", "user_b"]) == "user" and scopes.kind(["user_a", "project_b"]) == "mixed"
    with pytest.raises(ts.InvalidRequest, match="one scope"):
        scopes.single(["user_a", "user_b"])
    assert scopes.single(None) == [] and scopes.single("user_a") == ["user_a"]
