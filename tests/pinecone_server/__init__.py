"""A local stand-in for Pinecone's REST API (version 2026-07) that tests drive through the real SDK."""
from .server import API_VERSION, PineconeTestServer, RequestRecord, running

__all__ = ["API_VERSION", "PineconeTestServer", "RequestRecord", "running"]
