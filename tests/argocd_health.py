"""Runs the Argo CD health scripts in manifests/argocd the way Argo CD does: Lua 5.1 (Argo CD embeds
gopher-lua, a Lua 5.1), the resource as the global `obj`, the returned table's status and message."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from lupa import lua51

REPO_ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = {"TenantStore": REPO_ROOT / "manifests" / "argocd" / "health-tenantstore.lua",
           "StoreClass": REPO_ROOT / "manifests" / "argocd" / "health-storeclass.lua"}
ARGOCD_STATUSES = {"Healthy", "Progressing", "Degraded", "Suspended", "Missing", "Unknown"}


def health(obj: dict[str, Any]) -> dict[str, str]:
    lua = lua51.LuaRuntime()
    # Argo CD hands scripts no os/io: make sure ours do not rely on them.
    for unsafe in ("os", "io", "require", "dofile", "loadfile"):
        lua.globals()[unsafe] = None
    lua.globals().obj = lua.table_from(obj, recursive=True)
    result = lua.execute(SCRIPTS[obj["kind"]].read_text())
    answer = {"status": result["status"], "message": result["message"]}
    assert answer["status"] in ARGOCD_STATUSES, answer
    return answer
