"""The list+watch loop of one channel: cache, resourceVersion, bookmarks, 410 relist+diff, backoff.

Levels, one job each (kopf style): :meth:`Informer.run` reconnects with backoff and decides when a
LIST is needed; :meth:`Informer._relist` lists and reports the difference against what it held;
:meth:`Informer._watch_once` runs one watch request from the latest resourceVersion under an
inactivity timer; :meth:`KubeClient.watch` parses the stream and :mod:`watchgw.kube.ndjson` splits it.

Guarantee to the listener: applying the events passed to ``on_events`` in order, starting from an
empty map, always yields :attr:`Informer.objects` (also across 410 relists, whose missing deletions
are synthesized from the last known objects). A watch that ends normally or goes silent resumes
from the latest resourceVersion (bookmarks included) without a LIST; only 410 (or 404 on a watch)
leads to a LIST.

Failures. Whatever a failure raises (an :class:`APIError` of the client, or any other exception,
reported as :class:`InternalError` with the exception's type and logged with its traceback once
per streak), the informer reports ``DEGRADED`` with a code, reason and message, waits a backoff
and tries again from the last good resourceVersion; only ``CancelledError`` ends :meth:`run`
(and a 404 on LIST, as ``GONE``). Like client-go's reflector:

- A watch that ends normally in under :data:`SHORT_WATCH_S` without a single line is a failure
  (``ShortWatch``), not a success to repeat at once.
- A watch is alive while complete lines arrive: no event or bookmark (bytes that never end a line
  do not count) for ``inactivity_timeout_s`` is a failure (``Inactive``); the watch is resumed.
- Backoff is full jitter, uniform in [0, min(backoff_max_s, backoff_initial_s * 2**n)] for the
  n-th failure of a streak; a streak ends when watches stayed healthy for ``backoff_reset_s``
  (healthy: from the first watch accepted after a failure until the failure, or, for a silent
  watch, until its last line).
- The first failure of a streak is reported only when it is not one a healthy watch meets now
  and then (a cut, a disconnect, a short or a silent watch): those are retried without alarming
  subscribers, and reported from the second in a row.

Timers use the event loop clock (``loop.time()``); backoff, reset and inactivity periods come from
:class:`UpstreamConfig`, so tests run with tiny values and a seeded ``rng``.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Callable, Mapping
from typing import Any

import structlog

from watchgw.config import UpstreamConfig
from watchgw.kube.client import KubeClient, encode_object, object_key
from watchgw.kube.errors import (
    APIError,
    GoneError,
    InactiveWatchError,
    InternalError,
    NotFoundError,
    ShortWatchError,
    TooManyRequestsError,
    UnauthorizedError,
    UpstreamConnectionError,
)
from watchgw.kube.types import (
    InformerListener,
    InformerPhase,
    InformerState,
    ObjectKey,
    WatchEvent,
    WatchTarget,
)

log = structlog.get_logger("watchgw.kube")


#: Failures a healthy watch meets now and then (a proxy or API server restarting, an idle
#: connection dropped): the first of a streak is retried without a ``watch-error``.
_TRANSIENT_REASONS = frozenset({"StreamCut", "ServerDisconnected", "ShortWatch", "Inactive"})

#: A watch that ends normally sooner than this without a single complete line is a failure
#: (client-go's reflector uses the same second). A server ends a watch with nothing to say only
#: at its ``timeoutSeconds`` (at least 1 s), so a healthy watch never trips this.
SHORT_WATCH_S = 1.0


def diff_objects(
    old: Mapping[ObjectKey, WatchEvent],
    items: list[dict[str, Any]],
    list_resource_version: str,
) -> tuple[dict[ObjectKey, WatchEvent], list[WatchEvent]]:
    """The new object map after a LIST, and the events that turn ``old`` into it.

    ADDED for new keys, MODIFIED for keys whose ``metadata.resourceVersion`` changed (both in
    list order), then DELETED (with the last known object, at the LIST's resourceVersion) for keys
    that vanished. Unchanged objects keep their old event (and its ``object_json``): no event, no
    encoding.
    """
    new: dict[ObjectKey, WatchEvent] = {}
    events: list[WatchEvent] = []
    for item in items:
        key = object_key(item)
        meta = item.get("metadata")
        rv = meta.get("resourceVersion") if isinstance(meta, dict) else None
        rv = rv if isinstance(rv, str) else ""
        prev = old.get(key)
        if prev is not None and prev.resource_version == rv and rv:
            new[key] = prev
            continue
        event = WatchEvent("ADDED" if prev is None else "MODIFIED", key, item, encode_object(item), rv)
        new[key] = event
        events.append(event)
    for key, prev in old.items():
        if key not in new:
            events.append(WatchEvent("DELETED", key, prev.object, prev.object_json, list_resource_version))
    return new, events


class Informer:
    """Keeps one channel's objects in sync with the control plane and reports every change."""

    def __init__(
        self,
        *,
        target: WatchTarget,
        client: KubeClient,
        config: UpstreamConfig,
        listener: InformerListener,
        token_provider: Callable[[], str | None] | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.target = target
        self.objects: dict[ObjectKey, WatchEvent] = {}
        """Latest event per object (``namespace/name``): a snapshot can reuse its ``object_json``."""
        self.resource_version = ""
        """Latest resourceVersion seen (LIST, event or BOOKMARK): where the next watch starts."""
        self.state = InformerState(InformerPhase.LISTING)
        self.lists = 0
        """LIST operations completed (the first one included)."""
        self.watches = 0
        """Watch requests that were accepted by the server."""
        self._client = client
        self._config = config
        self._listener = listener
        self._token_provider = token_provider
        self._rng = rng if rng is not None else random.Random()
        self._attempt = 0
        """Failures in the current streak (the next one's backoff exponent)."""
        self._healthy_since: float | None = None
        """When the first watch after the last failure was accepted (None: none since)."""
        self._traceback_logged = False
        """An internal error's traceback was logged in this streak: later ones log one line."""
        self._gone_streak = 0
        self._last_activity = 0.0
        """Loop time of the current watch's last complete line (or of its start)."""
        self._inactivity_handle: asyncio.TimerHandle | None = None
        self._ended_by: str | None = None
        """Why this informer ended the current watch itself: "inactive" or "restart"."""
        self._opened = False
        self._progressed = False
        """The current watch completed at least one line."""
        self._watch_cm: asyncio.Timeout | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._log = log.bind(
            resource_type=target.resource_type,
            org=target.org_id,
            project=target.project_id,
            namespace=target.namespace,
            name=target.name,
        )

    # -- the reconnect level ---------------------------------------------------------------------

    async def run(self) -> None:
        """List, then watch, forever (until cancelled, or the resource type is gone: 404 on LIST)."""
        self._loop = asyncio.get_running_loop()
        need_list = True
        while True:
            try:
                if need_list:
                    await self._relist()
                    need_list = False
                await self._watch_once()
            except GoneError as exc:
                # The resourceVersion we hold is too old (410): LIST again and diff.
                self._gone_streak += 1
                self._log.info(
                    "upstream.relist",
                    reason=exc.reason,
                    code=exc.status,
                    resource_version=self.resource_version,
                )
                if need_list or self._gone_streak > 1:
                    # 410 again without a healthy watch in between: do not hammer the server.
                    self._degrade(exc)
                    await asyncio.sleep(self._backoff(self._count_failure()))
                need_list = True
            except NotFoundError as exc:
                if need_list:
                    self._log.warning(
                        "upstream.gone", code=exc.status, reason=exc.reason, message=exc.message
                    )
                    self._set_state(
                        InformerState(
                            InformerPhase.GONE,
                            self.resource_version,
                            exc.status,
                            exc.reason,
                            exc.message,
                        )
                    )
                    return
                # 404 on a watch: LIST again, which tells whether the type is still served.
                need_list = True
                await self._fail(exc)
            except APIError as exc:
                if isinstance(exc, UnauthorizedError):
                    self._client.credentials.force_reload()
                await self._fail(exc)
            except Exception as exc:
                # A bug here or in the client (or an input nobody foresaw) must not kill the channel,
                # nor restart it in a tight loop: report it like any failure and back off.
                # (CancelledError is a BaseException, not an Exception: cancelling still ends run().)
                error = InternalError(f"watchgw failed while watching ({type(exc).__name__}); retrying")
                await self._fail(error, cause=exc)

    async def _fail(self, exc: APIError, *, cause: Exception | None = None) -> None:
        """Report ``exc`` (unless it is the first transient failure of a streak), log it, back off."""
        healthy_until = self._last_activity if isinstance(exc, InactiveWatchError) else None
        attempt = self._count_failure(healthy_until=healthy_until)
        transient = isinstance(exc, UpstreamConnectionError) and exc.reason in _TRANSIENT_REASONS
        if not (transient and attempt == 0):
            # A healthy watch cut once (a proxy, a restart of one API server) is retried at once
            # and not worth alarming every subscriber; anything else, or a repeat, is reported.
            self._degrade(exc)
        delay = self._backoff(attempt)
        if isinstance(exc, TooManyRequestsError) and exc.retry_after_s is not None:
            delay = max(delay, exc.retry_after_s)
        fields: dict[str, Any] = {
            "code": exc.status,
            "reason": exc.reason,
            "message": exc.message,
            "detail": exc.detail,
            "error_type": type(cause if cause is not None else exc).__name__,
            "attempt": attempt,
            "retry_in_s": round(delay, 3),
        }
        if cause is not None and not self._traceback_logged:
            # One traceback per streak: enough to find the bug, not a log flood while it lasts.
            self._traceback_logged = True
            self._log.error("upstream.error", **fields, exc_info=cause)
        else:
            self._log.warning("upstream.error", **fields)
        await asyncio.sleep(delay)

    def _now(self) -> float:
        assert self._loop is not None
        return self._loop.time()

    def _count_failure(self, *, healthy_until: float | None = None) -> int:
        """This failure's place in its streak (0: the first after a healthy period).

        Like client-go's backoff manager, a streak ends after ``backoff_reset_s`` without
        failures; here, of watches that were accepted and (for a silent watch, up to its last
        line) alive, so a watch that is accepted and then says nothing never ends a streak.
        """
        end = self._now() if healthy_until is None else healthy_until
        since = self._healthy_since
        if since is not None and end - since >= self._config.backoff_reset_s:
            self._attempt = 0
            self._traceback_logged = False
        self._healthy_since = None
        attempt = self._attempt
        self._attempt += 1
        return attempt

    def _backoff(self, attempt: int) -> float:
        """Full jitter: uniform in [0, min(max, initial * 2**attempt)]."""
        cfg = self._config
        ceiling = min(cfg.backoff_max_s, cfg.backoff_initial_s * (2 ** min(attempt, 32)))
        return self._rng.uniform(0.0, ceiling)

    # -- state -----------------------------------------------------------------------------------

    def _set_state(self, state: InformerState) -> None:
        self.state = state
        self._listener.on_state(state)

    def _degrade(self, exc: APIError) -> None:
        state = InformerState(
            InformerPhase.DEGRADED, self.resource_version, exc.status, exc.reason, exc.message
        )
        if state != self.state:
            self._set_state(state)

    def _watching(self) -> None:
        self._set_state(InformerState(InformerPhase.WATCHING, self.resource_version))

    # -- LIST ------------------------------------------------------------------------------------

    async def _relist(self) -> None:
        token = self._token_provider() if self._token_provider is not None else None
        started = self._now()
        result = await self._client.list_all(self.target, token=token)
        first = self.lists == 0
        new, events = diff_objects(self.objects, result.items, result.resource_version)
        self.objects = new
        self.resource_version = result.resource_version
        self.lists += 1
        self._log.info(
            "upstream.listed",
            first=first,
            objects=len(new),
            changes=len(events),
            pages=result.pages,
            resource_version=result.resource_version,
            duration_s=round(self._now() - started, 3),
        )
        # Also without events: the listener learns that positions inside the relist are not
        # consistent states (objects created and deleted meanwhile are not in the difference).
        self._listener.on_relist(events, result.resource_version)
        self._watching()

    # -- one watch request -----------------------------------------------------------------------

    def _watch_timeout_seconds(self) -> int:
        t = self._config.watch_timeout_s
        return max(1, round(self._rng.uniform(t, 2 * t)))

    def _on_open(self) -> None:
        self._opened = True
        self.watches += 1
        self._gone_streak = 0
        if self._healthy_since is None:
            self._healthy_since = self._now()
        if self.state.phase is not InformerPhase.WATCHING:
            self._watching()

    def _on_progress(self) -> None:
        """A chunk completed at least one line: the stream is alive (bytes alone prove nothing)."""
        assert self._loop is not None
        self._last_activity = self._loop.time()
        self._progressed = True

    def _check_inactivity(self, cm: asyncio.Timeout) -> None:
        now = self._now()
        deadline = self._last_activity + self._config.inactivity_timeout_s
        if now >= deadline:
            self._ended_by = "inactive"
            cm.reschedule(now)
        else:
            assert self._loop is not None
            self._inactivity_handle = self._loop.call_at(deadline, self._check_inactivity, cm)

    def restart_watch(self) -> None:
        """End the current watch now and resume it from the latest resourceVersion (no LIST).

        Used when the credential the watch was opened with must no longer be used (its
        subscriber left, in ``credential = "subscriber"`` mode).
        """
        if self._watch_cm is not None and self._loop is not None:
            self._ended_by = "restart"
            self._watch_cm.reschedule(self._loop.time())

    def _why_ended(self) -> str | None:
        # A method, not the attribute: timer callbacks set it while _watch_once awaits.
        return self._ended_by

    async def _watch_once(self) -> None:
        assert self._loop is not None
        loop = self._loop
        timeout_s = self._watch_timeout_seconds()
        token = self._token_provider() if self._token_provider is not None else None
        self._ended_by = None
        self._opened = False
        self._progressed = False
        self._last_activity = loop.time()
        events = 0
        started = self._last_activity
        self._log.info("upstream.watch_started", resource_version=self.resource_version, timeout_s=timeout_s)
        objects = self.objects
        on_events = self._listener.on_events
        try:
            async with asyncio.timeout(None) as cm:
                self._watch_cm = cm
                self._inactivity_handle = loop.call_at(
                    self._last_activity + self._config.inactivity_timeout_s, self._check_inactivity, cm
                )
                try:
                    stream = self._client.watch(
                        self.target,
                        resource_version=self.resource_version,
                        timeout_s=timeout_s,
                        allow_bookmarks=True,
                        token=token,
                        on_open=self._on_open,
                        on_progress=self._on_progress,
                    )
                    async with contextlib.aclosing(stream):
                        async for batch in stream:
                            for event in batch:
                                if event.type == "DELETED":
                                    objects.pop(event.key, None)
                                elif event.type != "BOOKMARK":
                                    objects[event.key] = event
                            if batch:
                                self.resource_version = batch[-1].resource_version
                                on_events(batch)
                            events += len(batch)
                finally:
                    self._watch_cm = None
                    if self._inactivity_handle is not None:
                        self._inactivity_handle.cancel()
                        self._inactivity_handle = None
            if not self._progressed and loop.time() - started < SHORT_WATCH_S:
                raise ShortWatchError(
                    f"the watch ended at once (under {SHORT_WATCH_S:g} s) without an event or bookmark"
                )
        except TimeoutError as exc:
            ended_by = self._why_ended()
            if ended_by is None:
                raise
            if ended_by == "restart":
                return  # asked for: resume at once from the latest resourceVersion
            timeout = self._config.inactivity_timeout_s
            if not self._opened:
                raise UpstreamConnectionError(
                    f"no response to the watch request within {timeout:g} s", reason="Timeout"
                ) from exc
            raise InactiveWatchError(f"no event or bookmark for {timeout:g} s") from exc
        finally:
            self._log.info(
                "upstream.watch_ended",
                events=events,
                resource_version=self.resource_version,
                duration_s=round(loop.time() - started, 3),
            )
