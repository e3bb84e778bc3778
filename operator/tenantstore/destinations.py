"""Where exports are written and restores read from: a directory on the operator's export volume, or a
prefix in an S3-compatible bucket.

The volume (a PVC the chart mounts, `--export-dir`) belongs to the operator alone: its directories are
0700 and its files 0600. A resource's destination is a path inside the part of the volume named after the
resource's namespace, so an export or a restore in one namespace never reaches another's. A file is
written under a temporary name and renamed when complete: a crash never leaves a half file that looks whole.
File I/O runs in a thread, off the event loop.

S3 is spoken directly (Signature Version 4 over aiohttp, path-style URLs): PUT for small files, a multipart
upload of 8 MiB parts for big ones, so a dump streams to the bucket without a spool file. An object appears
only when its upload completes: a crash never leaves a half file either.
"""
from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime
import hashlib
import hmac
import json
import os
import re
import urllib.parse
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

import aiohttp

from tenantstore.errors import BackendUnavailable, DestinationRefused
from tenantstore.models import ExportDestination, S3Location

CHUNK_BYTES = 1 << 20
PART_BYTES = 8 << 20  # S3 multipart parts: at least 5 MiB except the last
S3_TIMEOUT = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=120)


@dataclasses.dataclass(frozen=True)
class FileDigest:
    name: str
    bytes: int
    sha256: str

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class Destination:
    """A place for an export's files; what both kinds derive from reading and writing whole files is here."""

    async def prepare(self) -> None:
        raise NotImplementedError

    async def exists(self, name: str) -> bool:
        raise NotImplementedError

    async def write(self, name: str, chunks: AsyncIterable[bytes]) -> FileDigest:
        raise NotImplementedError

    def read(self, name: str) -> AsyncIterator[bytes]:
        raise NotImplementedError

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


class VolumeDirectory(Destination):
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


class S3Prefix(Destination):
    """The same operations on objects <prefix>/<name> of a bucket."""

    def __init__(self, location: S3Location, access_key: str, secret_key: str, session: aiohttp.ClientSession):
        self.location = location
        self.access_key, self.secret_key = access_key, secret_key
        self.session = session
        self.label = location.describe()

    def __str__(self) -> str:
        return self.label

    def _url(self, name: str = "", query: Mapping[str, str] | None = None) -> str:
        key = f"{self.location.prefix}/{name}" if name else ""
        path = "/" + urllib.parse.quote(f"{self.location.bucket}/{key}".rstrip("/"), safe="/-_.~")
        encoded = "&".join(f"{urllib.parse.quote(k, safe='-_.~')}={urllib.parse.quote(v, safe='-_.~')}"
                           for k, v in sorted((query or {}).items()))
        return f"{self.location.endpoint}{path}" + (f"?{encoded}" if encoded else "")

    async def _request(self, method: str, url: str, body: bytes = b"", allow: tuple[int, ...] = (200,)
                       ) -> aiohttp.ClientResponse:
        headers = sign_v4(method, url, body, self.access_key, self.secret_key, self.location.region)
        try:
            response = await self.session.request(method, url, data=body or None, headers=headers)
        except (aiohttp.ClientError, asyncio.TimeoutError) as error:
            raise BackendUnavailable(f"{self}: {self.location.endpoint} does not answer ({type(error).__name__})") \
                from None
        if response.status not in allow:
            text = (await response.text())[:2000]
            response.release()
            code = (re.search(r"<Code>([^<]+)</Code>", text) or [None, f"HTTP {response.status}"])[1]
            error_type = BackendUnavailable if response.status >= 500 or response.status == 429 else DestinationRefused
            raise error_type(f"{self}: {method} refused: {code}")
        return response

    async def prepare(self) -> None:
        (await self._request("HEAD", self._url())).release()  # the bucket exists and the key may see it

    async def exists(self, name: str) -> bool:
        response = await self._request("HEAD", self._url(name), allow=(200, 404))
        response.release()
        return response.status == 200

    async def write(self, name: str, chunks: AsyncIterable[bytes]) -> FileDigest:
        digest, size, buffer = hashlib.sha256(), 0, bytearray()
        upload_id: str | None = None
        parts: list[str] = []
        try:
            async for chunk in chunks:
                digest.update(chunk)
                size += len(chunk)
                buffer += chunk
                while len(buffer) >= PART_BYTES:
                    upload_id = upload_id or await self._start_upload(name)
                    parts.append(await self._upload_part(name, upload_id, len(parts) + 1, bytes(buffer[:PART_BYTES])))
                    del buffer[:PART_BYTES]
            if upload_id is None:
                (await self._request("PUT", self._url(name), bytes(buffer))).release()
            else:
                if buffer:
                    parts.append(await self._upload_part(name, upload_id, len(parts) + 1, bytes(buffer)))
                await self._complete(name, upload_id, parts)
        except BaseException:
            if upload_id is not None:  # best effort: an abandoned upload holds storage until aborted
                with contextlib.suppress(Exception):
                    (await self._request("DELETE", self._url(name, {"uploadId": upload_id}),
                                         allow=(200, 204, 404))).release()
            raise
        return FileDigest(name, size, digest.hexdigest())

    async def _start_upload(self, name: str) -> str:
        response = await self._request("POST", self._url(name, {"uploads": ""}))
        found = re.search(r"<UploadId>([^<]+)</UploadId>", await response.text())
        if not found:
            raise BackendUnavailable(f"{self}: no UploadId in the answer to a multipart upload")
        return found[1]

    async def _upload_part(self, name: str, upload_id: str, number: int, data: bytes) -> str:
        response = await self._request("PUT", self._url(name, {"partNumber": str(number), "uploadId": upload_id}),
                                       data)
        response.release()
        return response.headers.get("ETag", "")

    async def _complete(self, name: str, upload_id: str, etags: list[str]) -> None:
        body = "<CompleteMultipartUpload>" + "".join(
            f"<Part><PartNumber>{number}</PartNumber><ETag>{etag}</ETag></Part>"
            for number, etag in enumerate(etags, 1)) + "</CompleteMultipartUpload>"
        response = await self._request("POST", self._url(name, {"uploadId": upload_id}), body.encode())
        text = await response.text()
        if "<Error>" in text:  # S3 may answer 200 and still fail the completion
            raise BackendUnavailable(f"{self}: completing the upload of {name} failed")

    async def read(self, name: str) -> AsyncIterator[bytes]:
        response = await self._request("GET", self._url(name))
        try:
            async for chunk in response.content.iter_chunked(CHUNK_BYTES):
                yield chunk
        finally:
            response.release()


