"""Kubernetes label and field selectors: parsing and matching.

Follows ``k8s.io/apimachinery/pkg/labels`` (equality ``=``, ``==``, ``!=``; set-based ``in``, ``notin``,
``key``, ``!key``; plus ``>``/``<`` on integers) and ``k8s.io/apimachinery/pkg/fields`` (``=``, ``==``,
``!=`` on ``metadata.name`` and ``metadata.namespace``, with ``\\`` escapes). A parse error raises
:class:`SelectorError`; the server answers it with a 400 ``BadRequest`` Status.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

__all__ = [
    "FieldSelector",
    "LabelSelector",
    "Requirement",
    "SelectorError",
    "parse_field_selector",
    "parse_label_selector",
]

_NAME_RE = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
_DNS_SUBDOMAIN_RE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_SPECIAL = frozenset("!=,()<> \t\n\r")
SUPPORTED_FIELDS = ("metadata.name", "metadata.namespace")

Op = Literal["=", "!=", "in", "notin", "exists", "!", "gt", "lt"]


class SelectorError(ValueError):
    """A label or field selector that Kubernetes would reject (HTTP 400)."""


def _validate_key(key: str) -> None:
    prefix, slash, name = key.rpartition("/")
    if slash and (not prefix or len(prefix) > 253 or not _DNS_SUBDOMAIN_RE.match(prefix)):
        raise SelectorError(
            f'unable to parse requirement: invalid label key "{key}": '
            "prefix part must be a DNS-1123 subdomain"
        )
    if not name or len(name) > 63 or not _NAME_RE.match(name):
        raise SelectorError(
            f'unable to parse requirement: invalid label key "{key}": name part must consist of alphanumeric '
            "characters, '-', '_' or '.', must start and end with an alphanumeric character, and be at most "
            "63 characters"
        )


def _validate_value(value: str) -> None:
    if value and (len(value) > 63 or not _NAME_RE.match(value)):
        raise SelectorError(
            f'unable to parse requirement: invalid label value: "{value}": a valid label must be an empty '
            "string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an "
            "alphanumeric character, and be at most 63 characters"
        )


@dataclass(frozen=True, slots=True)
class Requirement:
    key: str
    op: Op
    values: tuple[str, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        op = self.op
        if op == "=":
            return labels.get(self.key) == self.values[0]
        if op == "!=":
            return labels.get(self.key) != self.values[0]
        if op == "in":
            return self.key in labels and labels[self.key] in self.values
        if op == "notin":
            return self.key not in labels or labels[self.key] not in self.values
        if op == "exists":
            return self.key in labels
        if op == "!":
            return self.key not in labels
        value = labels.get(self.key)
        if value is None:
            return False
        try:
            have = int(value)
        except ValueError:
            return False
        want = int(self.values[0])
        return have > want if op == "gt" else have < want


@dataclass(frozen=True, slots=True)
class LabelSelector:
    requirements: tuple[Requirement, ...]

    @property
    def empty(self) -> bool:
        return not self.requirements

    def matches(self, labels: Mapping[str, str] | None) -> bool:
        labels = labels or {}
        return all(r.matches(labels) for r in self.requirements)


def _tokenize(text: str) -> list[str]:
    tokens: list[str] = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c in " \t\n\r":
            i += 1
        elif c in "!=<>":
            if text.startswith("!=", i) or text.startswith("==", i):
                tokens.append(text[i : i + 2])
                i += 2
            else:
                tokens.append(c)
                i += 1
        elif c in ",()":
            tokens.append(c)
            i += 1
        else:
            j = i
            while j < n and text[j] not in _SPECIAL:
                j += 1
            tokens.append(text[i:j])
            i = j
    return tokens


def _is_ident(tok: str | None) -> bool:
    return tok is not None and tok[0] not in _SPECIAL


def parse_label_selector(text: str) -> LabelSelector:
    """Parse a label selector string; ``""`` selects everything."""
    tokens = _tokenize(text)
    pos = 0

    def peek() -> str | None:
        return tokens[pos] if pos < len(tokens) else None

    def take() -> str | None:
        nonlocal pos
        tok = peek()
        pos += 1
        return tok

    reqs: list[Requirement] = []
    if not tokens:
        return LabelSelector(())
    while True:
        tok = take()
        if tok == "!":
            key = take()
            if not _is_ident(key):
                raise SelectorError(f"unable to parse requirement: expected a key after '!' in {text!r}")
            assert key is not None
            _validate_key(key)
            reqs.append(Requirement(key, "!"))
        elif _is_ident(tok):
            assert tok is not None
            key = tok
            _validate_key(key)
            op = peek()
            if op is None or op == ",":
                reqs.append(Requirement(key, "exists"))
            elif op in ("=", "==", "!=", ">", "<"):
                take()
                value = peek()
                if _is_ident(value):
                    take()
                    assert value is not None
                elif op in (">", "<"):
                    raise SelectorError(
                        f"unable to parse requirement: expected an integer after {op!r} in {text!r}"
                    )
                else:
                    value = ""
                _validate_value(value)
                if op in (">", "<"):
                    try:
                        int(value)
                    except ValueError:
                        raise SelectorError(
                            f"unable to parse requirement: for 'gt', 'lt' operators, the value must be an "
                            f"integer: {value!r}"
                        ) from None
                    reqs.append(Requirement(key, "gt" if op == ">" else "lt", (value,)))
                else:
                    reqs.append(Requirement(key, "!=" if op == "!=" else "=", (value,)))
            elif op in ("in", "notin"):
                take()
                if take() != "(":
                    raise SelectorError(f"unable to parse requirement: expected '(' after {op!r} in {text!r}")
                values: list[str] = []
                expect_value = True
                while True:
                    t = take()
                    if t is None:
                        raise SelectorError(f"unable to parse requirement: missing ')' in {text!r}")
                    if t == ")":
                        if expect_value and values:
                            values.append("")
                        break
                    if t == ",":
                        if expect_value:
                            values.append("")
                        expect_value = True
                        continue
                    if not _is_ident(t) or not expect_value:
                        raise SelectorError(f"unable to parse requirement: unexpected {t!r} in {text!r}")
                    _validate_value(t)
                    values.append(t)
                    expect_value = False
                if not values:
                    raise SelectorError(
                        "unable to parse requirement: for 'in', 'notin' operators, values set can't be empty"
                    )
                reqs.append(Requirement(key, "in" if op == "in" else "notin", tuple(values)))
            else:
                raise SelectorError(
                    f"unable to parse requirement: unexpected {op!r} after key {key!r} in {text!r}"
                )
        else:
            raise SelectorError(f"unable to parse requirement: unexpected {tok!r} in {text!r}")
        nxt = take()
        if nxt is None:
            break
        if nxt != ",":
            raise SelectorError(f"unable to parse requirement: expected ',' but found {nxt!r} in {text!r}")
        if peek() is None:
            raise SelectorError(f"unable to parse requirement: trailing ',' in {text!r}")
    return LabelSelector(tuple(reqs))


@dataclass(frozen=True, slots=True)
class FieldRequirement:
    field: str
    equal: bool
    value: str


@dataclass(frozen=True, slots=True)
class FieldSelector:
    requirements: tuple[FieldRequirement, ...]

    @property
    def empty(self) -> bool:
        return not self.requirements

    def matches(self, name: str, namespace: str) -> bool:
        for r in self.requirements:
            have = name if r.field == "metadata.name" else namespace
            if (have == r.value) != r.equal:
                return False
        return True


def _split_unescaped(text: str, sep: str) -> list[str]:
    parts: list[str] = []
    cur: list[str] = []
    escaped = False
    for c in text:
        if escaped:
            cur.append(c)
            escaped = False
        elif c == "\\":
            cur.append(c)
            escaped = True
        elif c == sep:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(c)
    parts.append("".join(cur))
    return parts


def _unescape(value: str) -> str:
    out: list[str] = []
    it = iter(value)
    for c in it:
        if c == "\\":
            nxt = next(it, None)
            if nxt not in ("\\", ",", "="):
                raise SelectorError(f"invalid field selector: invalid escape sequence in {value!r}")
            out.append(nxt)
        elif c in ",=":
            raise SelectorError(f"invalid field selector: unescaped {c!r} in {value!r}")
        else:
            out.append(c)
    return "".join(out)


def parse_field_selector(text: str) -> FieldSelector:
    """Parse a field selector; only ``metadata.name`` and ``metadata.namespace`` are supported."""
    reqs: list[FieldRequirement] = []
    for term in _split_unescaped(text, ","):
        if not term:
            continue
        # Find the first unescaped operator, preferring "!=" and "==" over "=" at the same position.
        i, escaped, found = 0, False, None
        while i < len(term):
            c = term[i]
            if escaped:
                escaped = False
            elif c == "\\":
                escaped = True
            else:
                for op in ("!=", "==", "="):
                    if term.startswith(op, i):
                        found = (i, op)
                        break
                if found:
                    break
            i += 1
        if found is None:
            raise SelectorError(f"invalid selector: '{text}'; can't understand '{term}'")
        idx, op = found
        field, value = term[:idx], _unescape(term[idx + len(op) :])
        if field not in SUPPORTED_FIELDS:
            raise SelectorError(f"field label not supported: {field}")
        reqs.append(FieldRequirement(field, op != "!=", value))
    return FieldSelector(tuple(reqs))
