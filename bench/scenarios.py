"""The scenarios of ``python -m bench``: each returns its figures as one flat dict."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from bench.harness import (
    PYTHON,
    RESOURCE_TYPE,
    ROOT,
    Bench,
    Phase,
    behind_nginx,
    hist_percentile_ms,
    percentile_ms,
    stop,
    with_roles,
)

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
        **({"nginx_cpu_share": round(phase.cpu["nginx"] / phase.span, 2)} if "nginx" in phase.cpu else {}),
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


#: Idle clients of the large round. The goal names 20,000; this machine's hard limit on open files
#: per process is 20,000 (a container: it cannot be raised), and the gateway needs one per client
#: plus its listener, upstream and log files, so the large round stops a little short of it.
LARGE_IDLE = 19_000


async def idle_rss(bench: Bench, sizes: Sizes) -> Figures:
    """Gateway RSS growth per idle subscribed client, at 5,000 and at :data:`LARGE_IDLE`.

    First ``N`` clients subscribe with ``"snapshot": false`` (what a connection and its session
    cost), then ``N`` more, still alongside the first ones, with the channel's 10-object (~10 KB)
    snapshot: each figure is fresh growth, not memory freed by the other round and reused. Then
    more snapshotting clients up to :data:`LARGE_IDLE` in all: growth from the start over all of
    them. Where the bytes go comes from ``bench/memory.py`` (tracemalloc, a gateway of its own).
    """
    clients = sizes.pick(5000, 300)
    large = sizes.pick(LARGE_IDLE, 1000)
    await bench.setup_objects([_channel("bench")], OBJECTS)
    await asyncio.sleep(1.0)
    rss_start = bench.gateway_rss_kb()
    try:
        settle_s = 1.0 if sizes.quick else 3.0
        without, _ = await _idle_round(bench, clients, "idlens", snapshot=False, settle_s=settle_s)
        with_snapshot, connect_s = await _idle_round(bench, clients, "idle", snapshot=True, settle_s=settle_s)
        await _idle_round(bench, large - 2 * clients, "idlelg", snapshot=True, settle_s=settle_s)
        rss_end = bench.gateway_rss_kb()
    finally:
        await bench.close_clients()
    breakdown = await _memory_breakdown(clients)
    return {
        "clients": clients,
        "connect_s": connect_s,
        "rss_start_kb": rss_start,
        "rss_end_kb": rss_end,
        "kb_per_idle_client": with_snapshot,
        "kb_per_idle_client_no_snapshot": without,
        "large_clients": large,
        "kb_per_idle_client_large": round((rss_end - rss_start) / large, 2),
        "traced_bytes_per_client": breakdown["traced_bytes_per_client"],
        **{
            f"traced_{name.replace(' ', '_').replace('/', '_')}": size
            for name, size in breakdown["by_module"].items()
        },
    }


async def _memory_breakdown(clients: int) -> dict[str, Any]:
    proc = await asyncio.create_subprocess_exec(
        PYTHON,
        "-m",
        "bench.memory",
        "--clients",
        str(clients),
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 600)
    last = [line for line in out.decode().splitlines() if line.startswith("{")][-1]
    result: dict[str, Any] = json.loads(last)
    return result


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

#: The figures of each way of running ``cluster-fanout``, under this prefix.
CLUSTER_FANOUT_KEYS = (
    "deliveries_per_s",
    "gw_us_per_delivery",
    "gw_cpu_share",
    "nginx_cpu_share",
    "loadgen_cpu_share",
    "upstream_cpu_share",
    "complete",
    "p50_ms",
    "p99_ms",
    "span_s",
    "connect_s",
)


async def cluster_fanout(bench: Bench, sizes: Sizes) -> Figures:
    """The ``fanout`` burst (one channel, as fast as the upstream makes it) three ways in one
    run: 1 gateway reached directly, 1 gateway behind nginx, 2 gateways behind nginx (hashed on
    the cid: each holds about half of the clients). Fresh gateways and load generators for each
    way behind nginx; the direct one is the run's own gateway."""
    clients = sizes.pick(5000, 500)
    ways: dict[str, Figures] = {"direct": await fanout(bench, sizes, clients)}
    for name, replicas in (("nginx1", 1), ("nginx2", 2)):
        async with behind_nginx(bench, replicas=replicas, name=f"cluster-fanout-{name}") as cluster:
            ways[name] = await fanout(cluster, sizes, clients)
    out: Figures = {"clients": clients}
    for name, f in ways.items():
        out.update({f"{name}_{key}": f[key] for key in CLUSTER_FANOUT_KEYS if key in f})
    direct, nginx1, nginx2 = (ways[n]["deliveries_per_s"] for n in ("direct", "nginx1", "nginx2"))
    out["ratio_nginx2_vs_direct"] = round(nginx2 / max(direct, 1), 2)
    out["ratio_nginx2_vs_nginx1"] = round(nginx2 / max(nginx1, 1), 2)
    out["ratio_nginx1_vs_direct"] = round(nginx1 / max(direct, 1), 2)
    return out


