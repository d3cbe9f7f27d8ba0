"""The processes of a benchmark run (upstream, gateway, load generators) and how to drive them."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from bench.procstat import Sample, rss_kb

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
WATCHGW = str(Path(PYTHON).with_name("watchgw"))
RESOURCE_TYPE = "api/v1/configmaps"
START_TIMEOUT_S = 20.0
STOP_TIMEOUT_S = 8.0

GATEWAY_TOML = """\
[server]
host = "127.0.0.1"
port = {port}
stats = true
metrics = true
shutdown_timeout_s = 3

[upstream]
url = "{upstream}"

[auth]
mode = "none"

[limits]
max_clients = 20000
max_channels = 5000
heartbeat_s = 15
# Every bench client is the same (anonymous) identity, one address: no per-identity limits here.
subscribe_rate_per_s = 1000000
subscribe_burst = 1000000
max_clients_per_identity = 20000
max_subscriptions_per_identity = 10000000
max_channels_per_identity = 5000
# Short, so the sessions of one scenario are gone before the next one starts.
session_ttl_s = 1
grace_period_s = 1

[log]
level = "info"
format = "json"
"""


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def spawn(
    args: Sequence[str], *, log: Path, stdin: bool = False, env: dict[str, str] | None = None
) -> asyncio.subprocess.Process:
    """A child in its own process group (so it and its children can be stopped together)."""
    with log.open("ab") as err:
        return await asyncio.create_subprocess_exec(
            *args,
            env=env,
            stdin=asyncio.subprocess.PIPE if stdin else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=err,
            cwd=ROOT,
            start_new_session=True,
            limit=64 << 20,  # a load generator answers with a whole latency histogram
        )


async def stop(proc: asyncio.subprocess.Process) -> None:
    """SIGTERM the process group, then SIGKILL what is left after ``STOP_TIMEOUT_S``."""
    if proc.returncode is not None:
        return
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            await asyncio.wait_for(proc.wait(), STOP_TIMEOUT_S)
            return
        except TimeoutError:
            continue


@dataclass
class LoadgenProc:
    proc: asyncio.subprocess.Process
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    async def call(self, cmd: dict[str, Any], within_s: float = 180.0) -> dict[str, Any]:
        assert self.proc.stdin is not None
        assert self.proc.stdout is not None
        async with self.lock:
            self.proc.stdin.write(json.dumps(cmd).encode() + b"\n")
            await self.proc.stdin.drain()
            line = await asyncio.wait_for(self.proc.stdout.readline(), within_s)
        if not line:
            raise RuntimeError(f"load generator exited during {cmd['cmd']!r}")
        reply: dict[str, Any] = json.loads(line)
        if "error" in reply:
            raise RuntimeError(f"load generator: {reply['error']}")
        return reply


@dataclass
class Phase:
    """What one measured burst produced."""

    sent: int
    t_first: float
    t_last_sent: float
    deliveries: int
    expected: int
    t_last_delivery: float
    chunks: int
    hist: dict[int, int]
    cpu: dict[str, float]
    system: dict[str, float]
    wall: float
    gateway_deliveries: float

    @property
    def span(self) -> float:
        return max(self.t_last_delivery - self.t_first, 1e-9)

    @property
    def rate(self) -> float:
        return self.deliveries / self.span

    def cpu_us_per_delivery(self, name: str = "gateway") -> float:
        return self.cpu[name] * 1e6 / max(self.deliveries, 1)

    def percentile_ms(self, q: float) -> float:
        return percentile_ms([self], q)


def percentile_ms(phases: Sequence[Phase], q: float) -> float:
    """Latency quantile ``q`` (0..1) over the pooled histograms of ``phases``, in milliseconds."""
    hist: dict[int, int] = {}
    for phase in phases:
        for bucket, n in phase.hist.items():
            hist[bucket] = hist.get(bucket, 0) + n
    total = sum(hist.values())
    if not total:
        return float("nan")
    rank = q * total
    seen = 0
    for bucket in sorted(hist):
        seen += hist[bucket]
        if seen >= rank:
            return round((bucket + 0.5) * 0.1, 2)
    return round(max(hist) * 0.1, 2)


@dataclass
class Bench:
    http: aiohttp.ClientSession
    upstream: asyncio.subprocess.Process
    upstream_url: str
    gateway: asyncio.subprocess.Process
    gateway_url: str
    loadgens: list[LoadgenProc]
    workdir: Path
    clients: dict[str, list[int]] = field(default_factory=dict)
    """Per group, how many clients each load generator holds."""

    # ------------------------------------------------------------------ observation
    def pids(self) -> dict[str, int]:
        pids = {"gateway": self.gateway.pid, "upstream": self.upstream.pid}
        for i, lg in enumerate(self.loadgens):
            pids[f"loadgen{i}"] = lg.proc.pid
        return pids

    def sample(self) -> Sample:
        return Sample.take(self.pids(), time.monotonic())

    def gateway_rss_kb(self) -> int:
        return rss_kb(self.gateway.pid)

    async def stats(self) -> dict[str, Any]:
        async with self.http.get(f"{self.gateway_url}/api/watch/stats") as resp:
            data: dict[str, Any] = await resp.json()
            return data

    async def metrics(self) -> dict[str, float]:
        async with self.http.get(f"{self.gateway_url}/metrics") as resp:
            text = await resp.text()
        out: dict[str, float] = {}
        for line in text.splitlines():
            if line.startswith("watchgw_") and " " in line:
                name, _, value = line.rpartition(" ")
                with contextlib.suppress(ValueError):
                    out[name] = float(value)
        return out

    async def wait_subscriptions(self, total: int, within_s: float = 60.0, *, exact: bool = False) -> None:
        """Until the gateway lists ``total`` subscriptions (at least, or ``exact``-ly)."""
        deadline = time.monotonic() + within_s
        while time.monotonic() < deadline:
            stats = await self.stats()
            have = sum(stats["subscriptions"].values())
            if have == total or (have > total and not exact):
                return
            await asyncio.sleep(0.2)
        raise RuntimeError(f"gateway shows fewer than {total} subscriptions after {within_s} s")

    async def wait_quiet(self, within_s: float = 30.0) -> None:
        """No sessions and no channels left from a previous scenario."""
        deadline = time.monotonic() + within_s
        while time.monotonic() < deadline:
            stats = await self.stats()
            if stats["clients"] == 0 and stats["upstreams"] == 0:
                return
            await asyncio.sleep(0.25)
        raise RuntimeError(f"gateway still has sessions or channels after {within_s} s: {stats}")

    # ------------------------------------------------------------------ upstream control
    async def _post_upstream(self, route: str, body: dict[str, Any], within_s: float) -> dict[str, Any]:
        async with self.http.post(
            f"{self.upstream_url}/_bench/{route}",
            json=body,
            timeout=aiohttp.ClientTimeout(total=within_s),
        ) as resp:
            resp.raise_for_status()
            data: dict[str, Any] = await resp.json()
            return data

    async def setup_objects(self, channels: list[dict[str, str]], objects: int) -> None:
        await self._post_upstream(
            "setup",
            {"resourceType": RESOURCE_TYPE, "channels": channels, "objects": objects, "size": 1024},
            60,
        )

    # ------------------------------------------------------------------ clients
    async def connect(
        self,
        *,
        group: str,
        prefix: str,
        clients: int,
        subs: list[dict[str, str]],
        stall: bool = False,
        all_subs: bool = False,
        ready: str = "synced",
    ) -> dict[str, Any]:
        """Open ``clients`` streams split over the load generators; client i takes subs[i % len]
        (or all of them, with ``all_subs``)."""
        n = len(self.loadgens)
        bounds = [clients * k // n for k in range(n + 1)]
        replies = await asyncio.gather(
            *(
                lg.call(
                    {
                        "cmd": "connect",
                        "group": group,
                        "prefix": prefix,
                        "start": bounds[k],
                        "stop": bounds[k + 1],
                        "subs": subs,
                        "stall": stall,
                        "allSubs": all_subs,
                        "ready": ready,
                    }
                )
                for k, lg in enumerate(self.loadgens)
            )
        )
        counts = self.clients.setdefault(group, [0] * n)
        for k in range(n):
            counts[k] += bounds[k + 1] - bounds[k]
        errors = sum(r["errors"] for r in replies)
        if errors:
            first = next(r["firstError"] for r in replies if r["firstError"])
            raise RuntimeError(f"{errors} of {clients} clients failed to connect; first: {first}")
        return {"seconds": max(r["seconds"] for r in replies)}

    async def close_group(self, group: str) -> None:
        """Close one group's clients (the others stay connected)."""
        await asyncio.gather(*(lg.call({"cmd": "close", "group": group}) for lg in self.loadgens))
        self.clients.pop(group, None)

    async def burst(self, channels: list[dict[str, str]], *, objects: int, count: int) -> dict[str, Any]:
        """An unmeasured burst, as fast as possible."""
        body = {"resourceType": RESOURCE_TYPE, "channels": channels, "objects": objects, "count": count}
        return await self._post_upstream("burst", {**body, "rate": 0, "size": 1024}, 60)

    async def close_clients(self) -> None:
        await asyncio.gather(*(lg.call({"cmd": "close"}) for lg in self.loadgens))
        self.clients.clear()
        await self.wait_quiet()

    async def measure(
        self,
        *,
        channels: list[dict[str, str]],
        objects: int,
        count: int,
        rate: float,
        per_client: int,
        group: str = "fast",
        within_s: float = 90.0,
    ) -> Phase:
        """Arm the counters, run one burst upstream, wait until each client got ``per_client`` events."""
        counts = self.clients[group]
        await asyncio.gather(*(lg.call({"cmd": "arm"}) for lg in self.loadgens))
        metrics_before = await self.metrics()
        before = self.sample()
        waits = [
            asyncio.create_task(
                lg.call(
                    {"cmd": "wait", "group": group, "expect": per_client * n, "timeout": within_s, "idle": 5},
                    within_s=within_s + 30,
                )
            )
            for lg, n in zip(self.loadgens, counts, strict=True)
        ]
        try:
            burst = await self._post_upstream(
                "burst",
                {
                    "resourceType": RESOURCE_TYPE,
                    "channels": channels,
                    "objects": objects,
                    "count": count,
                    "rate": rate,
                    "size": 1024,
                },
                within_s,
            )
            # Each load generator waits for its own share; one that finishes early keeps counting.
            replies = await asyncio.gather(*waits)
        finally:
            for task in waits:
                task.cancel()
        after = self.sample()
        metrics_after = await self.metrics()
        hist: dict[int, int] = {}
        for reply in replies:
            for bucket, n in reply["hist"]:
                hist[bucket] = hist.get(bucket, 0) + n
        return Phase(
            sent=burst["sent"],
            t_first=burst["tFirst"],
            t_last_sent=burst["tLast"],
            deliveries=sum(r["deliveries"] for r in replies),
            expected=per_client * sum(counts),
            t_last_delivery=max(r["tLast"] for r in replies),
            chunks=sum(r["chunks"] for r in replies),
            hist=hist,
            cpu=after.cpu_since(before),
            system=after.system_since(before),
            wall=after.wall - before.wall,
            gateway_deliveries=metrics_after.get("watchgw_deliveries_total", 0.0)
            - metrics_before.get("watchgw_deliveries_total", 0.0),
        )


