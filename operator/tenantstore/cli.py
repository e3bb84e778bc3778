"""`tenantstore run`: the operator. (The local demo is the dev package's: `python -m tenantstore_dev demo`.)"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Any


def run(args: argparse.Namespace) -> int:
    if args.shards < 0 or (args.leader_elect and args.shards):
        print("--shards must be 0 (no sharding) or more, and --leader-elect and --shards exclude each other: with "
              "--shards every replica is active on its shards", file=sys.stderr)
        return 2

    import kopf  # noqa: PLC0415 (keep `tenantstore --help` light)

    from tenantstore import settings  # noqa: PLC0415

    settings.configure(settings.Settings.from_args(args))  # before the handlers register their timers

    import tenantstore.handlers  # noqa: F401,PLC0415 (registers the handlers)

    from tenantstore import kopf_fixes, metrics, redaction, tracing  # noqa: PLC0415

    kopf_fixes.bound_api_connections(args.namespace)  # before Kopf logs in and makes its session

    kopf.configure(verbose=args.verbose, log_prefix=True)
    logging.getLogger("psycopg.pool").setLevel(logging.WARNING)
    tracing.configure()
    tracing.install_log_filter()
    # No password, URI with a password or API key reaches a log line or a log-derived Event (drivers quote them).
    redaction.install_log_filter()
    # The metrics observers run on every watch event; their success lines would drown the log.
    logging.getLogger("kopf.objects").addFilter(lambda record: "Handler 'observe_" not in record.getMessage())
    if args.metrics_port:
        metrics.serve(args.metrics_port)  # a standby replica serves it too (its tenant series are empty)
    options = dict(clusterwide=not args.namespace, namespaces=args.namespace, standalone=True,
                   liveness_endpoint=args.liveness or None)
    if not args.leader_elect and not args.shards:
        kopf.run(**options)
        return 0

    import asyncio  # noqa: PLC0415

    from tenantstore import leader, sharding, standby  # noqa: PLC0415

    config = leader.ElectionConfig(
        namespace=args.leader_elect_namespace or leader.default_namespace(), name=args.leader_elect_lease,
        lease_duration=args.lease_duration, renew_deadline=args.renew_deadline, retry_period=args.retry_period)

    async def run_operator(stop: asyncio.Event) -> None:
        await kopf.operator(**options, stop_flag=stop)

    if args.shards:
        async def run_shards(view: sharding.ShardView, stop: asyncio.Event) -> None:
            await run_operator(stop)  # the view is the module's for this run; the startup hook reads it

        return asyncio.run(sharding.run_sharded(sharding.ShardingConfig(args.shards, config), run_shards,
                                                args.liveness or None))
    return asyncio.run(standby.run_elected(config, run_operator, args.liveness or None))


def audit(args: argparse.Namespace) -> int:
    """Print a tenant's audit trail, read from the Postgres of every StoreClass (or of --admin-uri)."""
    import asyncio  # noqa: PLC0415
    import json  # noqa: PLC0415

    from tenantstore import audit as trail, kube  # noqa: PLC0415

    async def read() -> list[trail.Entry]:
        if args.admin_uri:
            return await trail.read_trail(args.tenant, [(args.admin_uri, args.database)])
        api = await kube.api_client()
        try:
            return await trail.read_trail(args.tenant, await trail.class_databases(api, args.store_class))
        finally:
            await api.close()

    entries = asyncio.run(read())
    if args.output == "json":
        print(json.dumps([entry.to_json() for entry in entries], indent=2))
    elif entries:
        print(trail.format_table(entries))
    else:
        print(f"no audit entries for tenant {args.tenant}", file=sys.stderr)
    return 0


