"""A local S3-compatible server for the export tests: SeaweedFS (`weed server -s3`) on loopback ports.

The binary is built from its Go module once (tenantstore_dev.controlplane.ensure_seaweedfs); each server
has its own data directory, ports and a random access key that may use one bucket.
"""
from __future__ import annotations

import asyncio
import json
import secrets
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import aiohttp

from tenantstore.destinations import sign_v4
from tenantstore_dev.controlplane import ensure_seaweedfs, free_ports
from tenantstore_dev.environment import terminate, wait_for

PORT_OPTIONS = ("master.port", "master.port.grpc", "volume.port", "volume.port.grpc", "filer.port",
                "filer.port.grpc", "s3.port", "s3.port.grpc", "s3.port.iceberg", "s3.port.lance")


class SeaweedS3:
    def __init__(self, workdir: Path, bucket: str = "tenant-exports"):
        self.workdir = Path(workdir)
        self.bucket = bucket
        self.access_key = "AK" + secrets.token_hex(8).upper()
        self.secret_key = secrets.token_urlsafe(24)
        self.ports = dict(zip(PORT_OPTIONS, free_ports(len(PORT_OPTIONS))))
        self.endpoint = f"http://127.0.0.1:{self.ports['s3.port']}"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60) -> SeaweedS3:
        data = self.workdir / "data"
        data.mkdir(parents=True, exist_ok=True)
        config = self.workdir / "s3.json"
        config.write_text(json.dumps({"identities": [{
            "name": "exporter", "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}))
        config.chmod(0o600)
        log = (self.workdir / "weed.log").open("ab")
        self.process = subprocess.Popen(
            [str(ensure_seaweedfs()), "server", f"-dir={data}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", "-s3",
             f"-s3.config={config}", "-volume.max=8", "-master.volumeSizeLimitMB=64",
             *(f"-{option}={port}" for option, port in self.ports.items())],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        log.close()
        wait_for("SeaweedFS's S3 API", self._answers, timeout)
        wait_for(f"bucket {self.bucket}", lambda: asyncio.run(self._make_bucket()), timeout)
        return self

    def _answers(self) -> bool:
        if self.process is None or self.process.poll() is not None:
            raise RuntimeError(f"weed exited; see {self.workdir / 'weed.log'}")
        try:
            urllib.request.urlopen(self.endpoint, timeout=2)  # noqa: S310 (loopback)
        except urllib.error.HTTPError:
            return True  # it answers (403 without credentials)
        except OSError:
            return False
        return True

    async def _make_bucket(self) -> bool:
        url = f"{self.endpoint}/{self.bucket}"
        async with aiohttp.ClientSession() as session:
            async with session.put(url, headers=sign_v4("PUT", url, b"", self.access_key, self.secret_key,
                                                         "us-east-1")) as response:
                return response.status in (200, 409)

    def stop(self, grace: float = 10) -> None:
        terminate(self.process, grace)
