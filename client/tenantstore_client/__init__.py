"""A tenant's vector store, from the Secret the TenantStore operator writes: pgvector or Pinecone behind one
interface, sync and async, with the tenant's namespace or table applied by the library.

    import tenantstore_client as ts

    with ts.connect("/var/run/secrets/acme-store") as store:        # the mounted Secret
        store.upsert([ts.Vector("doc-1", [0.1, 0.2, 0.3], {"lang": "en"})])
        hits = store.query([0.1, 0.2, 0.3], top_k=5, filter={"lang": "en"})
        store.upsert([ts.Vector("note-1", [0.3, 0.1, 0.2])], scope=ts.scopes.user("alice"))
        mine = store.query([0.3, 0.1, 0.2], scope=ts.scopes.user("alice"))   # alice's vectors only
        docs = store.query_global([0.1, 0.2, 0.3])                            # the class's global index
"""
from tenantstore_client import scopes
from tenantstore_client.errors import (ConfigurationError, InvalidRequest, ReadOnlyCredential, TenantStoreError,
                                       WritesBlocked)
from tenantstore_client.secret import Environment, SecretDirectory, SecretSource, StaticSecret
from tenantstore_client.store import AsyncTenantStore, TenantStore, connect, connect_async
from tenantstore_client.types import Filter, Match, Vector

__all__ = ["AsyncTenantStore", "ConfigurationError", "Environment", "Filter", "InvalidRequest", "Match",
           "ReadOnlyCredential", "SecretDirectory", "SecretSource", "StaticSecret", "TenantStore",
           "TenantStoreError", "Vector", "WritesBlocked", "connect", "connect_async", "scopes"]
