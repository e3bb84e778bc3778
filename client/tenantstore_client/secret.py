"""Where a tenant's coordinates come from: its Secret, mounted as files, passed as environment variables, or given
as a mapping; and what they say.

A mounted Secret is re-read at most every `refresh_seconds`, so a rotated password, a quota Block and its end
reach the application without a restart (the kubelet refreshes mounted Secrets within about a minute;
environment variables never change in a running process).
"""
from __future__ import annotations

import dataclasses
import enum
import os
import re
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Protocol

from tenantstore_client.errors import ConfigurationError

# The keys the operator writes (README "Credentials"); the Secret carries nothing of other tenants.
BACKEND, ACCESS, WRITES_BLOCKED = "vectorBackend", "vectorAccess", "writesBlocked"


class Backend(enum.StrEnum):
    PGVECTOR = "pgvector"
    PINECONE = "pinecone"


class SecretSource(Protocol):
    def read(self) -> Mapping[str, str]:
        """The Secret's keys and values as they are now."""


@dataclasses.dataclass(frozen=True)
class SecretDirectory:
    """A Secret mounted as a volume: one file per key (the kubelet's `..data` links are skipped)."""

    path: Path

    def read(self) -> Mapping[str, str]:
        try:
            return {entry.name: entry.read_text() for entry in Path(self.path).iterdir()
                    if not entry.name.startswith(".") and entry.is_file()}
        except OSError as error:
            raise ConfigurationError(f"cannot read the tenant's Secret from {self.path}: {error}") from None


@dataclasses.dataclass(frozen=True)
class Environment:
    """A Secret passed as environment variables: key `vectorBackend` is `TENANTSTORE_VECTOR_BACKEND`
    (for example with `envFrom: [{secretRef: {name: acme-store}, prefix: ...}]` and renamed keys, or one
    `secretKeyRef` per variable)."""

    prefix: str = "TENANTSTORE_"

    def read(self) -> Mapping[str, str]:
        wanted = {self.prefix + re.sub(r"(?<!^)(?=[A-Z])", "_", key).upper(): key for key in KNOWN_KEYS}
        return {wanted[name]: value for name, value in os.environ.items() if name in wanted}


@dataclasses.dataclass(frozen=True)
class StaticSecret:
    data: Mapping[str, str]

    def read(self) -> Mapping[str, str]:
        return self.data


KNOWN_KEYS = ("tenantId", "uri", "user", "password", "vectorBackend", "vectorIndex", "vectorNamespace", "vectorTable",
              "vectorHost", "vectorMetric", "vectorDimension", "vectorAccess", "vectorStore", "vectorScope", "writesBlocked",
              "pineconeApiKey", "globalStore", "globalTable", "globalUri", "globalHost", "globalNamespace")


