"""Replicas behind nginx, as an operator runs them: the simulator, N ``watchgw serve`` processes
and a real nginx with the shipped configuration (deploy/nginx/watchgw.conf: TLS, HTTP/2, routing by
``hash $arg_cid consistent``), all on loopback ports.

Used by ``tests/e2e/test_cluster.py`` (failover under churn), by ``make cluster``
(``python -m tests.cluster``: the simulator in demo mode, the live page through nginx, until
Ctrl-C) and by benchmarks::

    async with running_cluster(workdir, replicas=3) as cluster:
        async with cluster.http_session() as http:
            client = WatchClient(cluster.url, session=http, auto_reconnect=True)
            ...
        await cluster.kill(0)      # SIGKILL
        await cluster.start(0)     # again, on the same port
        await cluster.restart(1)   # SIGTERM (clients get "reconnect"), wait for the exit, start

Every process is a child of this one, is waited for by readiness (its ``listening`` log line, or
an answer through nginx), and is stopped on exit, also when the block fails.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import signal
import ssl
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import aiohttp

from tests.nginx_config import find_binary, render_nginx, self_signed_cert
from tests.processes import free_port
from tests.processes import stop as stop_process

ROOT = Path(__file__).resolve().parent.parent
NGINX_SNIPPET = ROOT / "deploy" / "nginx" / "watchgw.conf"

#: Limits that make failover quick on a test machine; the keys are ``[limits]`` keys.
FAST_LIMITS: dict[str, Any] = {
    "retry_ms": 200,  # how long a client waits before it comes back (the default is 2 s)
    "session_ttl_s": 3,  # sessions left behind on another replica go soon
    "grace_period_s": 2,
    # Every client comes from 127.0.0.1 through nginx: as one address, they share the per-address
    # subscribe rate (auth is off), which a few dozen clients re-subscribing at once would exceed.
    "subscribe_rate_per_s": 100000,
    "subscribe_burst": 100000,
}


API_LOCATION = "    location /api/watch/ {"
LIVE_PAGE_LOCATIONS = """\
    # Added for the cluster only: the shipped snippet publishes the API alone, since a console
    # serves its own pages. Here the page is the gateway's live page, from any replica, at the
    # same origin as the API (no cid: nginx picks a replica round-robin).
    location = / {
        proxy_pass http://watchgw;
    }
    location = /watch-client.js {
        proxy_pass http://watchgw;
    }
"""


def with_live_page(nginx_conf: str) -> str:
    """The rendered configuration plus the live page's locations (see LIVE_PAGE_LOCATIONS)."""
    if nginx_conf.count(API_LOCATION) != 1:
        raise ValueError(f"the nginx snippet must have exactly one {API_LOCATION.strip()!r}")
    return nginx_conf.replace(API_LOCATION, LIVE_PAGE_LOCATIONS + API_LOCATION)


class ProcessFailed(RuntimeError):
    """A child process exited, or did not become ready in time; the message has its last lines."""