async def _read_port(proc: asyncio.subprocess.Process) -> int:
    assert proc.stdout is not None
    line = await asyncio.wait_for(proc.stdout.readline(), START_TIMEOUT_S)
    if not line:
        raise RuntimeError("the upstream simulator exited before listening")
    port: int = json.loads(line)["port"]
    return port


async def _wait_healthy(http: aiohttp.ClientSession, url: str, proc: asyncio.subprocess.Process) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.returncode is not None:
            raise RuntimeError(f"the gateway exited with {proc.returncode}")
        with contextlib.suppress(aiohttp.ClientError):
            async with http.get(f"{url}/readyz") as resp:
                if resp.status == 200:
                    return
        await asyncio.sleep(0.1)
    raise RuntimeError("the gateway did not become ready")


@contextlib.asynccontextmanager
async def running(
    workdir: Path, *, loadgens: int = 1, gateway_path: Path | None = None
) -> AsyncIterator[Bench]:
    """Start upstream, gateway and load generators; stop all of them however the block ends.

    ``gateway_path``: a directory holding another ``watchgw`` package (a candidate change) that the
    gateway process imports instead of this tree's (prepended to its ``PYTHONPATH``).
    """
    procs: list[asyncio.subprocess.Process] = []
    http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30))
    try:
        upstream = await spawn([PYTHON, "-m", "bench.upstream"], log=workdir / "upstream.log")
        procs.append(upstream)
        upstream_url = f"http://127.0.0.1:{await _read_port(upstream)}"
        port = free_port()
        config = workdir / "gateway.toml"
        config.write_text(GATEWAY_TOML.format(port=port, upstream=upstream_url))
        env = None
        if gateway_path is not None:
            paths = [str(gateway_path), os.environ.get("PYTHONPATH", "")]
            env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in paths if p)}
        gateway = await spawn(
            [WATCHGW, "serve", "--config", str(config)], log=workdir / "gateway.log", env=env
        )
        procs.append(gateway)
        gateway_url = f"http://127.0.0.1:{port}"
        await _wait_healthy(http, gateway_url, gateway)
        lgs = []
        for i in range(loadgens):
            proc = await spawn(
                [PYTHON, "-m", "bench.loadgen", "--port", str(port)],
                log=workdir / f"loadgen{i}.log",
                stdin=True,
            )
            procs.append(proc)
            lgs.append(LoadgenProc(proc))
        yield Bench(
            http=http,
            upstream=upstream,
            upstream_url=upstream_url,
            gateway=gateway,
            gateway_url=gateway_url,
            loadgens=lgs,
            workdir=workdir,
        )
    finally:
        # Load generators first (they hold the gateway's clients), then the gateway, then upstream.
        for proc in reversed(procs):
            await stop(proc)
        await http.close()
