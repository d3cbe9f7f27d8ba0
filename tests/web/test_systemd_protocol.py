"""The notify protocol and socket activation at their edges: which environment means what."""

from __future__ import annotations

import os
import socket
import tempfile

import pytest

from watchgw.web.activation import ActivationError, inherited_listener
from watchgw.web.sdnotify import Notifier, watchdog_interval_s


def test_a_message_reaches_an_abstract_socket_as_one_datagram() -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as manager:
        manager.bind(f"\0watchgw-unit-{os.getpid()}")
        notifier = Notifier.from_environ({"NOTIFY_SOCKET": f"@watchgw-unit-{os.getpid()}"})
        assert notifier is not None
        try:
            assert notifier.send("READY=1", "STATUS=clients 0")
        finally:
            notifier.close()
        assert manager.recv(4096) == b"READY=1\nSTATUS=clients 0"


def test_a_message_reaches_a_socket_in_the_file_system() -> None:
    with tempfile.TemporaryDirectory() as short, socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as manager:
        path = os.path.join(short, "notify")
        manager.bind(path)
        notifier = Notifier.from_environ({"NOTIFY_SOCKET": path})
        assert notifier is not None
        try:
            assert notifier.send("WATCHDOG=1")
        finally:
            notifier.close()
        assert manager.recv(4096) == b"WATCHDOG=1"


@pytest.mark.parametrize("address", ["", "relative/notify", "@", "vsock:2:1234"])
def test_no_notifier_without_a_socket_it_can_speak_to(address: str) -> None:
    assert Notifier.from_environ({"NOTIFY_SOCKET": address} if address else {}) is None


def test_a_manager_that_is_gone_does_not_stop_the_gateway() -> None:
    notifier = Notifier.from_environ({"NOTIFY_SOCKET": f"@watchgw-nobody-listens-{os.getpid()}"})
    assert notifier is not None
    try:
        assert notifier.send("WATCHDOG=1") is False
        assert notifier.send("WATCHDOG=1") is False
    finally:
        notifier.close()


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({}, None),
        ({"WATCHDOG_USEC": "30000000"}, 30.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "4242"}, 30.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}, None),  # for another process
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "soon"}, None),
    ],
)
def test_the_watchdog_interval_is_for_this_process_only(
    environ: dict[str, str], expected: float | None
) -> None:
    assert watchdog_interval_s(environ, 4242) == expected


def test_no_socket_is_inherited_without_the_variables() -> None:
    assert inherited_listener({}, 4242) is None


def test_sockets_passed_to_another_process_are_not_taken_and_the_variables_go() -> None:
    environ = {"LISTEN_PID": "1", "LISTEN_FDS": "1", "LISTEN_FDNAMES": "watchgw.socket", "LANG": "C.UTF-8"}
    assert inherited_listener(environ, 4242) is None
    assert environ == {"LANG": "C.UTF-8"}, "a process this one starts must not take them either"


def test_a_malformed_count_is_an_error() -> None:
    with pytest.raises(ActivationError, match="LISTEN_FDS"):
        inherited_listener({"LISTEN_PID": "4242", "LISTEN_FDS": "one"}, 4242)
