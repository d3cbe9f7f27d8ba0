"""Changing sample resources for ``watchgw demo``: the original portal's types in two projects."""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Callable
from typing import Any

from .store import SimNotFound, Simulator

__all__ = ["DEMO_NAMESPACE", "DEMO_PROJECTS", "DEMO_TYPES", "run_demo_churn", "seed_demo"]

DNSZONES = "apis/dns.networking.miloapis.com/v1alpha1/dnszones"
DNSRECORDSETS = "apis/dns.networking.miloapis.com/v1alpha1/dnsrecordsets"
DOMAINS = "apis/networking.datumapis.com/v1alpha/domains"
SECRETS = "api/v1/secrets"
HTTPPROXIES = "apis/networking.datumapis.com/v1alpha/httpproxies"
EXPORTPOLICIES = "apis/telemetry.miloapis.com/v1alpha1/exportpolicies"
DEMO_TYPES = (DNSZONES, DNSRECORDSETS, DOMAINS, SECRETS, HTTPPROXIES, EXPORTPOLICIES)
DEMO_PROJECTS = ("proj-abc", "proj-xyz")
DEMO_NAMESPACE = "default"
MIN_PER_TYPE, MAX_PER_TYPE = 5, 15
_WORDS = (
    "alpha",
    "bravo",
    "cedar",
    "delta",
    "ember",
    "fjord",
    "gamma",
    "harbor",
    "iris",
    "juniper",
    "kilo",
    "lumen",
)
_TLDS = ("example.com", "example.net", "demo.dev", "datum.test")


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _conditions(ready: bool, rng: random.Random) -> list[dict[str, Any]]:
    if ready:
        reason, message = "Ready", "Resource is ready"
    else:
        reason, message = rng.choice(
            [("Pending", "Waiting for the control plane"), ("Programming", "Programming the data plane")]
        )
    return [
        {
            "type": "Ready",
            "status": "True" if ready else "False",
            "reason": reason,
            "message": message,
            "lastTransitionTime": _now(),
            "observedGeneration": 1,
        }
    ]


def _spec(resource_type: str, name: str, rng: random.Random) -> dict[str, Any]:
    domain = f"{name}.{rng.choice(_TLDS)}"
    if resource_type == DNSZONES:
        return {"spec": {"domainName": domain, "dnsZoneClassName": "datum-external-global-dns"}}
    if resource_type == DNSRECORDSETS:
        ip = f"203.0.113.{rng.randint(1, 254)}"
        return {
            "spec": {
                "dnsZoneRef": {"name": name.split("-")[0]},
                "recordType": "A",
                "records": [{"name": "www", "a": {"content": ip}, "ttl": 300}],
            }
        }
    if resource_type == DOMAINS:
        return {"spec": {"domainName": domain}}
    if resource_type == SECRETS:
        return {"type": "Opaque", "data": {"token": "c2VjcmV0LXZhbHVl"}}
    if resource_type == HTTPPROXIES:
        return {
            "spec": {
                "hostnames": [domain],
                "rules": [{"backends": [{"endpoint": f"https://{name}.backend.internal"}]}],
            }
        }
    return {
        "spec": {
            "sources": [{"name": "metrics", "metrics": {"metricsql": '{service_name="' + name + '"}'}}],
            "sinks": [
                {"name": "grafana", "target": {"prometheusRemoteWrite": {"endpoint": "https://prom.example"}}}
            ],
        }
    }


def _make(resource_type: str, name: str, rng: random.Random, *, ready: bool) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "metadata": {"name": name, "labels": {"app.kubernetes.io/part-of": "watchgw-demo"}}
    }
    obj.update(_spec(resource_type, name, rng))
    if resource_type != SECRETS:
        obj["status"] = {"conditions": _conditions(ready, rng)}
    return obj


def _new_name(existing: set[str], rng: random.Random) -> str:
    while True:
        name = f"{rng.choice(_WORDS)}-{rng.randint(100, 999)}"
        if name not in existing:
            return name


def seed_demo(sim: Simulator, *, seed: int | None = None) -> None:
    """Create the initial population (skips names that already exist)."""
    rng = random.Random(seed)
    for project in DEMO_PROJECTS:
        for rt in DEMO_TYPES:
            names = {o["metadata"]["name"] for o in sim.list_objects(rt, project=project)}
            while len(names) < (MIN_PER_TYPE + MAX_PER_TYPE) // 2:
                name = _new_name(names, rng)
                names.add(name)
                sim.create(
                    rt,
                    _make(rt, name, rng, ready=rng.random() < 0.7),
                    project=project,
                    namespace=DEMO_NAMESPACE,
                )


def churn_once(sim: Simulator, rng: random.Random) -> None:
    """One random change: create, make Ready, modify or delete, keeping 5-15 objects per type."""
    project = rng.choice(DEMO_PROJECTS)
    rt = rng.choice(DEMO_TYPES)
    scope = {"project": project, "namespace": DEMO_NAMESPACE}
    objs = sim.list_objects(rt, **scope)
    names = {o["metadata"]["name"] for o in objs}
    not_ready = [o for o in objs if o.get("status", {}).get("conditions", [{}])[0].get("status") == "False"]
    actions: list[Callable[[], None]] = []

    def create() -> None:
        sim.create(rt, _make(rt, _new_name(names, rng), rng, ready=False), **scope)

    def delete() -> None:
        with contextlib.suppress(SimNotFound):
            sim.delete(rt, rng.choice(sorted(names)), **scope)

    def make_ready() -> None:
        obj = rng.choice(not_ready)
        obj["status"]["conditions"] = _conditions(True, rng)
        sim.update(rt, obj, **scope)

    def modify() -> None:
        obj = rng.choice(objs)
        obj["metadata"].setdefault("annotations", {})["demo.watchgw.io/touched"] = _now()
        if rt != SECRETS:
            ready = rng.random() < 0.8
            obj["status"] = {"conditions": _conditions(ready, rng)}
        sim.update(rt, obj, **scope)

    if len(objs) < MAX_PER_TYPE:
        actions.append(create)
    if len(objs) > MIN_PER_TYPE:
        actions.append(delete)
    if not_ready:
        actions += [make_ready, make_ready]
    if objs:
        actions.append(modify)
    rng.choice(actions)()


async def run_demo_churn(sim: Simulator, *, period_s: float = 1.0, seed: int | None = None) -> None:
    """Seed the demo resources, then change one of them every ``period_s`` seconds until cancelled."""
    rng = random.Random(seed)
    seed_demo(sim, seed=rng.randrange(1 << 30))
    while True:
        await asyncio.sleep(period_s)
        churn_once(sim, rng)