#: The storm: each client holds these channels, of this many objects of about this size (bytes
#: of the object's JSON), while one of them changes at this rate.
STORM_CHANNELS = 5
STORM_OBJECTS = 200
STORM_OBJECT_BYTES = 512
STORM_LIVE_RATE = 20
#: From the kill until every client that lost its stream has all its channels synced again.
STORM_WITHIN_S = 120.0


def _quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


async def _converge(cluster: Bench, group: str, expect: int, within_s: float) -> dict[str, Any]:
    """Until ``expect`` reconnecting clients are synced again (polling the load generators)."""
    deadline = time.monotonic() + within_s
    while True:
        status = await cluster.reconnects(group)
        done = status["ready"] + status["failed"]
        if status["lost"] >= expect and done >= status["lost"]:
            if status["failed"]:
                raise RuntimeError(
                    f"storm: {status['failed']} of {status['lost']} clients gave up reconnecting; "
                    f"first error: {status['firstError']}"
                )
            return status
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"storm did not converge within {within_s:.0f} s of the kill: {status['lost']} streams "
                f"ended (replica 0 held {expect}), {status['ready']} synced again, {status['failed']} "
                f"gave up, {status['attempts']} attempts; first error: {status['firstError']}"
            )
        await asyncio.sleep(0.2)


