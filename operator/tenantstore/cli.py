"""`tenantstore run` (the operator) and `tenantstore demo` (everything, locally, in one command)."""
from __future__ import annotations

import argparse
import logging
import sys


def run(args: argparse.Namespace) -> int:
    import kopf  # noqa: PLC0415 (keep `tenantstore demo` light)

    import tenantstore.handlers  # noqa: F401,PLC0415 (registers the handlers)

    kopf.configure(verbose=args.verbose, log_prefix=True)
    logging.getLogger("psycopg.pool").setLevel(logging.WARNING)
    kopf.run(clusterwide=not args.namespace, namespaces=args.namespace, standalone=True,
             liveness_endpoint=args.liveness or None)
    return 0


def demo(args: argparse.Namespace) -> int:
    from tenantstore.demo import run_demo  # noqa: PLC0415

    return run_demo(keep_running=not args.once)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tenantstore", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    run_parser = commands.add_parser("run", help="run the operator against the current kubeconfig or in-cluster")
    run_parser.add_argument("--namespace", action="append", default=[],
                            help="watch only this namespace (repeatable); default: the whole cluster")
    run_parser.add_argument("--liveness", default="http://0.0.0.0:8080/healthz",
                            help="liveness endpoint URL, empty to disable (default: %(default)s)")
    run_parser.add_argument("--verbose", action="store_true")
    run_parser.set_defaults(func=run)
    demo_parser = commands.add_parser("demo", help="start a local control plane, Postgres and the operator, "
                                                   "provision three example tenants and report")
    demo_parser.add_argument("--once", action="store_true", help="stop everything after the report")
    demo_parser.set_defaults(func=demo)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
