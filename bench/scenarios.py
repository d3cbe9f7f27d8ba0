"""The scenarios of ``python -m bench``: each returns its figures as one flat dict."""

from __future__ import annotations

import asyncio
import importlib.util
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from bench.harness import PYTHON, RESOURCE_TYPE, ROOT, Bench, Phase, percentile_ms, stop

Figures = dict[str, Any]

#: Objects per channel that the bursts update round-robin (and that each snapshot carries).
OBJECTS = 10
WARMUP_EVENTS = 30
#: Unmeasured events for the stalled client alone: more than the kernel buffers between it and the gateway.
FILL_EVENTS = 8000


@dataclass(frozen=True)
class Sizes:
    quick: bool

    def pick(self, full: int, quick: int) -> int:
        return quick if self.quick else full


def _channel(project: str) -> dict[str, str]:
    return {"project": project, "namespace": "default"}


def _sub(project: str) -> dict[str, str]:
    return {"resourceType": RESOURCE_TYPE, "projectId": project, "namespace": "default"}


def _phase_figures(phase: Phase) -> Figures:
    return {
        "events": phase.sent,
        "deliveries": phase.deliveries,
        "complete": round(phase.deliveries / max(phase.expected, 1), 4),
        "deliveries_per_s": round(phase.rate),
        "gw_us_per_delivery": round(phase.cpu_us_per_delivery(), 2),
        "gw_cpu_share": round(phase.cpu["gateway"] / phase.span, 2),
        "gw_kernel_pct": round(100 * phase.system["gateway"] / max(phase.cpu["gateway"], 1e-9)),
        "loadgen_cpu_share": round(
            sum(v for k, v in phase.cpu.items() if k.startswith("loadgen")) / phase.span, 2
        ),
        "upstream_cpu_share": round(phase.cpu["upstream"] / phase.span, 2),
        "frames_per_read": round(phase.deliveries / max(phase.chunks, 1), 2),
        "p50_ms": round(phase.percentile_ms(0.50), 2),
        "p99_ms": round(phase.percentile_ms(0.99), 2),
        "max_ms": round(phase.percentile_ms(1.0), 2),
        "span_s": round(phase.span, 2),
        "gw_counted_deliveries": int(phase.gateway_deliveries),
    }


async def _connect_one_channel(bench: Bench, clients: int, prefix: str) -> tuple[list[dict[str, str]], float]:
    channels = [_channel("bench")]
    await bench.setup_objects(channels, OBJECTS)
    conn = await bench.connect(group="fast", prefix=prefix, clients=clients, subs=[_sub("bench")])
    await bench.wait_subscriptions(clients)
    return channels, conn["seconds"]


async def fanout(bench: Bench, sizes: Sizes, clients: int) -> Figures:
    """One channel, a burst as fast as the upstream makes it, sized to last ~7 s."""
    target_s = 2.0 if sizes.quick else 7.0
    channels, connect_s = await _connect_one_channel(bench, clients, "fan")
    try:
        warm = await bench.measure(
            channels=channels, objects=OBJECTS, count=WARMUP_EVENTS, rate=0, per_client=WARMUP_EVENTS
        )
        count = int(min(max(warm.rate * target_s / clients, 20), 20_000))
        await asyncio.sleep(0.5)
        phase = await bench.measure(channels=channels, objects=OBJECTS, count=count, rate=0, per_client=count)
    finally:
        await bench.close_clients()
    return {"clients": clients, "connect_s": connect_s, **_phase_figures(phase)}


async def steady(bench: Bench, sizes: Sizes, clients: int, rate: int) -> Figures:
    """One channel at a fixed event rate: end-to-end latency."""
    duration = 2 if sizes.quick else 10
    channels, connect_s = await _connect_one_channel(bench, clients, f"st{rate}")
    try:
        count = rate * duration
        phase = await bench.measure(
            channels=channels, objects=OBJECTS, count=count, rate=rate, per_client=count
        )
    finally:
        await bench.close_clients()
    return {"clients": clients, "rate": rate, "connect_s": connect_s, **_phase_figures(phase)}