@dataclasses.dataclass(frozen=True)
class Coordinates:
    """What one read of the Secret says."""

    backend: Backend
    metric: str
    dimension: int | None
    read_only: bool
    writes_blocked: bool
    uri: str = ""              # pgvector: logs in as the tenant's role (or a scoped credential's login)
    table: str = ""            # pgvector: "schema.table", the tenant's partition or dedicated table
    namespace: str = ""        # the tenant's namespace ("" for a dedicated index)
    host: str = ""             # Pinecone: the index host
    api_key: str = ""          # Pinecone: only when the class exposes it
    tenant_id: str = ""        # stamped on every vector written: the defense-in-depth filter of scoped queries
    store_name: str = ""       # what spans call the store (the tenant id, or a global index's name)
    scope: str = "tenant"      # what the store is: a tenant's ("tenant") or a class's global index ("global")
    global_store: str = ""     # the class's global index, when the class has one of this shape
    global_table: str = ""     # pgvector: its "schema.table"...
    global_uri: str = ""       # ...and a login to the database that holds it (the tenant's own role)
    global_host: str = ""      # Pinecone: its index host...
    global_namespace: str = ""  # ...and reserved namespace

    @property
    def has_global(self) -> bool:
        return bool(self.global_table or self.global_host)

    def global_view(self) -> Coordinates:
        """The class's global index, as a read-only store of its own (the tenant can search it, never change it)."""
        if not self.has_global:
            raise ConfigurationError("the Secret names no global index (the StoreClass has no spec.globalStore "
                                     "index of this tenant's dimension and metric)")
        return dataclasses.replace(self, read_only=True, writes_blocked=False, uri=self.global_uri,
                                   table=self.global_table, namespace=self.global_namespace,
                                   host=self.global_host or self.host, tenant_id="", store_name=self.global_store,
                                   scope="global")

    @classmethod
    def from_secret(cls, data: Mapping[str, str]) -> Coordinates:
        data = {key: value.strip() for key, value in data.items()}
        try:
            backend = Backend(data.get(BACKEND, ""))
        except ValueError:
            raise ConfigurationError(f"{BACKEND} is {data.get(BACKEND)!r}: not a TenantStore Secret this library "
                                     f"knows (pgvector or pinecone)") from None
        needed = ("uri", "vectorTable") if backend is Backend.PGVECTOR else ("vectorHost",)
        missing = [key for key in needed if not data.get(key)]
        if missing:
            raise ConfigurationError(f"the Secret lacks {', '.join(missing)} (a {backend} store needs them)")
        dimension = data.get("vectorDimension", "")
        return cls(backend=backend, metric=data.get("vectorMetric") or "cosine",
                   dimension=int(dimension) if dimension.isdigit() else None,
                   read_only=(data.get(ACCESS) or data.get("access")) == "readOnly",
                   writes_blocked=data.get(WRITES_BLOCKED) == "true",
                   uri=data.get("uri", ""), table=data.get("vectorTable", ""),
                   namespace=data.get("vectorNamespace", ""), host=data.get("vectorHost", ""),
                   api_key=data.get("pineconeApiKey", ""), tenant_id=data.get("tenantId", ""),
                   store_name=data.get("vectorStore") or data.get("tenantId") or data.get("vectorNamespace")
                   or data.get("vectorTable") or data.get("vectorIndex", ""),
                   scope=data.get("vectorScope") or "tenant", global_store=data.get("globalStore", ""),
                   global_table=data.get("globalTable", ""),
                   global_uri=data.get("globalUri", ""), global_host=data.get("globalHost", ""),
                   global_namespace=data.get("globalNamespace", ""))


class SecretReader:
    """The coordinates, re-read from the source once they are older than `refresh_seconds`."""

    def __init__(self, source: SecretSource, refresh_seconds: float = 5.0):
        self.source, self.refresh_seconds = source, refresh_seconds
        self._coordinates = Coordinates.from_secret(source.read())
        self._read_at = time.monotonic()

    @property
    def stale(self) -> bool:
        return time.monotonic() - self._read_at >= self.refresh_seconds

    def current(self) -> Coordinates:
        """The coordinates; reads the source (a blocking file read) when stale."""
        if self.stale:
            self.refresh()
        return self._coordinates

    @property
    def last_read(self) -> Coordinates:
        return self._coordinates

    def refresh(self) -> Coordinates:
        self._coordinates, self._read_at = Coordinates.from_secret(self.source.read()), time.monotonic()
        return self._coordinates


class GlobalReader:
    """A SecretReader's view of the class's global index: the same Secret, re-read the same way."""

    def __init__(self, reader: SecretReader):
        self.reader = reader
        reader.last_read.global_view()  # ConfigurationError now, not at the first search

    @property
    def stale(self) -> bool:
        return self.reader.stale

    def current(self) -> Coordinates:
        return self.reader.current().global_view()

    @property
    def last_read(self) -> Coordinates:
        return self.reader.last_read.global_view()

    def refresh(self) -> Coordinates:
        return self.reader.refresh().global_view()


def source_of(secret: SecretSource | Mapping[str, str] | str | os.PathLike[str]) -> SecretSource:
    """A path is a mounted Secret; a mapping is the Secret's data; anything else must be a SecretSource."""
    if isinstance(secret, (str, os.PathLike)):
        return SecretDirectory(Path(secret))
    if isinstance(secret, Mapping):
        return StaticSecret(dict(secret))
    return secret
