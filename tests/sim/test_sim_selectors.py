from __future__ import annotations

import pytest

from watchgw.sim.selectors import SelectorError, parse_field_selector, parse_label_selector

LABELS = {"app": "web", "tier": "front", "n": "5"}


@pytest.mark.parametrize(
    ("selector", "expected"),
    [
        ("", True),
        ("app=web", True),
        ("app==web", True),
        ("app!=web", False),
        ("missing!=x", True),
        ("app=db", False),
        ("app in (web,db)", True),
        ("app in (db)", False),
        ("app notin (db, cache)", True),
        ("missing notin (a)", True),
        ("app notin (web)", False),
        ("app", True),
        ("!app", False),
        ("!missing", True),
        ("missing", False),
        ("app=web,tier=front", True),
        ("app=web, tier=back", False),
        ("app in (web),!missing,tier", True),
        ("n>3", True),
        ("n<3", False),
        ("example.com/app!=x", True),
        ("empty=", False),
    ],
)
def test_label_selector_matches(selector: str, expected: bool) -> None:
    assert parse_label_selector(selector).matches(LABELS) is expected


def test_label_selector_empty_value_matches_empty_label() -> None:
    assert parse_label_selector("k=").matches({"k": ""})


@pytest.mark.parametrize(
    "selector",
    [
        "app=web,",
        "=web",
        "app in ()",
        "app in (a",
        "app in a",
        "-bad=x",
        "app=we b",
        "a b",
        "n>x",
        "app=!x",
        "Bad/x=y",
    ],
)
def test_label_selector_rejects(selector: str) -> None:
    with pytest.raises(SelectorError):
        parse_label_selector(selector)


@pytest.mark.parametrize(
    ("selector", "name", "namespace", "expected"),
    [
        ("metadata.name=a", "a", "ns", True),
        ("metadata.name==a", "b", "ns", False),
        ("metadata.name!=a", "b", "ns", True),
        ("metadata.namespace=ns,metadata.name=a", "a", "ns", True),
        ("metadata.namespace=other", "a", "ns", False),
        (r"metadata.name=a\,b", "a,b", "ns", True),
        ("", "x", "y", True),
    ],
)
def test_field_selector(selector: str, name: str, namespace: str, expected: bool) -> None:
    assert parse_field_selector(selector).matches(name, namespace) is expected


@pytest.mark.parametrize(
    "selector", ["spec.foo=bar", "metadata.name", r"metadata.name=a\x", "status.phase!=x"]
)
def test_field_selector_rejects(selector: str) -> None:
    with pytest.raises(SelectorError):
        parse_field_selector(selector)
