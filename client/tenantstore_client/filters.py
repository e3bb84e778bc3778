"""Metadata filters: checked once for both backends, and translated to SQL over a jsonb column for pgvector.

The language is Pinecone's. A field holding a list of strings matches `$eq`/`$in` when any element does, and
`$ne`/`$nin` when none does; a field that is absent matches `$ne`, `$nin` and `$exists: false` only.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from psycopg import sql
from psycopg.types.json import Jsonb

from tenantstore_client.errors import InvalidRequest
from tenantstore_client.types import Filter

COMPARISONS = {"$gt": ">", "$gte": ">=", "$lt": "<", "$lte": "<="}
OPERATORS = {"$eq", "$ne", "$in", "$nin", "$exists", *COMPARISONS}
SCALARS = (str, int, float, bool)


def check(filter: Filter | None) -> None:
    """InvalidRequest naming the first thing wrong, before anything is sent."""
    if filter is None:
        return
    if not isinstance(filter, Mapping) or not filter:
        raise InvalidRequest("a filter is a non-empty mapping")
    for key, value in filter.items():
        if key in ("$and", "$or"):
            if not isinstance(value, list) or not value:
                raise InvalidRequest(f"{key} takes a non-empty list of filters")
            for part in value:
                check(part)
        elif key.startswith("$"):
            raise InvalidRequest(f"unknown filter operator {key!r} at the top level (use $and or $or)")
        else:
            _check_condition(key, value)


def _check_condition(field: str, condition: Any) -> None:
    if isinstance(condition, SCALARS):
        return
    if not isinstance(condition, Mapping) or not condition:
        raise InvalidRequest(f"filter on {field!r}: a value or a mapping of operators")
    for operator, operand in condition.items():
        if operator not in OPERATORS:
            raise InvalidRequest(f"filter on {field!r}: unknown operator {operator!r} (known: {sorted(OPERATORS)})")
        if operator in ("$in", "$nin"):
            if not isinstance(operand, list) or not operand or not all(isinstance(v, SCALARS) for v in operand):
                raise InvalidRequest(f"filter on {field!r}: {operator} takes a non-empty list of values")
        elif operator in COMPARISONS:
            if isinstance(operand, bool) or not isinstance(operand, (int, float)):
                raise InvalidRequest(f"filter on {field!r}: {operator} compares numbers only")
        elif operator == "$exists":
            if not isinstance(operand, bool):
                raise InvalidRequest(f"filter on {field!r}: $exists takes true or false")
        elif not isinstance(operand, SCALARS):
            raise InvalidRequest(f"filter on {field!r}: {operator} takes a string, number or boolean")


def to_sql(filter: Filter, column: str = "metadata") -> sql.Composable:
    """A boolean SQL expression; every value and field name goes in as a quoted literal (never SQL text)."""
    parts: list[sql.Composable] = []
    for key, value in filter.items():
        if key == "$and":
            parts.append(_joined([to_sql(part, column) for part in value], "AND"))
        elif key == "$or":
            parts.append(_joined([to_sql(part, column) for part in value], "OR"))
        else:
            conditions = value if isinstance(value, Mapping) else {"$eq": value}
            parts += [_condition(sql.Identifier(column), key, op, operand) for op, operand in conditions.items()]
    return _joined(parts, "AND")


def _joined(parts: list[sql.Composable], how: str) -> sql.Composable:
    return sql.SQL("({})").format(sql.SQL(f" {how} ").join(parts))


def _condition(column: sql.Identifier, field: str, operator: str, operand: Any) -> sql.Composable:
    if operator == "$eq":
        return _equals(column, field, operand)
    if operator == "$ne":
        return sql.SQL("NOT {}").format(_equals(column, field, operand))
    if operator == "$in":
        return _joined([_equals(column, field, value) for value in operand], "OR")
    if operator == "$nin":
        return sql.SQL("NOT {}").format(_joined([_equals(column, field, value) for value in operand], "OR"))
    if operator == "$exists":
        exists = sql.SQL("jsonb_exists({}, {})").format(column, sql.Literal(field))
        return exists if operand else sql.SQL("NOT {}").format(exists)
    # A number compared only with numbers: a string or an absent field is no match (NULL).
    return sql.SQL("(CASE WHEN jsonb_typeof({} -> {}) = 'number' THEN ({} ->> {})::float8 END) {} {}").format(
        column, sql.Literal(field), column, sql.Literal(field), sql.SQL(COMPARISONS[operator]),
        sql.Literal(float(operand)))


def _equals(column: sql.Identifier, field: str, value: Any) -> sql.Composable:
    # Containment (which a GIN index can serve): the field equals the value, or is a list holding it.
    return sql.SQL("({} @> {} OR {} @> {})").format(column, Jsonb({field: value}), column, Jsonb({field: [value]}))
