"""Postgres's own client tools (pg_dump, psql), run as subprocesses without blocking the event loop.

They are found in `--pg-bin-dir`, else on PATH. The client must be at least as new as the server (pg_dump
refuses an older one): the image ships PostgreSQL 18's client tools.
"""
from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import AsyncIterable, AsyncIterator, Mapping, Sequence
from pathlib import Path

from tenantstore import settings
from tenantstore.errors import ReconcileError
from tenantstore.redaction import redact

READ_BYTES = 1 << 20


class ClientToolFailed(ReconcileError):
    reason = "ClientToolFailed"
    retry_after = 30.0


def tool(name: str) -> str:
    configured = settings.current().pg_bin_dir
    found = str(Path(configured) / name) if configured else shutil.which(name)
    if not found or not os.access(found, os.X_OK):
        raise ClientToolFailed(f"{name} is not installed where the operator looks for it "
                               f"({'--pg-bin-dir ' + configured if configured else 'PATH'})")
    return found


def environment(extra: Mapping[str, str]) -> dict[str, str]:
    # Only what the tool needs: none of the operator's own environment (tokens, kubeconfig) is passed on.
    keep = {key: value for key, value in os.environ.items() if key in ("PATH", "LANG", "LC_ALL", "TZ", "HOME")}
    return {**keep, "PGSSLMODE": os.environ.get("PGSSLMODE", "prefer"), **extra}


async def stream_output(name: str, args: Sequence[str], env: Mapping[str, str]) -> AsyncIterator[bytes]:
    """The tool's standard output, chunk by chunk; raises ClientToolFailed when it exits non-zero."""
    process = await asyncio.create_subprocess_exec(tool(name), *args, env=environment(env),
                                                   stdin=asyncio.subprocess.DEVNULL,
                                                   stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    assert process.stdout is not None and process.stderr is not None
    errors = asyncio.create_task(process.stderr.read())
    try:
        while chunk := await process.stdout.read(READ_BYTES):
            yield chunk
    finally:
        if process.returncode is None and process.stdout.at_eof() is False:
            process.kill()
        returncode = await process.wait()
        stderr = await errors
    if returncode != 0:
        raise ClientToolFailed(f"{name} failed (exit {returncode}): {summary(stderr, env)}")


async def feed_input(name: str, args: Sequence[str], env: Mapping[str, str], lines: AsyncIterable[bytes]) -> None:
    """Run the tool with `lines` as its standard input; raises ClientToolFailed when it exits non-zero."""
    process = await asyncio.create_subprocess_exec(tool(name), *args, env=environment(env),
                                                   stdin=asyncio.subprocess.PIPE,
                                                   stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
    assert process.stdin is not None and process.stderr is not None
    errors = asyncio.create_task(process.stderr.read())
    try:
        async for line in lines:
            process.stdin.write(line)
            await process.stdin.drain()
        process.stdin.close()
    except (BrokenPipeError, ConnectionResetError):
        pass  # it stopped reading: its exit status and standard error say why
    except BaseException:
        process.kill()
        await process.wait()
        raise
    returncode = await process.wait()
    stderr = await errors
    if returncode != 0:
        raise ClientToolFailed(f"{name} failed (exit {returncode}): {summary(stderr, env)}")


def summary(stderr: bytes, env: Mapping[str, str]) -> str:
    text = stderr.decode(errors="replace").strip().splitlines()
    return redact(" / ".join(text[-3:]) or "no message", [env.get("PGPASSWORD", "")])
