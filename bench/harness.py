"""The processes of a benchmark run (upstream, gateway, load generators) and how to drive them.

:func:`running` starts one gateway that the load generators reach directly; :func:`behind_nginx`
adds, on the same upstream, K more gateways behind nginx (the shipped deploy/nginx/watchgw.conf)
with load generators of their own that reach them through nginx."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import resource
import signal
import sys
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from bench.procstat import Sample, children, rss_kb
from tests.nginx_config import find_binary, render_nginx
from tests.processes import free_port

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
WATCHGW = str(Path(PYTHON).with_name("watchgw"))
RESOURCE_TYPE = "api/v1/configmaps"
START_TIMEOUT_S = 20.0
STOP_TIMEOUT_S = 8.0
NGINX_SNIPPET = ROOT / "deploy" / "nginx" / "watchgw.conf"
#: nginx's connections (one worker): every client stream is two (client side, replica side),
#: plus the subscribe connections and the kept-alive ones to the replicas. 16,384 covers 5,000
#: streams with room to spare for a storm's reconnects (a stream whose old connection is not yet
#: closed while its new one opens).
NGINX_WORKER_CONNECTIONS = 16384
#: Files an nginx worker needs beyond its connections: logs, listeners, temporary files.
NGINX_SPARE_FILES = 512

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
    return hist_percentile_ms(hist, q)


def hist_percentile_ms(hist: dict[int, int], q: float) -> float:
    """Latency quantile ``q`` (0..1) of a load generator histogram (0.1 ms buckets), in ms."""
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


def with_roles(per_process: dict[str, float]) -> dict[str, float]:
    """Per-process CPU seconds plus the sum of each role that has several processes:
    ``gateway`` of ``gateway-0``, ``gateway-1``, ...; ``nginx`` of its master and workers."""
    out = dict(per_process)
    for role in ("gateway", "nginx"):
        parts = [v for k, v in per_process.items() if k.startswith(f"{role}-")]
        if parts:
            out[role] = sum(parts)
    return out


@dataclass
class Bench:
    http: aiohttp.ClientSession
    upstream: asyncio.subprocess.Process
    upstream_url: str
    gateways: list[asyncio.subprocess.Process]
    gateway_urls: list[str]
    """Each gateway's own address (stats and metrics are asked there, never through nginx)."""
    loadgens: list[LoadgenProc]
    workdir: Path
    nginx: asyncio.subprocess.Process | None = None
    nginx_workers: list[int] = field(default_factory=list)
    clients: dict[str, list[int]] = field(default_factory=dict)
    """Per group, how many clients each load generator holds."""

    @property
    def gateway(self) -> asyncio.subprocess.Process:
        return self.gateways[0]

    @property
    def gateway_url(self) -> str:
        return self.gateway_urls[0]

    def live_gateways(self) -> list[int]:
        """Indexes of the gateways still running (a scenario may have killed one)."""
        return [i for i, proc in enumerate(self.gateways) if proc.returncode is None]

    # ------------------------------------------------------------------ observation
    def pids(self) -> dict[str, int]:
        pids = {"upstream": self.upstream.pid}
        if len(self.gateways) == 1:
            pids["gateway"] = self.gateway.pid
        else:
            pids.update({f"gateway-{i}": self.gateways[i].pid for i in self.live_gateways()})
        if self.nginx is not None:
            # The master only supervises; the worker relays every byte (its CPU is not the master's).
            pids["nginx-master"] = self.nginx.pid
            pids.update({f"nginx-worker{i}": pid for i, pid in enumerate(self.nginx_workers)})
        for i, lg in enumerate(self.loadgens):
            pids[f"loadgen{i}"] = lg.proc.pid
        return pids

    def sample(self) -> Sample:
        return Sample.take(self.pids(), time.monotonic())

    def gateway_rss_kb(self) -> int:
        return rss_kb(self.gateway.pid)

    async def stats(self, index: int = 0) -> dict[str, Any]:
        async with self.http.get(f"{self.gateway_urls[index]}/api/watch/stats") as resp:
            data: dict[str, Any] = await resp.json()
            return data

    async def stats_all(self) -> dict[int, dict[str, Any]]:
        """Each running gateway's stats, by index."""
        live = self.live_gateways()
        return dict(zip(live, await asyncio.gather(*(self.stats(i) for i in live)), strict=True))

    async def gateway_metrics(self, index: int) -> dict[str, float]:
        async with self.http.get(f"{self.gateway_urls[index]}/metrics") as resp:
            text = await resp.text()
        out: dict[str, float] = {}
        for line in text.splitlines():
            if line.startswith("watchgw_") and " " in line:
                name, _, value = line.rpartition(" ")
                with contextlib.suppress(ValueError):
                    out[name] = float(value)
        return out

    async def metrics(self) -> dict[str, float]:
        """The running gateways' metrics, added up."""
        out: dict[str, float] = {}
        for one in await asyncio.gather(*(self.gateway_metrics(i) for i in self.live_gateways())):
            for name, value in one.items():
                out[name] = out.get(name, 0.0) + value
        return out

    async def wait_subscriptions(self, total: int, within_s: float = 60.0, *, exact: bool = False) -> None:
        """Until the gateways list ``total`` subscriptions (at least, or ``exact``-ly)."""
        deadline = time.monotonic() + within_s
        while time.monotonic() < deadline:
            have = sum(sum(s["subscriptions"].values()) for s in (await self.stats_all()).values())
            if have == total or (have > total and not exact):
                return
            await asyncio.sleep(0.2)
        raise RuntimeError(f"gateways show fewer than {total} subscriptions after {within_s} s")

    async def wait_quiet(self, within_s: float = 30.0) -> None:
        """No sessions and no channels left from a previous scenario."""
        deadline = time.monotonic() + within_s
        while time.monotonic() < deadline:
            stats = await self.stats_all()
            if all(s["clients"] == 0 and s["upstreams"] == 0 for s in stats.values()):
                return
            await asyncio.sleep(0.25)
        raise RuntimeError(f"gateways still have sessions or channels after {within_s} s: {stats}")

    async def kill_gateway(self, index: int) -> None:
        """SIGKILL: no drain, no ``reconnect`` event; its streams just end."""
        proc = self.gateways[index]
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        await asyncio.wait_for(proc.wait(), STOP_TIMEOUT_S)

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

    async def setup_objects(self, channels: list[dict[str, str]], objects: int, *, size: int = 1024) -> None:
        await self._post_upstream(
            "setup",
            {"resourceType": RESOURCE_TYPE, "channels": channels, "objects": objects, "size": size},
            60,
        )

    async def live_events(
        self, channels: list[dict[str, str]], *, objects: int, rate: float, size: int, until: float
    ) -> int:
        """Updates at ``rate`` per second until the monotonic time ``until`` (or cancelled), in
        bursts of 30 s (the upstream bounds one burst); the events sent."""
        sent = 0
        while (left := until - time.monotonic()) > 0.5:
            seconds = min(left, 30.0)
            body = {
                "resourceType": RESOURCE_TYPE,
                "channels": channels,
                "objects": objects,
                "count": max(1, int(rate * seconds)),
                "rate": rate,
                "size": size,
            }
            sent += int((await self._post_upstream("burst", body, seconds + 30))["sent"])
        return sent

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
        by_replica: bool = False,
        reconnect_into: str | None = None,
        within_s: float = 180.0,
    ) -> dict[str, Any]:
        """Open ``clients`` streams split over the load generators; client i takes subs[i % len]
        (or all of them, with ``all_subs``). ``by_replica`` and ``reconnect_into``: see
        bench/loadgen.py (per-replica groups; reconnecting when a stream ends)."""
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
                        "byReplica": by_replica,
                        "reconnectInto": reconnect_into,
                    },
                    within_s=within_s,
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

    async def arm(self) -> None:
        """Reset every group's counters in every load generator."""
        await asyncio.gather(*(lg.call({"cmd": "arm"}) for lg in self.loadgens))

    async def read_group(self, group: str) -> dict[str, Any]:
        """A group's counters now, over the load generators: deliveries, bytes, open streams,
        and its latency histogram (``hist``: bucket -> count)."""
        replies = await asyncio.gather(
            *(lg.call({"cmd": "wait", "group": group, "expect": 0}) for lg in self.loadgens)
        )
        hist: dict[int, int] = {}
        for reply in replies:
            for bucket, n in reply["hist"]:
                hist[bucket] = hist.get(bucket, 0) + n
        return {
            "deliveries": sum(r["deliveries"] for r in replies),
            "bytes": sum(r["bytes"] for r in replies),
            "open": sum(r["open"] for r in replies),
            "hist": hist,
        }

    async def reconnects(self, group: str, *, times: bool = False) -> dict[str, Any]:
        """How the streams reconnecting into ``group`` fare, over the load generators."""
        replies = await asyncio.gather(
            *(lg.call({"cmd": "reconnects", "group": group, "times": times}) for lg in self.loadgens)
        )
        out: dict[str, Any] = {
            key: sum(r[key] for r in replies) for key in ("lost", "ready", "failed", "attempts")
        }
        out["firstError"] = next((r["firstError"] for r in replies if r["firstError"]), None)
        if times:
            for key in ("tLost", "tConnected", "tReady", "subscribeS"):
                out[key] = sorted(t for r in replies for t in r[key])
        return out

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
        await self.arm()
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
            cpu=with_roles(after.cpu_since(before)),
            system=with_roles(after.system_since(before)),
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


