"""`python -m tenantstore_dev demo [--once]`: the whole system on this machine (what `make demo` runs)."""
from __future__ import annotations

import argparse
import sys

from tenantstore_dev.demo import run_demo


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tenantstore_dev", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser("demo", help="start a local control plane, Postgres and the operator, apply "
                                            "the examples and prove each tenant's store works")
    demo.add_argument("--once", action="store_true", help="stop everything after the report")
    args = parser.parse_args(argv)
    return run_demo(keep_running=not args.once)


if __name__ == "__main__":
    sys.exit(main())
