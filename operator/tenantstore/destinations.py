"""Where exports are written and restores read from: a directory on the operator's export volume.

The volume (a PVC the chart mounts, `--export-dir`) belongs to the operator alone: its directories are
0700 and its files 0600. A resource's destination is a path inside the part of the volume named after the
resource's namespace, so an export or a restore in one namespace never reaches another's. A file is
written under a temporary name and renamed when complete: a crash never leaves a half file that looks whole.
File I/O runs in a thread, off the event loop.
"""
from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import os
from collections.abc import AsyncIterable, AsyncIterator
from pathlib import Path
from typing import Any

from tenantstore.models import ExportDestination

CHUNK_BYTES = 1 << 20


@dataclasses.dataclass(frozen=True)
class FileDigest:
    name: str
    bytes: int
    sha256: str

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class VolumeDirectory:
    def __init__(self, root: Path | str, namespace: str, destination: ExportDestination):
        self.root = Path(root)
        self.label = destination.describe(namespace)
        self.path = self.root / namespace / destination.path

    def __str__(self) -> str:
        return self.label

    async def prepare(self) -> None:
        def make() -> None:
            self.root.mkdir(parents=True, exist_ok=True)
            level = self.root
            for part in self.path.relative_to(self.root).parts:  # each level 0700 (parents=True would not)
                level = level / part
                level.mkdir(mode=0o700, exist_ok=True)
            # Every part of the path is a real directory inside the volume, never a link out of it.
            if self.path.resolve() != self.root.resolve() / self.path.relative_to(self.root):
                raise ValueError(f"{self.label} leaves the export volume")
        await asyncio.to_thread(make)

    async def exists(self, name: str) -> bool:
        return await asyncio.to_thread((self.path / name).is_file)

    async def names(self) -> list[str]:
        def list_files() -> list[str]:
            return sorted(entry.name for entry in self.path.iterdir() if entry.is_file()) if self.path.is_dir() else []
        return await asyncio.to_thread(list_files)

    async def write(self, name: str, chunks: AsyncIterable[bytes]) -> FileDigest:
        partial = self.path / f".{name}.partial"
        digest, size = hashlib.sha256(), 0
        handle = await asyncio.to_thread(os.open, partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            async for chunk in chunks:
                digest.update(chunk)
                size += len(chunk)
                await asyncio.to_thread(os.write, handle, chunk)
            await asyncio.to_thread(os.fsync, handle)
        finally:
            await asyncio.to_thread(os.close, handle)
        await asyncio.to_thread(os.replace, partial, self.path / name)
        return FileDigest(name, size, digest.hexdigest())

    async def read(self, name: str) -> AsyncIterator[bytes]:
        handle = await asyncio.to_thread(open, self.path / name, "rb")
        try:
            while chunk := await asyncio.to_thread(handle.read, CHUNK_BYTES):
                yield chunk
        finally:
            await asyncio.to_thread(handle.close)

    async def digest(self, name: str) -> FileDigest:
        digest, size = hashlib.sha256(), 0
        async for chunk in self.read(name):
            digest.update(chunk)
            size += len(chunk)
        return FileDigest(name, size, digest.hexdigest())

    async def write_json(self, name: str, document: Any) -> FileDigest:
        return await self.write(name, one_chunk(json.dumps(document, indent=2, sort_keys=True).encode() + b"\n"))

    async def read_json(self, name: str) -> Any:
        return json.loads(b"".join([chunk async for chunk in self.read(name)]))


async def one_chunk(data: bytes) -> AsyncIterator[bytes]:
    yield data


async def lines_of(chunks: AsyncIterable[bytes]) -> AsyncIterator[bytes]:
    """Whole lines (with their newline) from a stream of chunks."""
    rest = b""
    async for chunk in chunks:
        rest += chunk
        *lines, rest = rest.split(b"\n")
        for line in lines:
            yield line + b"\n"
    if rest:
        yield rest
