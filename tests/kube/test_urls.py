"""Channel fields -> upstream URL and query (PROTOCOL.md section 2)."""

from __future__ import annotations

from urllib.parse import parse_qsl, urlsplit

import pytest

from watchgw.config import UpstreamConfig
from watchgw.kube.types import WatchTarget
from watchgw.kube.urls import (
    build_collection_url,
    build_query,
    build_url,
    encode_query,
    scope_base_url,
    scope_prefix,
)

CFG = UpstreamConfig(url="https://cp.example")
PROJ = "/apis/resourcemanager.miloapis.com/v1alpha1/projects/proj-abc/control-plane"
ORG = "/apis/resourcemanager.miloapis.com/v1alpha1/organizations/acme/control-plane"


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        (WatchTarget("api/v1/pods"), "https://cp.example/api/v1/pods"),
        (
            WatchTarget("api/v1/pods", namespace="default"),
            "https://cp.example/api/v1/namespaces/default/pods",
        ),
        (WatchTarget("apis/apps/v1/deployments"), "https://cp.example/apis/apps/v1/deployments"),
        (
            WatchTarget(
                "apis/networking.datumapis.com/v1alpha/domains", project_id="proj-abc", namespace="default"
            ),
            f"https://cp.example{PROJ}/apis/networking.datumapis.com/v1alpha/domains".replace(
                "/domains", "/namespaces/default/domains"
            ),
        ),
        (WatchTarget("api/v1/namespaces", org_id="acme"), f"https://cp.example{ORG}/api/v1/namespaces"),
        # project wins over org
        (
            WatchTarget("api/v1/pods", org_id="acme", project_id="proj-abc"),
            f"https://cp.example{PROJ}/api/v1/pods",
        ),
        # name does not change the path: it becomes a fieldSelector
        (
            WatchTarget("api/v1/pods", namespace="ns", name="web-0"),
            "https://cp.example/api/v1/namespaces/ns/pods",
        ),
    ],
)
def test_collection_url(target: WatchTarget, expected: str) -> None:
    assert build_collection_url(CFG, target) == expected


def test_trailing_slash_of_base_url_and_custom_prefixes() -> None:
    cfg = UpstreamConfig(url="http://h:8080/base/", project_prefix="/p/{project}", org_prefix="/o/{org}")
    assert (
        build_collection_url(cfg, WatchTarget("api/v1/pods", project_id="x"))
        == "http://h:8080/base/p/x/api/v1/pods"
    )
    assert scope_prefix(cfg, org_id="y") == "/o/y"
    assert scope_prefix(cfg) == ""
    assert scope_base_url(cfg, project_id="x", org_id="y") == "http://h:8080/base/p/x"


def test_rejects_non_collection_path() -> None:
    with pytest.raises(ValueError, match="collection"):
        build_collection_url(CFG, WatchTarget("pods"))


def test_watch_query_each_param_once_and_in_order() -> None:
    target = WatchTarget("api/v1/pods", label_selector="app=web", field_selector="status.phase=Running")
    params = build_query(target, watch=True, resource_version="42", timeout_s=317, allow_bookmarks=True)
    names = [k for k, _ in params]
    assert len(names) == len(set(names))
    assert params == [
        ("labelSelector", "app=web"),
        ("fieldSelector", "status.phase=Running"),
        ("watch", "true"),
        ("allowWatchBookmarks", "true"),
        ("resourceVersion", "42"),
        ("timeoutSeconds", "317"),
    ]


def test_list_query() -> None:
    params = build_query(WatchTarget("api/v1/pods"), limit=500, continue_token="abc")
    assert params == [("limit", "500"), ("continue", "abc")]
    assert build_query(WatchTarget("api/v1/pods")) == []


@pytest.mark.parametrize(
    ("name", "field_selector", "expected"),
    [
        ("web-0", "", "metadata.name=web-0"),
        ("web-0", "status.phase!=Failed", "metadata.name=web-0,status.phase!=Failed"),
        ("", "spec.nodeName=n1", "spec.nodeName=n1"),
    ],
)
def test_name_becomes_field_selector(name: str, field_selector: str, expected: str) -> None:
    target = WatchTarget("api/v1/pods", name=name, field_selector=field_selector)
    assert dict(build_query(target))["fieldSelector"] == expected


def test_percent_encoding_round_trips() -> None:
    target = WatchTarget(
        "api/v1/pods",
        namespace="default",
        name="web-0",
        label_selector="app in (a, b),tier!=db,!canary",
        field_selector="metadata.namespace=x&y",
    )
    url = build_url(CFG, target, build_query(target, watch=True, resource_version="1", timeout_s=300))
    parts = urlsplit(url)
    assert parts.path == "/api/v1/namespaces/default/pods"
    query = parts.query
    for raw in (" ", ",", "(", "!", "+"):
        assert raw not in query
    assert query.count("&") == 4  # five parameters; the '&' inside a value is encoded
    assert parse_qsl(query) == [
        ("labelSelector", "app in (a, b),tier!=db,!canary"),
        ("fieldSelector", "metadata.name=web-0,metadata.namespace=x&y"),
        ("watch", "true"),
        ("resourceVersion", "1"),
        ("timeoutSeconds", "300"),
    ]
    assert "labelSelector=app%20in%20%28a%2C%20b%29%2Ctier%21%3Ddb%2C%21canary" in query


def test_encode_query_spaces_are_not_plus() -> None:
    assert encode_query([("a b", "c d+e")]) == "a%20b=c%20d%2Be"


def test_build_url_without_params() -> None:
    assert build_url(CFG, WatchTarget("api/v1/pods"), []) == "https://cp.example/api/v1/pods"
