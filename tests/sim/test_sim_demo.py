from __future__ import annotations

import asyncio
import contextlib
import random

from watchgw.sim import Simulator
from watchgw.sim.demo import (
    DEMO_NAMESPACE,
    DEMO_PROJECTS,
    DEMO_TYPES,
    MAX_PER_TYPE,
    MIN_PER_TYPE,
    churn_once,
    run_demo_churn,
    seed_demo,
)


def test_seed_and_churn_keep_population_bounded() -> None:
    sim = Simulator()
    seed_demo(sim, seed=1)
    rng = random.Random(2)
    for _ in range(500):
        churn_once(sim, rng)
    for project in DEMO_PROJECTS:
        for rt in DEMO_TYPES:
            objs = sim.list_objects(rt, project=project, namespace=DEMO_NAMESPACE)
            assert MIN_PER_TYPE <= len(objs) <= MAX_PER_TYPE
            for obj in objs:
                if rt != "api/v1/secrets":
                    cond = obj["status"]["conditions"][0]
                    assert cond["type"] == "Ready"
                    assert cond["status"] in ("True", "False")
                    assert cond["lastTransitionTime"].endswith("Z")


async def test_run_demo_churn_changes_things() -> None:
    sim = Simulator()
    task = asyncio.create_task(run_demo_churn(sim, period_s=0.001, seed=3))
    try:
        await sim.wait_for(lambda: sim.list_objects(DEMO_TYPES[0], project="proj-abc") != [])
        seeded = int(sim.resource_version)
        await sim.wait_for(lambda: int(sim.resource_version) >= seeded + 5)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
