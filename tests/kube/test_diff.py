"""The relist diff: applying its events to the old state gives the new state, minimally."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from watchgw.kube.client import encode_object
from watchgw.kube.informer import diff_objects
from watchgw.kube.types import ObjectKey, WatchEvent

keys = st.sampled_from([f"ns{i % 3}/obj-{i}" for i in range(25)] + ["cluster-a", "cluster-b"])
states = st.dictionaries(keys, st.integers(min_value=1, max_value=6), max_size=20)


def obj(key: str, rv: int) -> dict[str, Any]:
    ns, _, name = key.rpartition("/")
    meta: dict[str, Any] = {"name": name, "resourceVersion": str(rv)}
    if ns:
        meta["namespace"] = ns
    return {"kind": "Thing", "metadata": meta, "spec": {"v": rv}}


def event_map(state: dict[str, int]) -> dict[ObjectKey, WatchEvent]:
    out = {}
    for key, rv in state.items():
        o = obj(key, rv)
        out[ObjectKey(key)] = WatchEvent("ADDED", ObjectKey(key), o, encode_object(o), str(rv))
    return out


@given(before=states, after=states)
def test_events_turn_old_into_new(before: dict[str, int], after: dict[str, int]) -> None:
    old = event_map(before)
    items = [obj(k, rv) for k, rv in after.items()]
    new, events = diff_objects(old, items, "100")

    applied = {k: ev.resource_version for k, ev in old.items()}
    for ev in events:
        if ev.type == "DELETED":
            assert ev.key in applied
            assert ev.object is old[ev.key].object  # the last known object
            assert ev.resource_version == "100"
            del applied[ev.key]
        elif ev.type == "ADDED":
            assert ev.key not in applied
            applied[ev.key] = ev.resource_version
        else:
            assert ev.type == "MODIFIED"
            assert ev.key in applied
            assert applied[ev.key] != ev.resource_version
            applied[ev.key] = ev.resource_version
    assert applied == {k: str(rv) for k, rv in after.items()}
    assert {k: ev.resource_version for k, ev in new.items()} == applied

    # Minimal: exactly one event per changed key, none for unchanged ones (which keep their event).
    changed = {k for k in before.keys() | after.keys() if before.get(k) != after.get(k)}
    assert sorted(ev.key for ev in events) == sorted(changed)
    for k in before.keys() & after.keys():
        if before[k] == after[k]:
            assert new[ObjectKey(k)] is old[ObjectKey(k)]
    for ev in events:
        if ev.type != "DELETED":
            assert ev.object_json == encode_object(ev.object)


def test_first_list_is_all_added_in_list_order() -> None:
    items = [obj("a/x", 1), obj("b/y", 2), obj("c", 3)]
    new, events = diff_objects({}, items, "5")
    assert [(e.type, e.key) for e in events] == [("ADDED", "a/x"), ("ADDED", "b/y"), ("ADDED", "c")]
    assert list(new) == ["a/x", "b/y", "c"]
