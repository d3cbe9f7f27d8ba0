"""``python -m watchgw ...`` as a child process of a test: started with its JSON log lines on a
pipe, read event by event, and stopped however the test ends.

``running_watchgw(*args, **options)``
    An async context manager: :func:`spawn`, then :func:`stop` on exit (also when the block fails).

``spawn(*args, **options) -> Process``
    ``python -m watchgw ARGS``: stdout to /dev/null, stderr piped (its JSON log lines); the
    :class:`Options` add environment variables, a ``preexec_fn``, a wrapper command, ...

``next_log_event(proc, event, *, timeout=30)``
    Reads stderr up to the JSON log line whose ``event`` is ``event``.

``stop(proc, sig=SIGTERM, *, timeout=10) -> int``
    ``sig`` if it still runs, SIGKILL when it has not exited ``timeout`` s later; its exit code.

``free_port() -> int``
    A loopback port nothing listens on, for servers that bind it themselves.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import sys
from collections.abc import AsyncIterator, Callable, Collection, Mapping, Sequence
from typing import Any, TypedDict, Unpack


class Options(TypedDict, total=False):
    """How :func:`spawn` starts the process; all optional."""

    env: Mapping[str, str]
    """Added to this process's environment (which the child has in any case)."""
    preexec_fn: Callable[[], object]
    """Runs in the child between fork and exec (a setrlimit, say)."""
    wrapper: Sequence[str]
    """A command that runs ``python -m watchgw ARGS`` (``systemd-socket-activate --listen ...``)."""
    pass_fds: Collection[int]
    stdout: int
    """``asyncio.subprocess.PIPE`` to read it; by default it goes to /dev/null."""


async def spawn(*args: str, **options: Unpack[Options]) -> asyncio.subprocess.Process:
    """``python -m watchgw ARGS``; stderr is a pipe, for :func:`next_log_event`.

    What nobody reads of stderr, asyncio buffers (up to 128 KiB, then the child waits for a reader).
    """
    env = options.get("env")
    return await asyncio.create_subprocess_exec(
        *options.get("wrapper", ()),
        sys.executable,
        "-m",
        "watchgw",
        *args,
        stdout=options.get("stdout", asyncio.subprocess.DEVNULL),
        stderr=asyncio.subprocess.PIPE,
        env=None if env is None else {**os.environ, **env},
        preexec_fn=options.get("preexec_fn"),
        pass_fds=options.get("pass_fds", ()),
    )


async def next_log_event(
    proc: asyncio.subprocess.Process, event: str, *, timeout: float = 30
) -> dict[str, Any]:
    """Read the process's JSON log lines until ``event``; fails if it exits first."""
    assert proc.stderr is not None
    async with asyncio.timeout(timeout):
        while True:
            line = await proc.stderr.readline()
            assert line, f"the process exited before {event}"
            if line.startswith(b"{"):
                record: dict[str, Any] = json.loads(line)
                if record["event"] == event:
                    return record


async def stop(
    proc: asyncio.subprocess.Process, sig: signal.Signals = signal.SIGTERM, *, timeout: float = 10
) -> int:
    """Send ``sig`` if ``proc`` still runs and wait for the exit; SIGKILL when it takes longer
    than ``timeout``. Returns the exit code (negative: the signal that ended it)."""
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(sig)
        try:
            async with asyncio.timeout(timeout):
                await proc.wait()
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
    return await proc.wait()


@contextlib.asynccontextmanager
async def running_watchgw(
    *args: str, **options: Unpack[Options]
) -> AsyncIterator[asyncio.subprocess.Process]:
    """:func:`spawn` ``ARGS``; :func:`stop` the process when the block ends, however it ends."""
    proc = await spawn(*args, **options)
    try:
        yield proc
    finally:
        await stop(proc)


def free_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port