def sign_v4(method: str, url: str, body: bytes, access_key: str, secret_key: str, region: str,
            now: datetime.datetime | None = None) -> dict[str, str]:
    """The headers of an AWS Signature Version 4 request to S3 (the body's sha256 is signed too)."""
    now = now or datetime.datetime.now(datetime.UTC)
    amz_date, day = now.strftime("%Y%m%dT%H%M%SZ"), now.strftime("%Y%m%d")
    parts = urllib.parse.urlsplit(url)
    payload = hashlib.sha256(body).hexdigest()
    headers = {"host": parts.netloc, "x-amz-content-sha256": payload, "x-amz-date": amz_date}
    query = "&".join(sorted(f"{key}={value}" for key, value in (
        pair.split("=", 1) if "=" in pair else (pair, "") for pair in parts.query.split("&") if pair)))
    signed = ";".join(sorted(headers))
    canonical = "\n".join([method, parts.path or "/", query,
                           "".join(f"{key}:{headers[key]}\n" for key in sorted(headers)), signed, payload])
    scope = f"{day}/{region}/s3/aws4_request"
    to_sign = "\n".join(["AWS4-HMAC-SHA256", amz_date, scope, hashlib.sha256(canonical.encode()).hexdigest()])
    key = ("AWS4" + secret_key).encode()
    for part in (day, region, "s3", "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    signature = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
    return {**headers, "authorization": f"AWS4-HMAC-SHA256 Credential={access_key}/{scope}, "
                                        f"SignedHeaders={signed}, Signature={signature}"}


SecretReader = Callable[[str, str], Awaitable[Mapping[str, str] | None]]


@contextlib.asynccontextmanager
async def opened(destination: ExportDestination, namespace: str, export_dir: str,
                 read_secret: SecretReader) -> AsyncIterator[Destination]:
    """The destination a resource of `namespace` names, ready to use (S3 credentials read from its Secret)."""
    if destination.s3 is None:
        yield VolumeDirectory(export_dir, namespace, destination)
        return
    data = await read_secret(namespace, destination.s3.credentials_secret) or {}
    if not data.get("accessKeyId") or not data.get("secretAccessKey"):
        raise DestinationRefused(f"{destination.s3.describe()}: Secret {namespace}/{destination.s3.credentials_secret} "
                                 f"needs the keys accessKeyId and secretAccessKey")
    async with aiohttp.ClientSession(timeout=S3_TIMEOUT) as session:
        yield S3Prefix(destination.s3, data["accessKeyId"], data["secretAccessKey"], session)


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
