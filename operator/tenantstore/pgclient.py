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
from tenantstore.errors import ClientToolFailed
from tenantstore.redaction import redact

READ_BYTES = 1 << 20


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


class Run:
    """One run of a client tool: started with its standard error collected, finished by `check`."""

    def __init__(self, name: str, env: Mapping[str, str]):
        self.name, self.env = name, env

    async def start(self, args: Sequence[str], stdin: int, stdout: int) -> asyncio.subprocess.Process:
        self.process = await asyncio.create_subprocess_exec(tool(self.name), *args, env=environment(self.env),
                                                            stdin=stdin, stdout=stdout,
                                                            stderr=asyncio.subprocess.PIPE)
        assert self.process.stderr is not None
        self.errors = asyncio.create_task(self.process.stderr.read())
        return self.process

    async def check(self, kill: bool = False) -> None:
        """Wait for the exit (killing the tool first when asked); ClientToolFailed unless it exited 0."""
        if kill and self.process.returncode is None:
            self.process.kill()
        returncode = await self.process.wait()
        stderr = await self.errors
        if returncode != 0 and not kill:
            raise ClientToolFailed(f"{self.name} failed (exit {returncode}): {summary(stderr, self.env)}")


async def stream_output(name: str, args: Sequence[str], env: Mapping[str, str]) -> AsyncIterator[bytes]:
    """The tool's standard output, chunk by chunk; raises ClientToolFailed when it exits non-zero."""
    run = Run(name, env)
    process = await run.start(args, asyncio.subprocess.DEVNULL, asyncio.subprocess.PIPE)
    assert process.stdout is not None
    try:
        while chunk := await process.stdout.read(READ_BYTES):
            yield chunk
    except BaseException:
        await run.check(kill=True)  # the reader gave up: the tool goes too
        raise
    await run.check()


async def feed_input(name: str, args: Sequence[str], env: Mapping[str, str], lines: AsyncIterable[bytes]) -> None:
    """Run the tool with `lines` as its standard input; raises ClientToolFailed when it exits non-zero."""
    run = Run(name, env)
    process = await run.start(args, asyncio.subprocess.PIPE, asyncio.subprocess.DEVNULL)
    assert process.stdin is not None
    try:
        async for line in lines:
            process.stdin.write(line)
            await process.stdin.drain()
        process.stdin.close()
    except (BrokenPipeError, ConnectionResetError):
        pass  # it stopped reading: its exit status and standard error say why
    except BaseException:
        await run.check(kill=True)
        raise
    await run.check()


def summary(stderr: bytes, env: Mapping[str, str]) -> str:
    text = stderr.decode(errors="replace").strip().splitlines()
    return redact(" / ".join(text[-3:]) or "no message", [env.get("PGPASSWORD", "")])
