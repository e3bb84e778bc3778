"""Fixtures for the backend tests: the class's Postgres, and a local Pinecone (API 2026-07) the SDK talks to."""
from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest
from pinecone_server import PineconeTestServer
from vector_kit import FAST_RETRIES, SETTINGS

from tenantstore.backends.pinecone import PineconeClient, PineconeStore
from tenantstore.backends.postgres import PostgresServer


@pytest.fixture
async def pg(admin_uri: str) -> AsyncIterator[PostgresServer]:
    server = PostgresServer(admin_uri, "tenants")
    yield server
    await server.close()


@pytest.fixture
def server(pg: PostgresServer) -> PostgresServer:
    """The same server, under the name the Postgres backend tests use."""
    return pg


@pytest.fixture
def pinecone_server() -> Iterator[PineconeTestServer]:
    """A fresh server per test; the test fails if it sent anything outside the spec subset."""
    server = PineconeTestServer().start()
    yield server
    server.stop()
    server.check()


@pytest.fixture
async def pinecone_client(pinecone_server: PineconeTestServer) -> AsyncIterator[PineconeClient]:
    client = PineconeClient(pinecone_server.api_key, pinecone_server.host, FAST_RETRIES)
    yield client
    await client.close()


@pytest.fixture
def pinecone_store(pinecone_client: PineconeClient, pg: PostgresServer) -> PineconeStore:
    return PineconeStore(pinecone_client, pg, SETTINGS)
