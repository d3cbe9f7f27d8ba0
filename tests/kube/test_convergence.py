"""Convergence against the simulator: random churn and faults, then the informer equals the store.

For each seed: random creates/updates/deletes with random injected faults (cut, gone, gone_http,
stall, error500, too_many, compact, cut_watches) while an informer with tiny backoff, inactivity
and watch timeouts (and 3-object LIST pages) follows. When churn stops we await (no sleeping)
until the informer's objects equal the simulator's, then check that the events it emitted,
applied in order from empty, give the same objects. The op sequence is deterministic per seed;
interleaving with the network is not, which is the point.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from typing import Any

import pytest

from watchgw.config import UpstreamConfig
from watchgw.kube.client import KubeClient
from watchgw.kube.informer import Informer
from watchgw.kube.types import InformerPhase, WatchTarget
from watchgw.sim import Fault, running_simulator

from .informer_harness import Recorder

SEEDS = range(24)
FAULTS = ["cut", "gone", "gone_http", "stall", "error500", "too_many", "compact", "cut_watches"]

SCOPES = [
    ("api/v1/configmaps", {"namespace": "default"}),
    ("apis/networking.datumapis.com/v1alpha/domains", {"project": "proj-abc", "namespace": "default"}),
    ("api/v1/namespaces", {}),
    ("apis/apps/v1/deployments", {"org": "acme"}),
]


def target_of(resource_type: str, scope: dict[str, str]) -> WatchTarget:
    return WatchTarget(
        resource_type,
        org_id=scope.get("org", ""),
        project_id=scope.get("project", ""),
        namespace=scope.get("namespace", ""),
    )


def key_of(obj: dict[str, Any]) -> str:
    meta = obj["metadata"]
    return f"{meta['namespace']}/{meta['name']}" if meta.get("namespace") else meta["name"]


@pytest.mark.slow
@pytest.mark.parametrize("seed", SEEDS)
async def test_informer_converges_under_churn_and_faults(seed: int) -> None:
    rng = random.Random(seed)
    resource_type, scope = SCOPES[seed % len(SCOPES)]
    sim_scope = dict(scope)
    target = target_of(resource_type, scope)
    async with running_simulator(history_limit=rng.choice([5, 50, 10_000]), bookmark_interval_s=0.05) as (
        sim,
        url,
    ):
        config = UpstreamConfig(
            url=url,
            backoff_initial_s=0.002,
            backoff_max_s=0.02,
            inactivity_timeout_s=0.3,
            watch_timeout_s=1.0,
            list_page_size=3,
            request_timeout_s=2.0,
        )
        names: set[str] = set()
        counter = 0

        def create() -> None:
            nonlocal counter
            counter += 1
            name = f"obj-{counter}"
            sim.create(resource_type, {"metadata": {"name": name}, "data": {"v": "0"}}, **sim_scope)
            names.add(name)

        for _ in range(rng.randrange(0, 8)):
            create()

        rec = Recorder()
        async with KubeClient(config) as client:
            informer = Informer(
                target=target, client=client, config=config, listener=rec, rng=random.Random(seed)
            )
            task = asyncio.create_task(informer.run())
            try:
                for step in range(rng.randrange(40, 90)):
                    roll = rng.random()
                    if roll < 0.35 or not names:
                        create()
                    elif roll < 0.7:
                        name = rng.choice(sorted(names))
                        obj = {"metadata": {"name": name}, "data": {"v": str(step)}}
                        sim.update(resource_type, obj, **sim_scope)
                    elif roll < 0.85:
                        name = rng.choice(sorted(names))
                        sim.delete(resource_type, name, **sim_scope)
                        names.discard(name)
                    else:
                        fault = rng.choice(FAULTS)
                        if fault == "compact":
                            sim.compact()
                        elif fault == "cut_watches":
                            sim.cut_watches()
                        elif fault == "too_many":
                            sim.inject(
                                Fault(kind="too_many", on=rng.choice(["watch", "any"]), retry_after_s=0)
                            )
                        elif fault in ("stall", "cut", "gone"):
                            sim.inject(Fault(kind=fault, on="watch"))  # type: ignore[arg-type]
                        else:
                            sim.inject(Fault(kind=fault, on=rng.choice(["watch", "any"])))  # type: ignore[arg-type]
                    if rng.random() < 0.25:
                        # Let the informer catch up at this point (faults may delay it).
                        at = sim.rv
                        await rec.wait_for(
                            lambda at=at: int(informer.resource_version or 0) >= at, timeout=10.0
                        )
                    else:
                        # Or let it interleave with the churn (a yield, not a wait for a condition).
                        for _ in range(rng.randrange(0, 4)):
                            await asyncio.sleep(0)

                def expected() -> dict[str, dict[str, Any]]:
                    return {key_of(o): o for o in sim.list_objects(resource_type, **sim_scope)}

                def converged() -> bool:
                    return (
                        informer.state.phase is InformerPhase.WATCHING
                        and {k: ev.object for k, ev in informer.objects.items()} == expected()
                    )

                await rec.wait_for(converged, timeout=15.0)
                want = expected()
                assert {k: ev.object for k, ev in informer.objects.items()} == want
                assert rec.applied() == {k: o["metadata"]["resourceVersion"] for k, o in want.items()}
                assert not task.done()
            finally:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
