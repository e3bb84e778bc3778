"""The operator's settings: one object, built by `tenantstore run` from its options.

The CLI makes it before the handlers are imported (Kopf takes timer intervals when a handler is
registered) and the startup hook hands it to every handler through Kopf's memo.
"""
from __future__ import annotations

import argparse
import dataclasses


@dataclasses.dataclass(frozen=True)
class Settings:
    usage_interval: float = 60.0  # seconds between usage measurements of a StoreClass's tenants
    verify_interval: float = 60.0  # seconds between verification passes over a StoreClass's tenants
    storeclass_check_interval: float = 60.0  # seconds between checks of a StoreClass's prerequisites
    migration_batch: int = 500  # vectors per batch when a tier change moves them
    # Reconciles and teardowns that talk to the backends at once. Kopf starts a worker per TenantStore, so a
    # thousand created at once would otherwise all wait on the small Postgres pool and time out (bench/README.md).
    # (Kopf's own settings.queueing.worker_limit cannot do this: below the number of objects it deadlocks the
    # initial indexing on restart.)
    max_concurrent_reconciles: int = 32
    export_dir: str = "/var/lib/tenantstore/exports"  # the export volume (destinations.VolumeDirectory)
    pg_bin_dir: str = ""  # pg_dump and psql; empty: PATH
    retention_interval: float = 300.0  # seconds between passes deleting vectors past their retention
    probe_interval: float = 30.0  # seconds between search-latency probe passes (a StoreClass with spec.slo)
    cost_interval: float = 900.0  # seconds between updates of a tenant's cost (a StoreClass with spec.pricing)

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Settings:
        defaults = cls()
        return cls(usage_interval=args.usage_interval or defaults.usage_interval,
                   verify_interval=args.verify_interval or defaults.verify_interval,
                   migration_batch=args.migration_batch or defaults.migration_batch,
                   max_concurrent_reconciles=args.max_concurrent_reconciles or defaults.max_concurrent_reconciles,
                   export_dir=args.export_dir or defaults.export_dir,
                   pg_bin_dir=args.pg_bin_dir or defaults.pg_bin_dir,
                   retention_interval=args.retention_interval or defaults.retention_interval,
                   cost_interval=args.cost_interval or defaults.cost_interval,
                   probe_interval=args.probe_interval or defaults.probe_interval)


_current = Settings()


def configure(settings: Settings) -> None:
    """Before the handlers are imported: they read their timer intervals from here."""
    global _current  # noqa: PLW0603 (set once, by the CLI, before anything reads it)
    _current = settings


def current() -> Settings:
    return _current
