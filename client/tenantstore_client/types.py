"""The records an application writes and reads."""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

# A metadata filter in the language Pinecone uses, for both backends: {"field": value} or
# {"field": {"$eq" | "$ne" | "$gt" | "$gte" | "$lt" | "$lte" | "$in" | "$nin" | "$exists": ...}},
# combined with {"$and": [...]} and {"$or": [...]}.
Filter = Mapping[str, Any]
Metadata = Mapping[str, str | int | float | bool | Sequence[str]]


@dataclasses.dataclass(frozen=True)
class Vector:
    id: str
    values: Sequence[float]
    metadata: Metadata = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class Match:
    """One nearest neighbour. `score` as Pinecone reports it: cosine similarity, the dot product, or the squared
    euclidean distance (lower is closer for euclidean, higher for the others)."""

    id: str
    score: float
    values: Sequence[float] | None = None
    metadata: Metadata = dataclasses.field(default_factory=dict)
    scope: str | None = None  # the scope it was written in (None: the tenant's store at large)
