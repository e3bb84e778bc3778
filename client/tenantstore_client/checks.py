"""Checks every backend applies before sending anything, so a request fails the same way on pgvector and Pinecone."""
from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence

from tenantstore_client import scopes
from tenantstore_client.errors import InvalidRequest, ReadOnlyCredential, WritesBlocked
from tenantstore_client.secret import Coordinates
from tenantstore_client.types import Vector

# The library's own metadata field: when a vector was written (seconds since the epoch), which retention reads.
WRITTEN_AT = "written_at"
MAX_ID_LENGTH = 512
MAX_TOP_K = 10_000


def may_write(coordinates: Coordinates) -> None:
    may_change(coordinates)
    if coordinates.writes_blocked:
        raise WritesBlocked("the tenant is over a quota that blocks writes (its Secret says writesBlocked): reads "
                            "and deletes work; writes come back once usage is under the limit or the quota is raised")


def may_change(coordinates: Coordinates) -> None:
    if coordinates.read_only:
        raise ReadOnlyCredential("this credential is readOnly (vectorAccess: readOnly): it may query, fetch and "
                                 "count, not upsert or delete; use a readWrite credential's Secret to change data")


def vectors(records: Iterable[Vector], coordinates: Coordinates) -> list[Vector]:
    checked = list(records)
    seen: set[str] = set()
    for record in checked:
        vector_id(record.id)
        if record.id in seen:
            raise InvalidRequest(f"vector id {record.id!r} appears twice in one upsert")
        seen.add(record.id)
        values(record.values, coordinates, f"vector {record.id!r}")
        metadata(record.metadata, record.id)
    return checked


def vector_id(value: object) -> str:
    if not isinstance(value, str) or not value or len(value) > MAX_ID_LENGTH or not value.isascii():
        raise InvalidRequest(f"a vector id is 1 to {MAX_ID_LENGTH} ASCII characters, got {value!r}")
    return value


def ids(values: Iterable[str]) -> list[str]:
    checked = [vector_id(value) for value in values]
    if not checked:
        raise InvalidRequest("name at least one id")
    return checked


def values(numbers: Sequence[float], coordinates: Coordinates, what: str) -> list[float]:
    if isinstance(numbers, (str, bytes)) or not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                                   for v in numbers):
        raise InvalidRequest(f"{what}: values must be numbers")
    floats = [float(v) for v in numbers]
    if coordinates.dimension is not None and len(floats) != coordinates.dimension:
        raise InvalidRequest(f"{what}: {len(floats)} values, the tenant's vectors have {coordinates.dimension}")
    if not all(math.isfinite(v) for v in floats):
        raise InvalidRequest(f"{what}: values must be finite")
    if not any(floats):
        raise InvalidRequest(f"{what}: a vector needs at least one non-zero value")
    return floats


def metadata(fields: Mapping[str, object], vector: str) -> None:
    if not isinstance(fields, Mapping):
        raise InvalidRequest(f"vector {vector!r}: metadata is a mapping")
    for key, value in fields.items():
        if not isinstance(key, str) or not key or key.startswith("$"):
            raise InvalidRequest(f"vector {vector!r}: metadata field {key!r} (a name, not starting with '$')")
        if key == WRITTEN_AT:
            raise InvalidRequest(f"vector {vector!r}: metadata field {WRITTEN_AT!r} is the library's own "
                                 f"(the time retention counts from)")
        if key in scopes.RESERVED:
            raise InvalidRequest(f"vector {vector!r}: metadata field {key!r} is the library's own (pass scope= "
                                 f"to write in a user's or project's scope)")
        scalar = isinstance(value, (str, int, float, bool))
        strings = isinstance(value, list) and all(isinstance(item, str) for item in value)
        if not (scalar or strings):
            raise InvalidRequest(f"vector {vector!r}: metadata {key!r} must be a string, number, boolean or a "
                                 f"list of strings")


def top_k(value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_TOP_K:
        raise InvalidRequest(f"top_k is an integer from 1 to {MAX_TOP_K}, got {value!r}")
    return value
