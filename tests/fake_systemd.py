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

from tests.processes import running_watchgw


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
# Its arguments: the listening socket's fd, then the command to exec.
_ACTIVATE = """
import os, sys
fd = int(sys.argv[1])
if fd != 3:
    os.dup2(fd, 3)
    os.close(fd)
os.set_inheritable(3, True)
os.environ.update(LISTEN_FDS="1", LISTEN_PID=str(os.getpid()))
os.execv(sys.argv[2], sys.argv[2:])
"""


def socket_activated(
    listener: socket.socket, *args: str
) -> contextlib.AbstractAsyncContextManager[asyncio.subprocess.Process]:
    """``watchgw *args`` serving on ``listener``, passed as systemd passes a socket unit's socket;
    stopped when the block ends."""
    fd = listener.fileno()
    wrapper = (sys.executable, "-c", _ACTIVATE, str(fd))
    return running_watchgw(*args, wrapper=wrapper, pass_fds=(fd,))
