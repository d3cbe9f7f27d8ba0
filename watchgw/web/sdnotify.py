"""systemd's notify protocol (sd_notify(3)), spoken directly: no libsystemd, no dependency.

A message is one datagram of ``NAME=value`` lines sent to the ``AF_UNIX`` socket named by
``$NOTIFY_SOCKET``; a name starting with ``@`` is in the abstract namespace. Sending never blocks
and never raises: a notification is advice to the service manager, and a gateway that serves
must not stall or stop because its manager is busy or gone (a dropped watchdog ping is followed by
the next one).
"""

from __future__ import annotations

import socket
from collections.abc import Mapping

import structlog

log = structlog.get_logger("watchgw.systemd")

NOTIFY_SOCKET = "NOTIFY_SOCKET"
WATCHDOG_USEC = "WATCHDOG_USEC"
WATCHDOG_PID = "WATCHDOG_PID"


class Notifier:
    """Sends notify messages to one service manager socket."""

    __slots__ = ("_address", "_reported", "_sock")

    def __init__(self, address: str) -> None:
        if not address.startswith(("/", "@")) or len(address) < 2:
            raise ValueError(f"not a notify socket address: {address!r}")
        # Python reaches the abstract namespace with a leading NUL byte, as the kernel does.
        self._address = "\0" + address[1:] if address.startswith("@") else address
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)  # close-on-exec (PEP 446)
        self._sock.setblocking(False)
        self._reported = False

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> Notifier | None:
        """The notifier ``$NOTIFY_SOCKET`` asks for, or ``None`` when not run by a manager that
        wants notifications (or names a socket kind this code does not speak, e.g. ``vsock:``,
        which systemd 252 never passes)."""
        address = environ.get(NOTIFY_SOCKET, "")
        if not address:
            return None
        try:
            return cls(address)
        except ValueError:
            log.warning("systemd.notify_socket_unsupported", address=address)
            return None

    def send(self, *assignments: str) -> bool:
        """Send ``NAME=value`` lines as one message; ``False`` when it could not be sent."""
        message = "\n".join(assignments).encode()
        try:
            self._sock.sendto(message, self._address)
        except OSError as exc:
            # Said once: a missing manager would otherwise log every few seconds.
            if not self._reported:
                self._reported = True
                log.warning("systemd.notify_failed", error=str(exc))
            return False
        return True

    def close(self) -> None:
        self._sock.close()


def watchdog_interval_s(environ: Mapping[str, str], pid: int) -> float | None:
    """``WatchdogSec=`` of the unit in seconds (from ``$WATCHDOG_USEC``), or ``None`` when no
    watchdog is asked of this process: ``$WATCHDOG_PID``, when set, names the process it is for
    (a child that inherited the variables is not the service)."""
    raw = environ.get(WATCHDOG_USEC, "")
    owner = environ.get(WATCHDOG_PID, "")
    if not raw:
        return None
    if owner and owner != str(pid):
        return None
    try:
        usec = int(raw)
    except ValueError:
        log.warning("systemd.watchdog_usec_invalid", value=raw)
        return None
    return usec / 1_000_000 if usec > 0 else None