async def many_channels(bench: Bench, sizes: Sizes) -> Figures:
    """Many channels with a few clients each; events spread round-robin over the channels."""
    n_channels = sizes.pick(1000, 50)
    per_channel = sizes.pick(10, 4)
    target_s = 2.0 if sizes.quick else 7.0
    objects = 2
    projects = [f"p{i:04d}" for i in range(n_channels)]
    channels = [_channel(p) for p in projects]
    clients = n_channels * per_channel
    await bench.setup_objects(channels, objects)
    conn = await bench.connect(group="fast", prefix="chan", clients=clients, subs=[_sub(p) for p in projects])
    await bench.wait_subscriptions(clients)
    try:
        warm = await bench.measure(channels=channels, objects=objects, count=n_channels, rate=0, per_client=1)
        per = int(min(max(warm.rate * target_s / clients, 2), 2000))
        await asyncio.sleep(0.5)
        phase = await bench.measure(
            channels=channels, objects=objects, count=per * n_channels, rate=0, per_client=per
        )
    finally:
        await bench.close_clients()
    return {
        "channels": n_channels,
        "clients": clients,
        "connect_s": conn["seconds"],
        **_phase_figures(phase),
    }


async def _idle_round(
    bench: Bench, clients: int, prefix: str, *, snapshot: bool, settle_s: float
) -> tuple[float, float]:
    """(KB of gateway RSS per client, connect seconds) for ``clients`` more idle streams."""
    before = bench.gateway_rss_kb()
    sub: dict[str, Any] = {**_sub("bench"), "snapshot": snapshot}
    ready = "synced" if snapshot else "subscribed"
    conn = await bench.connect(group="fast", prefix=prefix, clients=clients, subs=[sub], ready=ready)
    await asyncio.sleep(settle_s)
    return round((bench.gateway_rss_kb() - before) / clients, 2), conn["seconds"]


async def idle_rss(bench: Bench, sizes: Sizes) -> Figures:
    """Gateway RSS growth per idle subscribed client.

    First ``N`` clients subscribe with ``"snapshot": false`` (what a connection and its session
    cost), then ``N`` more, still alongside the first ones, with the channel's 10-object (~10 KB)
    snapshot: each figure is fresh growth, not memory freed by the other round and reused.
    """
    clients = sizes.pick(5000, 300)
    await bench.setup_objects([_channel("bench")], OBJECTS)
    await asyncio.sleep(1.0)
    rss_start = bench.gateway_rss_kb()
    try:
        settle_s = 1.0 if sizes.quick else 3.0
        without, _ = await _idle_round(bench, clients, "idlens", snapshot=False, settle_s=settle_s)
        with_snapshot, connect_s = await _idle_round(bench, clients, "idle", snapshot=True, settle_s=settle_s)
        rss_end = bench.gateway_rss_kb()
    finally:
        await bench.close_clients()
    return {
        "clients": clients,
        "connect_s": connect_s,
        "rss_start_kb": rss_start,
        "rss_end_kb": rss_end,
        "kb_per_idle_client": with_snapshot,
        "kb_per_idle_client_no_snapshot": without,
    }


async def _wait_slow_path(bench: Bench, within_s: float = 15.0) -> float:
    """Until the gateway queues bytes for a client that is behind (bounded); returns them."""
    deadline = asyncio.get_running_loop().time() + within_s
    pending = 0.0
    while asyncio.get_running_loop().time() < deadline:
        pending = (await bench.metrics()).get("watchgw_pending_bytes", 0.0)
        if pending > 0:
            break
        await asyncio.sleep(0.2)
    return pending