class Child:
    """A child process whose stderr is drained into a log file (a pipe left unread would block
    it once full) and whose JSON log lines can be waited for."""

    def __init__(self, name: str, proc: asyncio.subprocess.Process, log_path: Path) -> None:
        self.name = name
        self.proc = proc
        self.log_path = log_path
        self.tail: collections.deque[str] = collections.deque(maxlen=60)
        self._waiters: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._drain = asyncio.create_task(self._read(), name=f"log {name}")

    @classmethod
    async def spawn(cls, name: str, args: list[str], log_path: Path) -> Child:
        proc = await asyncio.create_subprocess_exec(
            *args,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        return cls(name, proc, log_path)

    async def _read(self) -> None:
        assert self.proc.stderr is not None
        with self.log_path.open("ab") as log:
            while line := await self.proc.stderr.readline():
                log.write(line)
                log.flush()
                text = line.decode(errors="replace").rstrip()
                self.tail.append(text)
                if text.startswith("{"):
                    with contextlib.suppress(ValueError):
                        record = json.loads(text)
                        waiter = self._waiters.pop(str(record.get("event")), None)
                        if waiter is not None and not waiter.done():
                            waiter.set_result(record)
        for waiter in self._waiters.values():
            if not waiter.done():
                waiter.set_exception(self.failed("exited"))

    def failed(self, what: str) -> ProcessFailed:
        lines = "\n".join(self.tail)
        code = self.proc.returncode
        return ProcessFailed(f"{self.name} {what} (exit code {code}); its last lines:\n{lines}")

    async def log_event(self, event: str, *, timeout: float = 20.0) -> dict[str, Any]:
        """The next JSON log line whose ``event`` is ``event`` (register before causing it)."""
        waiter = self._waiters.setdefault(event, asyncio.get_running_loop().create_future())
        if self._drain.done():
            raise self.failed(f"exited before {event}")
        try:
            async with asyncio.timeout(timeout):
                return await waiter
        except TimeoutError:
            raise self.failed(f"did not log {event} within {timeout} s") from None

    @property
    def running(self) -> bool:
        return self.proc.returncode is None

    async def stop(self, sig: signal.Signals = signal.SIGTERM, *, timeout: float = 10.0) -> int:
        """Send ``sig`` and wait for the exit; SIGKILL when it takes longer than ``timeout``."""
        code = await stop_process(self.proc, sig, timeout=timeout)
        with contextlib.suppress(asyncio.CancelledError):
            await self._drain
        return code


class Replica:
    def __init__(self, index: int, port: int, config_path: Path) -> None:
        self.index = index
        self.port = port
        self.config_path = config_path
        self.child: Child | None = None
        self.name = ""
        """What the replica calls itself (``server.replica``; default ``<hostname>:<port>``)."""
        self.starts = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


class Cluster:
    """The running processes; see :func:`running_cluster`."""

    def __init__(self, workdir: Path, *, replicas: int, demo: bool, limits: Mapping[str, Any]) -> None:
        self.workdir = workdir
        self.demo = demo
        self.limits = {**FAST_LIMITS, **limits}
        self.sim: Child | None = None
        self.sim_url = ""
        self.nginx: Child | None = None
        self.nginx_port = 0
        self.replicas = [Replica(i, free_port(), workdir / f"replica-{i + 1}.toml") for i in range(replicas)]
        self.cert, self.key = self_signed_cert(workdir / "tls")
        self.ssl_context = ssl.create_default_context(cafile=str(self.cert))
        """Trusts the cluster's self-signed certificate (and nothing else)."""
        self._http: aiohttp.ClientSession | None = None

    @property
    def url(self) -> str:
        """The load balancer: what clients and browsers use."""
        return f"https://127.0.0.1:{self.nginx_port}"

    def http_session(self, **connector_args: Any) -> aiohttp.ClientSession:
        """An aiohttp session that trusts the cluster's certificate, without a connection limit
        (every client's stream holds a connection of its own). The caller closes it."""
        connector = aiohttp.TCPConnector(ssl=self.ssl_context, limit=0, **connector_args)
        return aiohttp.ClientSession(connector=connector)

    # ------------------------------------------------------------------ processes
    async def start_sim(self) -> None:
        args = [sys.executable, "-m", "watchgw", "sim", "--host", "127.0.0.1", "--port", "0"]
        if self.demo:
            args.append("--demo")
        self.sim = await Child.spawn("simulator", args, self.workdir / "sim.log")
        record = await self.sim.log_event("sim.listening")
        self.sim_url = str(record["url"])

    def _replica_config(self, replica: Replica) -> str:
        limits = "".join(f"{key} = {json.dumps(value)}\n" for key, value in self.limits.items())
        return (
            "[server]\n"
            'host = "127.0.0.1"\n'
            f"port = {replica.port}\n"
            "stats = true\n"
            "live_page = true\n"
            "shutdown_timeout_s = 2\n"
            # Per-address limits count the client's address that nginx reports, not nginx's.
            'trusted_proxies = ["127.0.0.1"]\n'
            "[upstream]\n"
            f'url = "{self.sim_url}"\n'
            "backoff_initial_s = 0.05\n"
            "backoff_max_s = 0.5\n"
            "[limits]\n"
            f"{limits}"
            "[log]\n"
            'format = "json"\n'
        )

    async def start(self, index: int) -> Replica:
        """Start replica ``index`` (again) on its port; returns once it answers."""
        replica = self.replicas[index]
        if replica.child is not None and replica.child.running:
            raise RuntimeError(f"replica {index} is running")
        replica.config_path.write_text(self._replica_config(replica))
        args = [sys.executable, "-m", "watchgw", "serve", "--config", str(replica.config_path)]
        args += ["--port", str(replica.port)]
        replica.starts += 1
        log_path = self.workdir / f"replica-{index + 1}.log"
        replica.child = child = await Child.spawn(f"replica {index + 1}", args, log_path)
        await child.log_event("server.listening")
        replica.name = str((await self.stats(index))["replica"])
        return replica

    async def kill(self, index: int) -> None:
        """SIGKILL: no drain, no ``reconnect``; clients see their streams break."""
        child = self.replicas[index].child
        if child is not None:
            await child.stop(signal.SIGKILL)

    async def stop_replica(self, index: int) -> int:
        """SIGTERM: the replica drains (clients get ``reconnect``) and exits; its exit code."""
        child = self.replicas[index].child
        return 0 if child is None else await child.stop(signal.SIGTERM, timeout=15)

    async def restart(self, index: int) -> Replica:
        """A rolling restart's step: SIGTERM, wait for the exit (it must be a clean one), start."""
        code = await self.stop_replica(index)
        if code != 0:
            raise ProcessFailed(f"replica {index + 1} exited with {code} on SIGTERM")
        return await self.start(index)

    async def start_nginx(self, port: int = 0) -> None:
        nginx = find_binary("nginx")
        if nginx is None:
            raise FileNotFoundError("nginx is not installed")
        self.nginx_port = port or free_port()
        prefix = self.workdir / "nginx"
        prefix.mkdir(exist_ok=True)
        conf = prefix / "nginx.conf"
        rendered = render_nginx(
            NGINX_SNIPPET.read_text(),
            listen_port=self.nginx_port,
            replicas=[r.port for r in self.replicas],
            cert=self.cert,
            key=self.key,
            prefix=prefix,
        )
        conf.write_text(with_live_page(rendered))
        args = [nginx, "-p", str(prefix), "-e", str(prefix / "error.log"), "-c", str(conf)]
        self.nginx = await Child.spawn("nginx", args, self.workdir / "nginx.log")
        await self._wait_for_nginx()

    async def _wait_for_nginx(self, timeout: float = 20.0) -> None:
        """nginx logs no line when it listens: ask it, through to a replica, until it answers
        (``stats``: the one path under the published API that a plain GET gets a 200 from)."""
        assert self.nginx is not None
        deadline = time.monotonic() + timeout
        async with self.http_session() as http:
            while True:
                if not self.nginx.running:
                    errors = (self.workdir / "nginx" / "error.log").read_text(errors="replace")
                    raise ProcessFailed(f"nginx exited with {self.nginx.proc.returncode}:\n{errors}")
                with contextlib.suppress(aiohttp.ClientError, OSError):
                    async with http.get(f"{self.url}/api/watch/stats") as response:
                        if response.status == 200:
                            return
                if time.monotonic() > deadline:
                    raise self.nginx.failed(f"did not answer within {timeout} s")
                await asyncio.sleep(0.05)  # readiness polling: nothing else tells when it listens

    async def stop_all(self) -> None:
        """nginx first (no new requests), then the replicas (they drain), then the simulator."""
        if self._http is not None:
            await self._http.close()
            self._http = None
        if self.nginx is not None:
            await self.nginx.stop(signal.SIGTERM)
        await asyncio.gather(
            *(r.child.stop(signal.SIGTERM, timeout=15) for r in self.replicas if r.child is not None)
        )
        if self.sim is not None:
            await self.sim.stop(signal.SIGTERM)

    # ------------------------------------------------------------------ observations
    @property
    def _direct(self) -> aiohttp.ClientSession:
        if self._http is None:
            self._http = aiohttp.ClientSession()
        return self._http

    async def stats(self, index: int) -> dict[str, Any]:
        """The replica's ``GET /api/watch/stats``, asked directly (not through nginx)."""
        url = f"{self.replicas[index].url}/api/watch/stats"
        async with self._direct.get(url) as response:
            response.raise_for_status()
            stats: dict[str, Any] = await response.json()
            return stats

    async def sim_stats(self) -> dict[str, Any]:
        """The simulator's counters: open watches now and at most (``/sim/stats``)."""
        async with self._direct.get(f"{self.sim_url}/sim/stats") as response:
            response.raise_for_status()
            stats: dict[str, Any] = await response.json()
            return stats

    def live(self) -> list[Replica]:
        return [r for r in self.replicas if r.child is not None and r.child.running]


@contextlib.asynccontextmanager
async def running_cluster(
    workdir: Path,
    *,
    replicas: int = 3,
    demo: bool = False,
    nginx_port: int = 0,
    limits: Mapping[str, Any] | None = None,
) -> AsyncIterator[Cluster]:
    """Start the simulator, ``replicas`` replicas and nginx; stop them all on exit."""
    cluster = Cluster(workdir, replicas=replicas, demo=demo, limits=limits or {})
    try:
        await cluster.start_sim()
        async with asyncio.TaskGroup() as starting:  # one failing cancels the others' waits
            for index in range(replicas):
                starting.create_task(cluster.start(index))
        await cluster.start_nginx(nginx_port)
        yield cluster
    finally:
        await cluster.stop_all()


async def _main(args: argparse.Namespace) -> None:
    workdir = Path(tempfile.mkdtemp(prefix="watchgw-cluster-"))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with running_cluster(
        workdir, replicas=args.replicas, demo=True, nginx_port=args.port, limits={"retry_ms": 1000}
    ) as cluster:
        lines = [
            "",
            f"watchgw cluster: simulator (demo), {len(cluster.replicas)} replicas, nginx",
            f"  live page:  {cluster.url}/   (self-signed certificate: accept it in the browser)",
        ]
        lines += [f"  replica {r.index + 1}:  {r.url}/   ({r.name})" for r in cluster.replicas]
        pids = ", ".join(f"replica {r.index + 1}: pid {r.child.proc.pid}" for r in cluster.live() if r.child)
        lines += [
            f"  stats:      {cluster.replicas[0].url}/api/watch/stats (one per replica)",
            f"  simulator:  {cluster.sim_url}",
            f"  logs:       {workdir}",
            "  The page names the replica serving it: stop that one (kill <pid>) and watch it move.",
            f"  {pids}",
            "  Ctrl-C stops everything.",
            "",
        ]
        print("\n".join(lines), flush=True)
        await stop.wait()
    print(f"stopped; logs are in {workdir}", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.cluster",
        description="The simulator (demo), N watchgw replicas and nginx on loopback, until Ctrl-C.",
    )
    parser.add_argument("--replicas", type=int, default=3)
    parser.add_argument("--port", type=int, default=0, help="nginx's HTTPS port (default: a free one)")
    args = parser.parse_args(argv)
    if find_binary("nginx") is None:
        print("nginx is not installed (Debian: apt-get install nginx)", file=sys.stderr)
        return 1
    asyncio.run(_main(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
