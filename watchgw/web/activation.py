"""Socket activation (sd_listen_fds(3)): serve on the listening socket systemd passed.

A ``watchgw.socket`` unit owns the listening socket; systemd passes it as file descriptor 3 with
``$LISTEN_FDS`` and ``$LISTEN_PID``. Because the socket outlives the process, connections that
arrive while the gateway restarts wait in its backlog instead of being refused.
"""

from __future__ import annotations

import socket
from collections.abc import MutableMapping

LISTEN_FDS = "LISTEN_FDS"
LISTEN_PID = "LISTEN_PID"
LISTEN_FDNAMES = "LISTEN_FDNAMES"
#: The first passed descriptor; the others follow it (SD_LISTEN_FDS_START).
FIRST_FD = 3


class ActivationError(Exception):
    """The passed sockets are not one TCP listening socket the gateway can serve on."""


def inherited_listener(environ: MutableMapping[str, str], pid: int) -> socket.socket | None:
    """The listening socket passed to this process, or ``None`` when none was.

    The ``LISTEN_*`` variables are removed from ``environ`` (when it is ``os.environ``, from the
    process's environment), so that nothing this process starts believes the sockets are its own.
    """
    owner = environ.pop(LISTEN_PID, None)
    count = environ.pop(LISTEN_FDS, None)
    environ.pop(LISTEN_FDNAMES, None)
    if owner is None or count is None:
        return None
    # The variables were meant for another process (e.g. a parent that did not clear them).
    if owner.strip() != str(pid):
        return None
    try:
        n = int(count)
    except ValueError:
        raise ActivationError(f"LISTEN_FDS must be a number, not {count!r}") from None
    if n == 0:
        return None
    sockets = []
    try:
        for fd in range(FIRST_FD, FIRST_FD + n):
            try:
                sockets.append(socket.socket(fileno=fd))
            except OSError as exc:
                raise ActivationError(f"descriptor {fd} from systemd is not a socket: {exc}") from None
        if n != 1:
            raise ActivationError(
                f"systemd passed {n} sockets; watchgw serves one (one ListenStream= per socket unit)"
            )
        sock = sockets[0]
        if sock.family not in (socket.AF_INET, socket.AF_INET6) or sock.type != socket.SOCK_STREAM:
            raise ActivationError("the socket from systemd must be a TCP socket (ListenStream=HOST:PORT)")
        if not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
            raise ActivationError("the socket from systemd is not listening (Accept=no is required)")
    except ActivationError:
        for s in sockets:
            s.close()
        raise
    # Nothing the gateway starts should inherit it (systemd passes it without close-on-exec).
    sock.set_inheritable(False)
    return sock