async def slow_client(bench: Bench, sizes: Sizes) -> Figures:
    """Fast clients' latency at 100 events/s, alternately without and with one stalled client.

    The stalled client subscribes to the fast clients' channel and to a channel of its own, which
    gets an unmeasured burst of ``FILL_EVENTS`` first: that fills the kernel buffers between the
    two processes, so during the measured run the gateway really holds a client that is behind
    (its pending bytes, coalesced updates and resyncs are reported).
    """
    clients = sizes.pick(1000, 200)
    rounds = sizes.pick(2, 1)
    duration = 2 if sizes.quick else 5
    rate = 100
    count = rate * duration
    channels, _ = await _connect_one_channel(bench, clients, "slow")
    fill = [_channel("fill")]
    await bench.setup_objects(fill, OBJECTS)
    alone: list[Phase] = []
    stalled: list[Phase] = []
    pending: list[float] = []
    coalesced = resyncs = 0
    run: dict[str, Any] = {
        "channels": channels,
        "objects": OBJECTS,
        "count": count,
        "rate": rate,
        "per_client": count,
    }
    try:
        for r in range(rounds):
            alone.append(await bench.measure(**run))
            await bench.connect(
                group="stall",
                prefix=f"stall{r}",
                clients=1,
                subs=[_sub("bench"), _sub("fill")],
                stall=True,
                all_subs=True,
            )
            await bench.wait_subscriptions(clients + 2)
            await bench.burst(fill, objects=OBJECTS, count=FILL_EVENTS)
            pending.append(await _wait_slow_path(bench))
            stalled.append(await bench.measure(**run))
            seen = await bench.metrics()  # before the stalled session is gone with its counters
            pending.append(seen.get("watchgw_pending_bytes", 0.0))
            coalesced += int(seen.get("watchgw_coalesced_total", 0))
            resyncs += int(seen.get("watchgw_resyncs_total", 0))
            await bench.close_group("stall")
            await bench.wait_subscriptions(clients, exact=True)
    finally:
        await bench.close_clients()
    return {
        "clients": clients,
        "rate": rate,
        "rounds": rounds,
        "p50_ms_alone": percentile_ms(alone, 0.5),
        "p99_ms_alone": percentile_ms(alone, 0.99),
        "p99_ms_alone_runs": [p.percentile_ms(0.99) for p in alone],
        "p50_ms_with_stalled": percentile_ms(stalled, 0.5),
        "p99_ms_with_stalled": percentile_ms(stalled, 0.99),
        "p99_ms_with_stalled_runs": [p.percentile_ms(0.99) for p in stalled],
        "complete_alone": round(sum(p.deliveries for p in alone) / sum(p.expected for p in alone), 4),
        "complete_with_stalled": round(
            sum(p.deliveries for p in stalled) / sum(p.expected for p in stalled), 4
        ),
        "gw_us_per_delivery_alone": round(sum(p.cpu_us_per_delivery() for p in alone) / rounds, 2),
        "gw_us_per_delivery_with_stalled": round(sum(p.cpu_us_per_delivery() for p in stalled) / rounds, 2),
        "stalled_pending_bytes_before_after": [int(b) for b in pending],
        "coalesced": coalesced,
        "resyncs": resyncs,
    }


async def informer(bench: Bench, sizes: Sizes) -> Figures:
    """``bench/informer_bench.py`` (someone else's), in a child process, when it exists."""
    del bench
    if importlib.util.find_spec("bench.informer_bench") is None:
        return {"skipped": "bench/informer_bench.py not present"}
    events = sizes.pick(100_000, 20_000)
    code = (
        "import asyncio, json, bench.informer_bench as b\n"
        f"print(json.dumps(asyncio.run(b.run(events={events}))))\n"
    )
    proc = await asyncio.create_subprocess_exec(
        PYTHON,
        "-c",
        code,
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        start_new_session=True,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), 240)
    except TimeoutError:
        return {"error": "timed out after 240 s"}
    finally:
        await stop(proc)
    if proc.returncode != 0:
        lines = err.decode(errors="replace").strip().splitlines()
        return {"error": lines[-1] if lines else f"exit {proc.returncode}"}
    result: dict[str, float] = json.loads(out.decode().strip().splitlines()[-1])
    return {k: round(v, 2) if isinstance(v, float) else v for k, v in result.items()}


Scenario = Callable[[Bench, Sizes], Awaitable[Figures]]


async def abuse(bench: Bench, sizes: Sizes) -> Figures:
    """``bench/abuse.py``: attacks on a gateway of its own (see there)."""
    del bench
    from bench import abuse as attacks

    return await attacks.run(
        sessions=sizes.pick(200, 50), objects=sizes.pick(2000, 300), stalled=sizes.pick(1000, 200)
    )


SCENARIOS: dict[str, Scenario] = {
    "idle-rss": idle_rss,
    "fanout-1000": lambda b, s: fanout(b, s, s.pick(1000, 200)),
    "fanout-5000": lambda b, s: fanout(b, s, s.pick(5000, 500)),
    "steady-10": lambda b, s: steady(b, s, s.pick(1000, 200), 10),
    "steady-100": lambda b, s: steady(b, s, s.pick(1000, 200), 100),
    "channels-1000x10": many_channels,
    "slow-client": slow_client,
    "informer": informer,
    "abuse": abuse,
}

__all__ = ["SCENARIOS", "Figures", "Sizes"]