async def _wait_healthy(
    http: aiohttp.ClientSession,
    url: str,
    proc: asyncio.subprocess.Process,
    *,
    what: str = "the gateway",
    path: str = "/readyz",
    exited: Callable[[], str] = lambda: "",
) -> None:
    """Until ``url + path`` answers 200 (readiness polling: the processes announce nothing)."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.returncode is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}{exited()}")
        with contextlib.suppress(aiohttp.ClientError):
            async with http.get(f"{url}{path}") as resp:
                if resp.status == 200:
                    return
        await asyncio.sleep(0.1)
    raise RuntimeError(f"{what} did not become ready")


def _sub_one(pattern: str, new: str | Callable[[re.Match[str]], str], text: str, what: str) -> str:
    """``re.sub`` of exactly one match; anything else means render_nginx's output changed."""
    out, n = re.subn(pattern, new, text, flags=re.MULTILINE)
    if n != 1:
        raise ValueError(f"bench nginx.conf: expected exactly one {what}, found {n}")
    return out


def nginx_conf(*, listen_port: int, replicas: Sequence[int], prefix: Path) -> str:
    """deploy/nginx/watchgw.conf rendered by tests.nginx_config.render_nginx, then made to listen
    in plain HTTP/1.1 with room for thousands of streams.

    TLS is left out: the load generator speaks plain HTTP/1.1, and the figures are meant to
    measure the gateways and nginx's proxying, not TLS (which a real deployment adds on top, on
    the same cores). Everything else (the hash on ``$arg_cid``, keepalive, unbuffered proxying,
    ``max_fails``, ``proxy_next_upstream``) is the shipped snippet's."""
    nofile = NGINX_WORKER_CONNECTIONS + NGINX_SPARE_FILES
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < nofile:
        # nginx inherits this process's hard limit and cannot raise it (without CAP_SYS_RESOURCE).
        raise RuntimeError(f"RLIMIT_NOFILE hard limit {hard} < {nofile}: nginx cannot hold the streams")
    text = render_nginx(
        NGINX_SNIPPET.read_text(),
        listen_port=listen_port,
        replicas=replicas,
        cert="unused-cert.pem",  # removed below, with TLS
        key="unused-key.pem",
        prefix=prefix,
    )
    text = _sub_one(r"^([ \t]*listen[ \t]+\S+)[ \t]+ssl[ \t]+http2[ \t]*;", r"\1;", text, "listen line")
    text = _sub_one(r"^[ \t]*ssl_certificate[ \t]+\S+;\n", "", text, "ssl_certificate line")
    text = _sub_one(r"^[ \t]*ssl_certificate_key[ \t]+\S+;\n", "", text, "ssl_certificate_key line")
    text = _sub_one(
        r"worker_connections[ \t]+\d+;",
        f"worker_connections {NGINX_WORKER_CONNECTIONS};",
        text,
        "worker_connections",
    )
    # The worker raises its own file limit (up to the inherited hard limit checked above).
    return _sub_one(
        r"^worker_processes[ \t]+\d+;\n",
        lambda m: f"{m.group(0)}worker_rlimit_nofile {nofile};\n",
        text,
        "worker_processes line",
    )