def queries(args: argparse.Namespace) -> int:
    """Print a tenant's query insights, read from its TenantStore's status (wherever its namespace)."""
    import asyncio  # noqa: PLC0415

    from tenantstore import insights, kube  # noqa: PLC0415

    async def read() -> list[dict[str, Any]]:
        api = await kube.api_client()
        try:
            return await kube.TenantStatuses(api).with_tenant_id(args.tenant)
        finally:
            await api.close()

    found = asyncio.run(read())
    if not found:
        print(f"no TenantStore has tenantId {args.tenant}", file=sys.stderr)
        return 1
    for body in found:
        meta = body["metadata"]
        print(insights.report(f"{meta['namespace']}/{meta['name']}", (body.get("status") or {}).get("queries")))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tenantstore", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    run_parser = commands.add_parser("run", help="run the operator against the current kubeconfig or in-cluster")
    run_parser.add_argument("--namespace", action="append", default=[],
                            help="watch only this namespace (repeatable); default: the whole cluster")
    run_parser.add_argument("--liveness", default="http://0.0.0.0:8080/healthz",
                            help="liveness endpoint URL, empty to disable (default: %(default)s)")
    run_parser.add_argument("--metrics-port", type=int, default=9090,
                            help="port of the Prometheus /metrics endpoint, 0 to disable (default: %(default)s)")
    election = run_parser.add_argument_group(
        "leader election and sharding",
        "active/standby replicas (only the holder of a coordination.k8s.io Lease reconciles), or active replicas "
        "that split the TenantStores into shards, each held through a Lease of its own")
    election.add_argument("--leader-elect", action="store_true", help="stand by until this replica holds the Lease")
    election.add_argument("--shards", type=int, default=0,
                          help="split the TenantStores (by tenantId) into this many shards over every replica "
                               "started with the same value; the Leases are <lease name>-shard-<n> and "
                               "<lease name>-member-<replica> (default 0: no sharding)")
    election.add_argument("--leader-elect-namespace", default="",
                          help="namespace of the Lease (default: $POD_NAMESPACE, the service account's "
                               "namespace, else tenantstore-system)")
    election.add_argument("--leader-elect-lease", default="tenantstore-operator",
                          help="name of the Lease (with --shards: the prefix of the Leases)")
    election.add_argument("--lease-duration", type=float, default=15.0,
                          help="seconds a standby waits after the last renewal before taking over")
    election.add_argument("--renew-deadline", type=float, default=10.0,
                          help="seconds the leader keeps retrying a renewal before it stops leading")
    election.add_argument("--retry-period", type=float, default=2.0, help="seconds between Lease attempts")
    run_parser.add_argument("--verify-interval", type=float, default=None,
                            help="seconds between checks of every provisioned tenant against its backends, per "
                                 "StoreClass (default 60)")
    run_parser.add_argument("--usage-interval", type=float, default=None,
                            help="seconds between usage measurements of each StoreClass's tenants (default 60)")
    run_parser.add_argument("--migration-batch", type=int, default=None,
                            help="vectors copied per batch when a tier change moves them (default 500)")
    run_parser.add_argument("--max-concurrent-reconciles", type=int, default=None,
                            help="reconciles and teardowns talking to the backends at once (default 32)")
    run_parser.add_argument("--export-dir", default=None,
                            help="the export volume: TenantStoreExports and restores use <dir>/<namespace>/<path> "
                                 "(default /var/lib/tenantstore/exports)")
    run_parser.add_argument("--pg-bin-dir", default=os.environ.get("TENANTSTORE_PG_BIN_DIR"),
                            help="where pg_dump and psql (PostgreSQL 18 or newer) are "
                                 "(default: $TENANTSTORE_PG_BIN_DIR, else PATH)")
    run_parser.add_argument("--retention-interval", type=float, default=None,
                            help="seconds between passes that delete vectors past their retention (default 300)")
    run_parser.add_argument("--cost-interval", type=float, default=None,
                            help="seconds between updates of each tenant's cost and budget, for StoreClasses with "
                                 "spec.pricing (default 900; a usage measurement does it once due)")
    run_parser.add_argument("--probe-interval", type=float, default=None,
                            help="seconds between search-latency probe passes, for StoreClasses with spec.slo "
                                 "(default 30; a pass probes at most slo.probesPerSecond tenants per second)")
    run_parser.add_argument("--verbose", action="store_true")
    run_parser.set_defaults(func=run)
    audit_parser = commands.add_parser("audit", help="print a tenant's audit trail (it outlives the tenant)")
    audit_parser.add_argument("--tenant", required=True, help="the tenantId")
    audit_parser.add_argument("--output", "-o", choices=("table", "json"), default="table")
    audit_parser.add_argument("--store-class", default=None,
                              help="read only this StoreClass's trail (default: every StoreClass in the cluster)")
    audit_parser.add_argument("--admin-uri", default=os.environ.get("TENANTSTORE_ADMIN_URI"),
                              help="read this Postgres directly, as the class's admin role, without a cluster "
                                   "(default: $TENANTSTORE_ADMIN_URI)")
    audit_parser.add_argument("--database", default="tenants",
                              help="with --admin-uri: the class's shared database (default: %(default)s)")
    audit_parser.set_defaults(func=audit)
    queries_parser = commands.add_parser("queries", help="print a tenant's query insights (slowest statements)")
    queries_parser.add_argument("--tenant", required=True, help="the tenantId")
    queries_parser.set_defaults(func=queries)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
