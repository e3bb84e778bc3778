"""What the library raises: one base class, and a subclass per thing an application handles differently."""
from __future__ import annotations


class TenantStoreError(Exception):
    """Anything this library refuses or cannot do."""


class ConfigurationError(TenantStoreError):
    """The Secret (files, environment or mapping) does not describe a store this library can use."""


class InvalidRequest(TenantStoreError, ValueError):
    """A vector, id or filter the store would not take (wrong dimension, a reserved metadata key, ...)."""


class ReadOnlyCredential(TenantStoreError, PermissionError):
    """The credential is a readOnly one (`vectorAccess: readOnly`): it may query, fetch and count, never change."""


class WritesBlocked(TenantStoreError, PermissionError):
    """The tenant is over a quota whose action is Block: reads and deletes work, writes do not until it is under."""