async def _spawn_loadgens(
    workdir: Path, port: int, count: int, procs: list[asyncio.subprocess.Process], *, relayed: bool = False
) -> list[LoadgenProc]:
    lgs = []
    for i in range(count):
        proc = await spawn(
            [PYTHON, "-m", "bench.loadgen", "--port", str(port), *(["--relayed"] if relayed else [])],
            log=workdir / f"loadgen{i}.log",
            stdin=True,
        )
        procs.append(proc)  # the caller stops it, however the start ends
        lgs.append(LoadgenProc(proc))
    return lgs


@contextlib.asynccontextmanager
async def behind_nginx(bench: Bench, *, replicas: int, name: str) -> AsyncIterator[Bench]:
    """``replicas`` more gateways (``watchgw serve --config <toml> --port P``, one configuration
    for all, as the watchgw@.service template runs them) on ``bench``'s upstream, nginx in front
    of them (:func:`nginx_conf`), and as many load generators as ``bench`` has, reaching them
    through nginx. All of them are stopped however the block ends; ``bench``'s own processes
    are left as they are (idle meanwhile)."""
    nginx_bin = find_binary("nginx")
    if nginx_bin is None:
        raise RuntimeError("nginx is not installed (Debian: apt-get install nginx-light)")
    workdir = bench.workdir / name
    workdir.mkdir(parents=True, exist_ok=True)
    procs: list[asyncio.subprocess.Process] = []
    try:
        ports = [free_port() for _ in range(replicas)]
        config = workdir / "gateway.toml"
        config.write_text(GATEWAY_TOML.format(port=ports[0], upstream=bench.upstream_url))
        gateways = []
        for i, port in enumerate(ports):
            proc = await spawn(
                [WATCHGW, "serve", "--config", str(config), "--port", str(port)],
                log=workdir / f"gateway{i}.log",
            )
            procs.append(proc)
            gateways.append(proc)
        urls = [f"http://127.0.0.1:{port}" for port in ports]
        for proc, url in zip(gateways, urls, strict=True):
            await _wait_healthy(bench.http, url, proc)
        listen = free_port()
        prefix = workdir / "nginx"
        prefix.mkdir(exist_ok=True)
        conf = prefix / "nginx.conf"
        conf.write_text(nginx_conf(listen_port=listen, replicas=ports, prefix=prefix))
        error_log = prefix / "error.log"
        nginx = await spawn(
            [nginx_bin, "-p", str(prefix), "-e", str(error_log), "-c", str(conf)],
            log=workdir / "nginx.log",
        )
        procs.append(nginx)
        # Through nginx to a replica: the one path under the published API a plain GET gets 200 from.
        await _wait_healthy(
            bench.http,
            f"http://127.0.0.1:{listen}",
            nginx,
            what="nginx",
            path="/api/watch/stats",
            exited=lambda: ": " + error_log.read_text(errors="replace")[-2000:] if error_log.exists() else "",
        )
        workers = children(nginx.pid)
        if not workers:
            raise RuntimeError("nginx runs without a worker process")
        lgs = await _spawn_loadgens(workdir, listen, len(bench.loadgens), procs, relayed=True)
        yield Bench(
            http=bench.http,
            upstream=bench.upstream,
            upstream_url=bench.upstream_url,
            gateways=gateways,
            gateway_urls=urls,
            loadgens=lgs,
            workdir=workdir,
            nginx=nginx,
            nginx_workers=workers,
        )
    finally:
        # Load generators first (they hold the clients), then nginx, then the gateways.
        for proc in reversed(procs):
            await stop(proc)


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
        lgs = await _spawn_loadgens(workdir, port, loadgens, procs)
        yield Bench(
            http=http,
            upstream=upstream,
            upstream_url=upstream_url,
            gateways=[gateway],
            gateway_urls=[gateway_url],
            loadgens=lgs,
            workdir=workdir,
        )
    finally:
        # Load generators first (they hold the gateway's clients), then the gateway, then upstream.
        for proc in reversed(procs):
            await stop(proc)
        await http.close()
