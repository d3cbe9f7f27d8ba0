"""Keeping systemd informed while the gateway serves (``Type=notify`` with ``WatchdogSec=``).

``READY=1`` once the listener is bound and the application started, ``RELOADING=1`` and
``READY=1`` around a SIGHUP, ``STOPPING=1`` when the drain starts, a ``STATUS=`` line
(``systemctl status``) when it changes, checked every few seconds, and ``WATCHDOG=1`` at half the
watchdog interval. The pings come from a task on the event loop itself, so a loop stuck in a
blocking call stops them and systemd restarts the gateway.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import AsyncIterator, Callable, Mapping

import structlog

from watchgw.hub.hub import WatchHub
from watchgw.kube.types import InformerPhase
from watchgw.web.sdnotify import Notifier, watchdog_interval_s

log = structlog.get_logger("watchgw.systemd")

#: How often the status line is computed (it walks the channels once: cheap at any size).
STATUS_EVERY_S = 5.0
#: Test-only: when set to a number of seconds, SIGUSR2 blocks the event loop that long.
DEBUG_BLOCK_LOOP_ENV = "WATCHGW_DEBUG_BLOCK_LOOP_S"


class SystemdLink:
    """What the gateway tells the service manager that started it."""

    __slots__ = ("_ready", "notifier", "watchdog_s")

    def __init__(self, notifier: Notifier, *, watchdog_s: float | None = None) -> None:
        self.notifier = notifier
        self.watchdog_s = watchdog_s
        self._ready = False

    @classmethod
    def from_environ(cls, environ: Mapping[str, str], pid: int | None = None) -> SystemdLink | None:
        """The link ``$NOTIFY_SOCKET`` and ``$WATCHDOG_USEC`` ask for; ``None`` outside systemd."""
        notifier = Notifier.from_environ(environ)
        if notifier is None:
            return None
        return cls(notifier, watchdog_s=watchdog_interval_s(environ, os.getpid() if pid is None else pid))

    def reloading(self) -> None:
        # MONOTONIC_USEC is what systemd 253+ requires with RELOADING=1 (Type=notify-reload);
        # 252 ignores it.
        now_usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        self.notifier.send("RELOADING=1", f"MONOTONIC_USEC={now_usec}")

    def ready(self, status: str | None = None) -> None:
        self.notifier.send("READY=1", *([f"STATUS={status}"] if status is not None else []))

    def reporting_reloads(self, on_reload: Callable[[], None]) -> Callable[[], None]:
        """``on_reload`` between ``RELOADING=1`` and ``READY=1``, so that ``systemctl reload``
        waits for it; a SIGHUP during the start reloads silently (its ``READY=1`` would tell
        systemd the gateway is up before it listens)."""

        def reload() -> None:
            if not self._ready:
                on_reload()
                return
            self.reloading()
            try:
                on_reload()
            finally:
                self.ready()

        return reload

    def stopping(self) -> None:
        self.notifier.send("STOPPING=1", "STATUS=draining: clients are told to reconnect")

    @contextlib.asynccontextmanager
    async def serving(self, status: Callable[[], str]) -> AsyncIterator[None]:
        """``READY=1`` now; status updates and watchdog pings until the block ends."""
        line = status()
        self.ready(line)
        self._ready = True
        tasks = [asyncio.create_task(self._report_status(status, line), name="systemd status")]
        if self.watchdog_s is not None:
            ping = self._ping_watchdog(self.watchdog_s / 2)
            tasks.append(asyncio.create_task(ping, name="systemd watchdog"))
            log.info("systemd.watchdog", interval_s=self.watchdog_s)
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    async def _report_status(self, status: Callable[[], str], last: str) -> None:
        while True:
            await asyncio.sleep(STATUS_EVERY_S)
            line = status()
            if line != last:
                self.notifier.send(f"STATUS={line}")
                last = line

    async def _ping_watchdog(self, every_s: float) -> None:
        # Half the interval (sd_watchdog_enabled(3)): one late ping does not get the gateway killed.
        while True:
            self.notifier.send("WATCHDOG=1")
            await asyncio.sleep(every_s)


def status_line(hub: WatchHub) -> str:
    """E.g. ``clients 12 (10 streaming), channels 5 (4 watching, 1 degraded), upstream failing
    for 1 channel``: what ``systemctl status`` shows."""
    streaming = sum(1 for session in hub.sessions.values() if session.attached)
    phases: dict[InformerPhase, int] = {}
    for channel in hub.channels.values():
        phases[channel.phase] = phases.get(channel.phase, 0) + 1
    per_phase = ", ".join(f"{phases[phase]} {phase.value}" for phase in InformerPhase if phases.get(phase))
    channels = f"channels {len(hub.channels)}" + (f" ({per_phase})" if per_phase else "")
    degraded = phases.get(InformerPhase.DEGRADED, 0)
    if not hub.channels:
        upstream = "upstream idle"
    elif degraded:
        upstream = f"upstream failing for {degraded} channel{'s' if degraded != 1 else ''}"
    else:
        upstream = "upstream ok"
    line = f"clients {len(hub.sessions)} ({streaming} streaming), {channels}, {upstream}"
    return f"draining; {line}" if hub.draining else line


def arm_debug_loop_block(environ: Mapping[str, str]) -> None:
    """Test-only (``$WATCHGW_DEBUG_BLOCK_LOOP_S``): SIGUSR2 then blocks the event loop for that
    many seconds, as a bug stuck in a blocking call would, so a test can watch the watchdog pings
    stop. Without the variable nothing is installed (SIGUSR2 keeps its default action)."""
    raw = environ.get(DEBUG_BLOCK_LOOP_ENV)
    if not raw:
        return
    try:
        seconds = float(raw)
    except ValueError:
        log.warning("debug.loop_block_invalid", value=raw)
        return

    def block() -> None:
        log.warning("debug.loop_blocking", seconds=seconds)
        time.sleep(seconds)  # blocking on purpose: this is the hung loop the watchdog must notice
        log.warning("debug.loop_unblocked")

    asyncio.get_running_loop().add_signal_handler(signal.SIGUSR2, block)
    # Loud, so that a production start with the variable set cannot go unnoticed.
    log.warning("debug.loop_block_armed", variable=DEBUG_BLOCK_LOOP_ENV, seconds=seconds, note="test only")