async def storm(bench: Bench, sizes: Sizes) -> Figures:
    """A reconnect storm: 2 gateways behind nginx, every client subscribed to the same
    ``STORM_CHANNELS`` channels of ``STORM_OBJECTS`` objects, one channel changing at
    ``STORM_LIVE_RATE`` events/s; then replica 0 is SIGKILLed. Its clients (about half) reconnect
    through nginx with the same cid (landing on the survivor), subscribe again WITHOUT a
    resourceVersion (a full snapshot of each channel: the worst case) and wait for every
    ``synced``. Figures: seconds from the kill until the last of them is synced again, and the
    live-event latency of the clients that stayed on the survivor, during the storm and before.

    The clients reconnect as soon as their stream ends (no ``retry_ms`` wait, which EventSource
    would add): the figure is the servers' time to take the storm, not the clients' patience."""
    clients = sizes.pick(2000, 200)
    before_s = sizes.pick(5, 2)
    projects = [f"storm{i}" for i in range(STORM_CHANNELS)]
    channels = [_channel(p) for p in projects]
    subs = [_sub(p) for p in projects]
    async with behind_nginx(bench, replicas=2, name="storm") as cluster:
        await cluster.setup_objects(channels, STORM_OBJECTS, size=STORM_OBJECT_BYTES)
        conn = await cluster.connect(
            group="storm",
            prefix="storm",
            clients=clients,
            subs=subs,
            all_subs=True,
            by_replica=True,
            reconnect_into="reconnected",
            within_s=300,
        )
        await cluster.wait_subscriptions(clients * STORM_CHANNELS)
        names = {i: s["replica"] for i, s in (await cluster.stats_all()).items()}
        survivors = f"storm@{names[1]}"
        live_until = time.monotonic() + 1 + before_s + STORM_WITHIN_S + 10
        live = asyncio.create_task(
            cluster.live_events(
                channels[:1],
                objects=STORM_OBJECTS,
                rate=STORM_LIVE_RATE,
                size=STORM_OBJECT_BYTES,
                until=live_until,
            )
        )
        try:
            await asyncio.sleep(1)  # the live events flow before anything is measured
            await cluster.arm()
            await asyncio.sleep(before_s)
            before = await cluster.read_group(survivors)
            held = (await cluster.stats_all())[0]["streams"]
            await cluster.arm()
            cpu_before = cluster.sample()
            parts_before = await cluster.gateway_metrics(1)
            t_kill = time.time()
            await cluster.kill_gateway(0)
            await _converge(cluster, "reconnected", held, STORM_WITHIN_S)
            if live.done():  # the survivors' latency would be that of no events
                raise RuntimeError(f"storm: the live events stopped early: {live.exception()!r}")
            during = await cluster.read_group(survivors)
            cpu_after = cluster.sample()
            status = await cluster.reconnects("reconnected", times=True)
            renewed = await cluster.read_group("reconnected")
            subscriptions = sum((await cluster.stats(1))["subscriptions"].values())
            parts_after = await cluster.gateway_metrics(1)
        finally:
            live.cancel()
            await asyncio.gather(live, return_exceptions=True)
    converged_s = max(status["tReady"]) - t_kill
    wall = cpu_after.wall - cpu_before.wall
    cpu = with_roles(cpu_after.cpu_since(cpu_before))
    ready_s = [t - t_kill for t in status["tReady"]]
    return {
        "clients": clients,
        "channels": STORM_CHANNELS,
        "objects": STORM_OBJECTS,
        "object_bytes": STORM_OBJECT_BYTES,
        "live_rate": STORM_LIVE_RATE,
        "resubscribe": "no resourceVersion (full snapshots), at once (no retry_ms wait)",
        "connect_s": conn["seconds"],
        "on_killed_replica": held,
        "reconnected": status["ready"],
        "reconnect_attempts": status["attempts"],
        "converged_s": round(converged_s, 2),
        "ready_p50_s": round(_quantile(ready_s, 0.5), 2),
        "ready_p99_s": round(_quantile(ready_s, 0.99), 2),
        "streams_ended_within_s": round(max(status["tLost"]) - t_kill, 3),
        "connected_again_p50_s": round(_quantile([t - t_kill for t in status["tConnected"]], 0.5), 2),
        "connected_again_max_s": round(max(status["tConnected"]) - t_kill, 2),
        "subscribes": len(status["subscribeS"]),
        "subscribe_p50_ms": round(1000 * _quantile(status["subscribeS"], 0.5), 1),
        "subscribe_p99_ms": round(1000 * _quantile(status["subscribeS"], 0.99), 1),
        "reconnected_mb_received": round(renewed["bytes"] / 1e6, 1),  # mostly the snapshots
        # The surviving replica's snapshot parts: encoded once per channel version, written to
        # every client that needed that version (hub/snapshot.py).
        **{
            name: int(parts_after[f"watchgw_{name}_total"] - parts_before[f"watchgw_{name}_total"])
            for name in ("snapshot_parts_built", "snapshot_parts_written")
        },
        "survivors": during["open"],
        "survivor_subscriptions_after": subscriptions,
        "survivors_p50_ms_before": hist_percentile_ms(before["hist"], 0.5),
        "survivors_p99_ms_before": hist_percentile_ms(before["hist"], 0.99),
        "survivors_p50_ms_storm": hist_percentile_ms(during["hist"], 0.5),
        "survivors_p99_ms_storm": hist_percentile_ms(during["hist"], 0.99),
        "survivors_max_ms_storm": hist_percentile_ms(during["hist"], 1.0),
        "survivor_deliveries_storm": during["deliveries"],
        "storm_wall_s": round(wall, 2),
        "gw_cpu_share": round(cpu.get("gateway-1", 0.0) / wall, 2),
        "nginx_cpu_share": round(cpu.get("nginx", 0.0) / wall, 2),
        "loadgen_cpu_share": round(sum(v for k, v in cpu.items() if k.startswith("loadgen")) / wall, 2),
        "upstream_cpu_share": round(cpu["upstream"] / wall, 2),
    }


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
    "cluster-fanout": cluster_fanout,
    "storm": storm,
    "informer": informer,
    "abuse": abuse,
}

__all__ = ["SCENARIOS", "Figures", "Sizes"]
