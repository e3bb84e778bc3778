"""Kubernetes label selectors (metav1.LabelSelector), parsed and matched the way the API machinery does.

Follows `LabelSelectorAsSelector` and `labels.Requirement.Matches` of k8s.io/apimachinery: every matchLabels
entry and every matchExpressions requirement must hold (AND); an empty selector matches everything;
In/NotIn need at least one value and Exists/DoesNotExist none; keys are qualified names and values label
values. A selector Kubernetes would reject is rejected here too, never matched loosely.
"""
from __future__ import annotations

import dataclasses
import enum
import re
from collections.abc import Mapping
from typing import Any

_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")


class InvalidSelector(ValueError):
    """A selector the Kubernetes API machinery would refuse to turn into a labels.Selector."""


class Operator(enum.StrEnum):
    IN = "In"
    NOT_IN = "NotIn"
    EXISTS = "Exists"
    DOES_NOT_EXIST = "DoesNotExist"


def check_key(key: str) -> None:
    """A qualified name: [DNS-subdomain prefix "/"] name, as label keys must be."""
    prefix, slash, name = key.rpartition("/")
    if key.count("/") > 1 or (slash and not prefix):
        raise InvalidSelector(f"label key {key!r} must be a name with an optional DNS subdomain prefix and '/'")
    if prefix and (len(prefix) > 253 or not _DNS_SUBDOMAIN.match(prefix)):
        raise InvalidSelector(f"label key {key!r}: the prefix must be a DNS subdomain")
    if len(name) > 63 or not _NAME.match(name):
        raise InvalidSelector(f"label key {key!r}: the name must be 1-63 alphanumeric characters, '-', '_' or '.', "
                              f"starting and ending with an alphanumeric character")


def check_value(value: str) -> None:
    if len(value) > 63 or not _LABEL_VALUE.match(value):
        raise InvalidSelector(f"label value {value!r} must be empty or 1-63 alphanumeric characters, '-', '_' or "
                              f"'.', starting and ending with an alphanumeric character")


@dataclasses.dataclass(frozen=True)
class Requirement:
    key: str
    operator: Operator
    values: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        check_key(self.key)
        if self.operator in (Operator.IN, Operator.NOT_IN) and not self.values:
            raise InvalidSelector(f"{self.key}: operator {self.operator.value} needs at least one value")
        if self.operator in (Operator.EXISTS, Operator.DOES_NOT_EXIST) and self.values:
            raise InvalidSelector(f"{self.key}: operator {self.operator.value} takes no values")
        for value in self.values:
            check_value(value)

    def matches(self, labels: Mapping[str, str]) -> bool:
        match self.operator:
            case Operator.IN:
                return self.key in labels and labels[self.key] in self.values
            case Operator.NOT_IN:
                return self.key not in labels or labels[self.key] not in self.values
            case Operator.EXISTS:
                return self.key in labels
            case Operator.DOES_NOT_EXIST:
                return self.key not in labels

    def __str__(self) -> str:
        # kubectl's selector syntax, as labels.Requirement.String writes it.
        values = ",".join(sorted(self.values))
        return {Operator.IN: f"{self.key} in ({values})", Operator.NOT_IN: f"{self.key} notin ({values})",
                Operator.EXISTS: self.key, Operator.DOES_NOT_EXIST: f"!{self.key}"}[self.operator]


@dataclasses.dataclass(frozen=True)
class LabelSelector:
    """matchLabels and matchExpressions; all of them must hold. Empty: matches every set of labels."""

    match_labels: tuple[tuple[str, str], ...] = ()
    match_expressions: tuple[Requirement, ...] = ()

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any] | None) -> LabelSelector:
        raw = raw or {}
        match_labels = raw.get("matchLabels") or {}
        if not isinstance(match_labels, Mapping):
            raise InvalidSelector("matchLabels must be a map of label keys to values")
        for key, value in match_labels.items():
            check_key(str(key))
            check_value(str(value))
        expressions = []
        for entry in raw.get("matchExpressions") or ():
            try:
                operator = Operator(entry.get("operator"))
            except ValueError:
                raise InvalidSelector(f"{entry.get('operator')!r} is not a valid label selector operator "
                                      f"(In, NotIn, Exists, DoesNotExist)") from None
            expressions.append(Requirement(str(entry.get("key", "")), operator,
                                           frozenset(str(value) for value in entry.get("values") or ())))
        return cls(match_labels=tuple(sorted((str(k), str(v)) for k, v in match_labels.items())),
                   match_expressions=tuple(expressions))

    def matches(self, labels: Mapping[str, str]) -> bool:
        return all(labels.get(key) == value for key, value in self.match_labels) \
            and all(requirement.matches(labels) for requirement in self.match_expressions)

    def __str__(self) -> str:
        parts = [f"{key}={value}" for key, value in self.match_labels] + [str(r) for r in self.match_expressions]
        return ",".join(parts) if parts else "(everything)"
