"""Fixtures shared by every test folder: a real embedded Postgres (PostgreSQL 18 + pgvector)."""
from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest

from tenantstore_dev.postgres import EmbeddedPostgres
from tenantstore_dev.s3 import SeaweedS3


@pytest.fixture(scope="session")
def postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedPostgres]:
    server = EmbeddedPostgres(Path(tmp_path_factory.mktemp("postgres")))
    server.start()
    yield server
    server.stop("immediate")


@pytest.fixture(scope="session")
def admin_uri(postgres: EmbeddedPostgres) -> str:
    return postgres.prepare_for_tenantstore(admin_password=secrets.token_urlsafe(16))


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedS3]:
    """A real S3-compatible server (SeaweedFS, built from its Go module) with one bucket, for exports."""
    server = SeaweedS3(Path(tmp_path_factory.mktemp("seaweedfs"))).start()
    yield server
    server.stop()
