from __future__ import annotations

import asyncio

import pytest

from watchgw.sim import Fault, SimConflict, SimNotFound, Simulator
from watchgw.sim.store import kind_of

from .helpers_sim import CM, ZONES, cm


def test_create_fills_metadata_and_kind() -> None:
    sim = Simulator()
    obj = sim.create(
        ZONES, {"metadata": {"name": "z"}, "spec": {"domainName": "a.example"}}, namespace="default"
    )
    assert obj["kind"] == "DNSZone"
    assert obj["apiVersion"] == "dns.networking.miloapis.com/v1alpha1"
    meta = obj["metadata"]
    assert meta["namespace"] == "default"
    assert meta["generation"] == 1
    assert meta["resourceVersion"] == sim.resource_version
    assert meta["uid"]
    assert meta["creationTimestamp"].endswith("Z")
    assert list(obj)[:2] == ["kind", "apiVersion"]


def test_update_delete_get_list() -> None:
    sim = Simulator()
    first = sim.create(CM, cm("a"), namespace="ns1")
    sim.create(CM, cm("b"), namespace="ns2")
    updated = sim.update(CM, {"metadata": {"name": "a"}, "data": {"k": "2"}}, namespace="ns1")
    assert updated["metadata"]["generation"] == 2
    assert updated["metadata"]["uid"] == first["metadata"]["uid"]
    assert int(updated["metadata"]["resourceVersion"]) > int(first["metadata"]["resourceVersion"])
    assert sim.get(CM, "a", namespace="ns1") == updated
    assert [o["metadata"]["name"] for o in sim.list_objects(CM)] == ["a", "b"]
    assert [o["metadata"]["name"] for o in sim.list_objects(CM, namespace="ns2")] == ["b"]
    deleted = sim.delete(CM, "a", namespace="ns1")
    assert deleted["metadata"]["resourceVersion"] == sim.resource_version
    assert sim.get(CM, "a", namespace="ns1") is None


def test_errors() -> None:
    sim = Simulator()
    sim.create(CM, cm("a"), namespace="ns")
    with pytest.raises(SimConflict):
        sim.create(CM, cm("a"), namespace="ns")
    assert issubclass(SimConflict, ValueError)
    with pytest.raises(SimNotFound):
        sim.update(CM, cm("zz"), namespace="ns")
    with pytest.raises(SimNotFound):
        sim.delete(CM, "zz", namespace="ns")
    with pytest.raises(ValueError, match="metadata"):
        sim.create(CM, {"data": {}})
    with pytest.raises(ValueError, match="resource type"):
        sim.create("configmaps", cm("x"))


def test_store_is_isolated_from_caller_mutation() -> None:
    sim = Simulator()
    obj = cm("a", app="x")
    sim.create(CM, obj, namespace="ns")
    obj["metadata"]["labels"]["app"] = "changed"
    obj["data"]["k"] = "changed"
    stored = sim.get(CM, "a", namespace="ns")
    assert stored is not None
    assert stored["metadata"]["labels"] == {"app": "x"}
    assert stored["data"] == {"k": "a"}


def test_scopes_are_separate_collections() -> None:
    sim = Simulator()
    sim.create(CM, cm("a"), project="p1", namespace="ns")
    sim.create(CM, cm("a"), org="o1", namespace="ns")
    sim.create(CM, cm("a"), namespace="ns")
    assert len(sim.list_objects(CM, project="p1")) == 1
    assert sim.list_objects(CM, project="p2") == []


@pytest.mark.parametrize(
    ("plural", "kind"),
    [
        ("dnsrecordsets", "DNSRecordSet"),
        ("httpproxies", "HTTPProxy"),
        ("widgets", "Widget"),
        ("policies", "Policy"),
    ],
)
def test_kinds(plural: str, kind: str) -> None:
    assert kind_of(plural) == kind


def test_faults_are_consumed_in_order() -> None:
    sim = Simulator()
    sim.inject(Fault("error500", on="list", count=2, path_contains="configmaps"))
    assert sim.take_fault("watch", "/api/v1/configmaps") is None
    assert sim.take_fault("list", "/api/v1/secrets") is None
    assert sim.take_fault("list", "/api/v1/configmaps") is not None
    assert sim.take_fault("list", "/api/v1/configmaps") is not None
    assert sim.take_fault("list", "/api/v1/configmaps") is None


async def test_wait_for_wakes_on_change_and_times_out() -> None:
    sim = Simulator()
    waiter = asyncio.ensure_future(sim.wait_for(lambda: len(sim.list_objects(CM)) == 1))
    await asyncio.sleep(0)
    assert not waiter.done()
    sim.create(CM, cm("a"), namespace="ns")
    await waiter
    with pytest.raises(TimeoutError):
        await sim.wait_for(lambda: False, timeout=0.05)
