"""What systemd does for a service, without systemd: the notify socket it listens on, and passing
a listening socket to a process (socket activation)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Notification:
    at: float
    """``time.monotonic()`` when the test received it (the test's loop is idle meanwhile)."""
    fields: dict[str, str]

    def __contains__(self, assignment: str) -> bool:
        name, _, value = assignment.partition("=")
        return self.fields.get(name) == value


@dataclass
class NotifySocket:
    """The ``AF_UNIX`` datagram socket systemd names in ``$NOTIFY_SOCKET``; keeps every message."""

    address: str
    sock: socket.socket
    received: list[Notification] = field(default_factory=list)
    _arrived: asyncio.Event = field(default_factory=asyncio.Event)

    async def _read_forever(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            data = await loop.sock_recv(self.sock, 65536)
            fields = dict(line.partition("=")[::2] for line in data.decode().splitlines() if line)
            self.received.append(Notification(at=time.monotonic(), fields=fields))
            self._arrived.set()

    async def next(
        self, predicate: Callable[[Notification], bool], *, after: int = 0, timeout: float = 15
    ) -> tuple[int, Notification]:
        """The first message from index ``after`` on that satisfies ``predicate``, and its index."""
        async with asyncio.timeout(timeout):
            index = after
            while True:
                while index < len(self.received):
                    if predicate(self.received[index]):
                        return index, self.received[index]
                    index += 1
                self._arrived.clear()
                await self._arrived.wait()


@contextlib.asynccontextmanager
async def notify_socket(path: str | None = None) -> AsyncIterator[NotifySocket]:
    """A notify socket in the abstract namespace (``@...``, as systemd names its own), or at
    ``path`` in the file system."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.setblocking(False)
    if path is None:
        name = f"watchgw-test-{os.getpid()}-{id(sock)}"
        sock.bind("\0" + name)
        address = "@" + name
    else:
        sock.bind(path)
        address = path
    listener = NotifySocket(address=address, sock=sock)
    reader = asyncio.create_task(listener._read_forever())
    try:
        yield listener
    finally:
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reader
        sock.close()


# Runs in the child between fork and the gateway: what systemd does before exec'ing a socket-
# activated service (fd 3, LISTEN_FDS, LISTEN_PID of the process itself; exec keeps the pid).
_ACTIVATE = """
import os, sys
fd = int(sys.argv[1])
if fd != 3:
    os.dup2(fd, 3)
    os.close(fd)
os.set_inheritable(3, True)
os.environ.update(LISTEN_FDS="1", LISTEN_PID=str(os.getpid()))
os.execv(sys.executable, [sys.executable, "-m", "watchgw", *sys.argv[2:]])
"""


async def start_activated(
    listener: socket.socket, *args: str, env: dict[str, str] | None = None
) -> asyncio.subprocess.Process:
    """``watchgw *args`` serving on ``listener``, passed as systemd passes a socket unit's socket."""
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        _ACTIVATE,
        str(listener.fileno()),
        *args,
        pass_fds=(listener.fileno(),),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, **(env or {})},
    )


async def stop(proc: asyncio.subprocess.Process) -> None:
    """Kill ``proc`` if it still runs (the end of every test that starts one)."""
    if proc.returncode is None:
        proc.kill()
        await proc.wait()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port
