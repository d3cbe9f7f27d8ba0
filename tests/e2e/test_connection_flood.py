"""A connection flood against `watchgw serve` with few file descriptors: accept() fails with
EMFILE, which asyncio reports once per failed accept (up to ``backlog`` per loop iteration, each
with a traceback). The gateway folds them into a few counted lines and serves again once the
connections are gone."""

from __future__ import annotations

import asyncio
import json
import resource
import signal
from pathlib import Path
from typing import Any

import aiohttp

from tests.processes import spawn, stop

FD_LIMIT = 32  # an idle `watchgw serve` holds about 10
FLOOD = 80


def _few_file_descriptors() -> None:  # runs in the child between fork and exec
    resource.setrlimit(resource.RLIMIT_NOFILE, (FD_LIMIT, FD_LIMIT))


async def _collect(stream: asyncio.StreamReader, lines: list[bytes], seen: dict[str, asyncio.Event]) -> None:
    """Every stderr line (so a noisy process never blocks on a full pipe); flags events seen."""
    while line := await stream.readline():
        lines.append(line)
        if line.startswith(b"{"):
            event = json.loads(line).get("event", "")
            if event in seen:
                seen[event].set()


async def test_accept_errors_are_logged_a_few_times_with_counts_and_service_resumes(tmp_path: Path) -> None:
    config = tmp_path / "watchgw.toml"
    config.write_text(
        '[server]\nhost = "127.0.0.1"\nport = 0\nheader_timeout_s = 60\nbacklog = 1024\n'
        '[upstream]\nurl = "http://127.0.0.1:1"\n[log]\nformat = "json"\n'
    )
    # preexec_fn: a setrlimit only
    proc = await spawn("serve", "--config", str(config), preexec_fn=_few_file_descriptors)
    assert proc.stderr is not None
    lines: list[bytes] = []
    seen = {name: asyncio.Event() for name in ("server.listening", "server.accept_failed")}
    collector = asyncio.create_task(_collect(proc.stderr, lines, seen))
    writers: list[asyncio.StreamWriter] = []
    try:
        async with asyncio.timeout(20):
            await seen["server.listening"].wait()
        url = next(json.loads(x)["url"] for x in lines if b'"server.listening"' in x)
        host, port = url.removeprefix("http://").split(":")
        for _ in range(FLOOD):  # the kernel queues them all (backlog 1024); the gateway runs out
            _, writer = await asyncio.open_connection(host, int(port))
            writers.append(writer)
        async with asyncio.timeout(20):
            await seen["server.accept_failed"].wait()
        for writer in writers:
            writer.close()
        writers.clear()
        # asyncio retries accepting after 1 s; then the gateway answers again.
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15)) as http,
            http.get(f"{url}/healthz") as response,
        ):
            assert response.status == 200
        proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(20):
            assert await proc.wait() == 0
            await collector
    finally:
        for writer in writers:
            writer.close()
        await stop(proc)
        collector.cancel()
        await asyncio.gather(collector, return_exceptions=True)

    records: list[dict[str, Any]] = [json.loads(x) for x in lines if x.startswith(b"{")]
    failures = [r for r in records if r["event"] == "server.accept_failed"]
    # One line at once, the rest folded per 10 s interval (and flushed at the stop).
    assert 1 <= len(failures) <= 3, failures
    assert all(r["error"] in ("EMFILE", "ENFILE") for r in failures)
    assert sum(r["count"] for r in failures) > len(failures)  # many failures, few lines
    text = b"".join(lines)
    assert b"out of system resource" not in text
    assert b"Traceback" not in text, text.decode()[-6000:]
