"""Every upstream failure reaches the listener as DEGRADED, and the informer keeps going.

Against the scripted API server (:mod:`tests.kube.fakeapi`): TLS files that are missing, bugs,
watches that end at once or go silent, upstream text that is long, dirty or echoes a credential,
numbers a browser cannot parse, strings Python cannot encode, resourceVersions the hub cannot use.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import math
from pathlib import Path
from typing import Any

import pytest
import structlog

from watchgw.kube import errors as e
from watchgw.kube.types import InformerPhase, WatchEvent, is_valid_resource_version

from .fakeapi import FakeAPI, bookmark, line, pod, status
from .informer_harness import Recorder, TopOfRange, running

# -- any exception is a watch error ----------------------------------------------------------------


async def test_missing_ca_file_is_a_watch_error_naming_the_file(
    fake: tuple[FakeAPI, str], tmp_path: Path
) -> None:
    api, url = fake
    missing = tmp_path / "nowhere" / "ca.pem"
    async with running((api, url.replace("http://", "https://")), ca_file=str(missing)) as h:
        await h.rec.wait_for(lambda: len(h.rec.degraded()) >= 1, timeout=2)
        state = h.rec.degraded()[0]
        assert (state.error_code, state.error_reason) == (500, "TLSConfigError")
        assert "upstream.ca_file" in state.error_message
        assert str(missing) in state.error_message
        assert not h.task.done()  # it keeps retrying (with backoff): the file may appear
    assert api.list_requests == []  # never got as far as a connection


async def test_client_cert_that_is_a_directory_names_the_key(
    fake: tuple[FakeAPI, str], tmp_path: Path
) -> None:
    api, url = fake
    https = (api, url.replace("http://", "https://"))
    async with running(https, client_cert=str(tmp_path), client_key=str(tmp_path)) as h:
        await h.rec.wait_for(lambda: len(h.rec.degraded()) >= 1, timeout=2)
        state = h.rec.degraded()[0]
        assert state.error_reason == "TLSConfigError"
        assert "upstream.client_cert" in state.error_message
        assert str(tmp_path) in state.error_message


class FailingListener(Recorder):
    """A listener whose ``on_events`` raises ``failures`` times (a bug above the informer)."""

    def __init__(self, failures: int) -> None:
        super().__init__()
        self.failures = failures

    def on_events(self, events: list[WatchEvent]) -> None:
        if self.failures and events:
            self.failures -= 1
            raise RuntimeError("bug while holding Bearer not-for-your-eyes")
        super().on_events(events)


async def test_unexpected_exception_degrades_retries_and_logs_one_traceback(
    fake: tuple[FakeAPI, str],
) -> None:
    api, _ = fake
    api.watch_scripts = [api.stream(line("ADDED", pod(f"p{i}", 2 + i))) for i in range(3)]
    api.watch_scripts.append(api.stream(line("ADDED", pod("ok", 9)), then="stall"))
    listener = FailingListener(failures=3)
    with structlog.testing.capture_logs() as logs:
        async with running(fake, listener=listener) as h:
            await h.rec.wait_for(lambda: [ev.key for ev in h.rec.events] == ["default/ok"])
            assert not h.task.done()
    degraded = listener.degraded()
    assert degraded, listener.states
    assert (degraded[0].error_code, degraded[0].error_reason) == (500, "InternalError")
    assert "RuntimeError" in degraded[0].error_message
    assert "not-for-your-eyes" not in repr(listener.states)
    errors = [entry for entry in logs if entry["event"] == "upstream.error"]
    assert len(errors) == 3
    assert [bool(entry.get("exc_info")) for entry in errors] == [True, False, False]  # one traceback
    assert all(entry["error_type"] == "RuntimeError" for entry in errors)


@pytest.mark.parametrize("where", ["watching", "backing off"])
async def test_cancelling_still_ends_the_informer(fake: tuple[FakeAPI, str], where: str) -> None:
    api, _ = fake
    if where == "backing off":
        api.default_watch = api.stream(line("ADDED", pod("a", 2)))
    listener = FailingListener(failures=1_000_000)  # every batch of events is a failure
    async with running(fake, listener=listener, backoff_initial_s=60, backoff_max_s=60) as h:
        if where == "watching":
            await api.wait_for(lambda: len(api.watch_requests) == 1)  # a watch that stalls
        else:
            await listener.wait_for(lambda: len(listener.degraded()) >= 1)
        h.task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await h.task
        assert h.task.cancelled()


async def test_invalid_utf8_and_bad_list_shapes_are_malformed_not_fatal(fake: tuple[FakeAPI, str]) -> None:
    api, _ = fake
    api.list_scripts = [
        api.raw(b'{"kind":"PodList","metadata":{"resourceVersion":"1"},"items":[{"x":"\xff"}]}'),
        api.raw(b'{"kind":"PodList","metadata":{"resourceVersion":"1","continue":5},"items":[]}'),
        api.list_of([pod("a", 1)], "1"),
    ]
    api.watch_scripts = [api.stream(b'{"type":"ADDED","object":{"s":"\xc3\x28"}}\n'), api.stall()]
    async with running(fake) as h:
        await h.rec.wait_for(lambda: len(api.watch_requests) == 2)
        assert [(s.phase, s.error_code) for s in h.rec.states] == [
            (InformerPhase.DEGRADED, 502),  # invalid UTF-8 in the LIST
            (InformerPhase.DEGRADED, 502),  # a "continue" token that is not a string
            (InformerPhase.WATCHING, 0),
            (InformerPhase.DEGRADED, 502),  # invalid UTF-8 in a watch line
            (InformerPhase.WATCHING, 0),
        ]
        assert {s.error_reason for s in h.rec.degraded()} == {"MalformedResponse"}


# -- watches that end at once or go silent ---------------------------------------------------------


async def test_empty_watches_back_off_and_degrade(fake: tuple[FakeAPI, str]) -> None:
    api, _ = fake
    api.default_watch = api.stream()  # every watch: 200, no body, closed at once
    loop = asyncio.get_running_loop()
    async with running(fake, rng=TopOfRange(), backoff_initial_s=0.02, backoff_max_s=0.08) as h:
        started = loop.time()
        await api.wait_for(lambda: len(api.watch_requests) >= 5)
        elapsed = loop.time() - started
        await h.rec.wait_for(lambda: len(h.rec.degraded()) >= 1)
        state = h.rec.degraded()[0]
    # Delays 0.02, 0.04, 0.08, 0.08 between the five watches: not thousands per second.
    assert elapsed >= 0.2
    watch_times = api.request_times[1:6]
    gaps = [b - a for a, b in itertools.pairwise(watch_times)]
    for gap, ceiling in zip(gaps, [0.02, 0.04, 0.08, 0.08], strict=True):
        assert gap >= ceiling - 0.005, gaps
    assert (state.error_code, state.error_reason) == (503, "ShortWatch")
    assert "without an event" in state.error_message
    assert len(api.list_requests) == 1  # the version is still good: no LIST
    assert {q["resourceVersion"] for q in api.watch_requests} == {"1"}


async def test_first_empty_watch_after_a_healthy_period_is_silent(fake: tuple[FakeAPI, str]) -> None:
    api, _ = fake
    api.watch_scripts = [api.stream(bookmark(2), hold_s=0.2), api.stream()]
    async with running(fake, backoff_reset_s=0.1) as h:
        await api.wait_for(lambda: len(api.watch_requests) == 3)
        assert h.rec.degraded() == []


async def test_single_cuts_after_healthy_periods_are_not_reported(fake: tuple[FakeAPI, str]) -> None:
    api, _ = fake
    api.watch_scripts = [
        api.stream(line("ADDED", pod("a", 2)), b'{"type":"ADD', then="cut"),
        # Healthy (and quiet) for longer than backoff_reset_s, then cut once: retried, not reported.
        api.stream(bookmark(3), hold_s=0.2, then="cut"),
        api.stream(bookmark(4), hold_s=0.2, then="cut"),
    ]
    async with running(fake, backoff_reset_s=0.1) as h:
        await api.wait_for(lambda: len(api.watch_requests) == 4)
        assert h.rec.degraded() == []
        assert [q["resourceVersion"] for q in api.watch_requests] == ["1", "2", "3", "4"]


async def test_headers_then_silence_rewatches_then_degrades(fake: tuple[FakeAPI, str]) -> None:
    api, _ = fake
    api.watch_scripts = [api.stream(line("ADDED", pod("a", 2)), then="stall")]  # then: headers only
    async with running(fake, inactivity_timeout_s=0.1) as h:
        await api.wait_for(lambda: len(api.watch_requests) >= 2, timeout=2)
        assert h.rec.degraded() == []  # the first silence after a healthy watch: re-watched quietly
        await h.rec.wait_for(lambda: len(h.rec.degraded()) >= 1, timeout=2)
        state = h.rec.degraded()[0]
        assert (state.error_code, state.error_reason) == (503, "Inactive")
        assert "no event or bookmark" in state.error_message
        assert {q["resourceVersion"] for q in api.watch_requests[1:]} == {"2"}  # resumed, no LIST
        assert len(api.list_requests) == 1


async def test_bytes_without_a_line_are_silence(fake: tuple[FakeAPI, str]) -> None:
    api, _ = fake
    api.default_watch = api.drip(b'{"type":"ADDED","object":', every_s=0.01)
    async with running(fake, inactivity_timeout_s=0.1) as h:
        await api.wait_for(lambda: len(api.watch_requests) >= 2, timeout=2)
        await h.rec.wait_for(lambda: len(h.rec.degraded()) >= 1, timeout=2)
        assert h.rec.degraded()[0].error_reason == "Inactive"
        assert len(api.list_requests) == 1
        assert api.request_times[2] - api.request_times[1] >= 0.1


# -- upstream text ---------------------------------------------------------------------------------

GATEWAY_TOKEN = "gw-token-7f3a9c"
SUBSCRIBER_TOKEN = "sub-token-51d0e2"


async def test_upstream_text_is_bounded_clean_and_redacted(fake: tuple[FakeAPI, str]) -> None:
    api, _ = fake
    message = (
        f"Authorization: Basic dXNlcjpwYXNz; bearer {GATEWAY_TOKEN}, raw {SUBSCRIBER_TOKEN} "
        f"and {GATEWAY_TOKEN}\x1b[31m\x00\u2028" + "é" * 400
    )
    api.watch_scripts = [api.error(500, status(500, "Internal\x07Error" + "R" * 200, message))]
    with structlog.testing.capture_logs() as logs:
        async with running(fake, token=GATEWAY_TOKEN, token_provider=lambda: SUBSCRIBER_TOKEN) as h:
            await h.rec.wait_for(lambda: len(h.rec.degraded()) >= 1)
            state = h.rec.degraded()[0]
    assert state.error_reason.startswith("InternalError")
    assert len(state.error_reason) <= e.MAX_REASON_CHARS
    assert state.error_reason.isprintable()
    assert state.error_message.isprintable()
    assert len(state.error_message.encode()) <= e.MAX_MESSAGE_BYTES
    assert "[redacted]" in state.error_message
    for secret in (GATEWAY_TOKEN, SUBSCRIBER_TOKEN, "dXNlcjpwYXNz"):
        assert secret not in state.error_message
        assert secret not in repr(logs)


# -- numbers a browser cannot parse ----------------------------------------------------------------


def strict_json(data: bytes) -> Any:
    """What a browser's ``JSON.parse`` accepts, with the numbers it would turn into Infinity refused."""

    def refuse(token: str) -> Any:
        raise ValueError(f"not JSON: {token}")

    def finite_float(text: str) -> float:
        value = float(text)
        if not math.isfinite(value):
            raise ValueError(f"{text} is Infinity in a browser")
        return value

    def finite_int(text: str) -> int:
        finite_float(text)
        return int(text)

    return json.loads(data, parse_constant=refuse, parse_float=finite_float, parse_int=finite_int)


def obj_line(name: str, rv: int, spec: bytes) -> bytes:
    meta = b'{"name":"' + name.encode() + b'","namespace":"default","resourceVersion":"%d"}' % rv
    return b'{"type":"ADDED","object":{"metadata":' + meta + b',"spec":' + spec + b"}}\n"


async def test_non_finite_numbers_become_null(fake: tuple[FakeAPI, str]) -> None:
    api, _ = fake
    api.list_scripts = [
        api.raw(
            b'{"kind":"PodList","apiVersion":"v1","metadata":{"resourceVersion":"1"},"items":['
            b'{"metadata":{"name":"listed","namespace":"default","resourceVersion":"1"},"spec":{"x":1E400}}]}'
        )
    ]
    api.watch_scripts = [
        api.stream(
            obj_line("inf", 2, b'{"big":1e999,"neg":-1E+400,"ok":1.5e3,"tiny":1e-400}'),
            obj_line("nan", 3, b'{"n":NaN,"i":[Infinity,-Infinity,1]}'),
            obj_line("huge", 4, b'{"h":' + b"9" * 400 + b',"small":12}'),
            obj_line("fine", 5, b'{"s":"1e999, NaN","n":12345678901234567890,"f":1.0e30}'),
            obj_line("lenient", 6, b'{"z":01,"d":1.,"a":[-1, 02]}'),  # ujson takes them, JSON.parse not
            then="stall",
        )
    ]
    with structlog.testing.capture_logs() as logs:
        async with running(fake) as h:
            await h.rec.wait_for(lambda: len(h.rec.events) == 6)
            events = {ev.key: ev for ev in h.rec.events}
    for ev in events.values():
        assert strict_json(ev.object_json) == ev.object
    assert events["default/listed"].object["spec"] == {"x": None}
    assert events["default/inf"].object["spec"] == {"big": None, "neg": None, "ok": 1500.0, "tiny": 0.0}
    assert events["default/nan"].object["spec"] == {"n": None, "i": [None, None, 1]}
    assert events["default/huge"].object["spec"] == {"h": None, "small": 12}
    assert events["default/fine"].object["spec"]["s"] == "1e999, NaN"
    assert b"1e999, NaN" in events["default/fine"].object_json
    assert events["default/lenient"].object["spec"] == {"z": 1, "d": 1.0, "a": [-1, 2]}
    warned = [entry["key"] for entry in logs if entry["event"] == "upstream.number_out_of_range"]
    assert warned == ["default/listed", "default/inf", "default/nan", "default/huge"]  # one per event


# -- objects the gateway cannot encode as they are -------------------------------------------------


async def test_lone_surrogates_are_escaped_not_fatal(fake: tuple[FakeAPI, str]) -> None:
    api, _ = fake
    api.list_scripts = [
        api.raw(
            b'{"kind":"PodList","apiVersion":"v1","metadata":{"resourceVersion":"1"},"items":['
            b'{"metadata":{"name":"s\\ud800","namespace":"default","resourceVersion":"1"},"data":"x\\udfff"}]}'
        )
    ]
    spaced = (
        b'{"type": "MODIFIED", "object": {"metadata": {"name": "t\\udbff", "namespace": "default", '
        b'"resourceVersion": "2"}, "data": "\\ud83d"}}\n'
    )
    api.watch_scripts = [api.stream(spaced, then="stall")]
    with structlog.testing.capture_logs() as logs:
        async with running(fake) as h:
            await h.rec.wait_for(lambda: len(h.rec.events) == 2)
            assert h.rec.phases() == [InformerPhase.WATCHING]
    for ev in h.rec.events:
        text = ev.object_json.decode("utf-8")  # valid UTF-8: lone surrogates are \u escapes
        assert json.loads(text) == ev.object
        ev.key.encode("utf-8")  # keys end up in logs: they must be encodable
    assert h.rec.events[0].object["data"] == "x\udfff"
    assert "upstream.error" not in [entry["event"] for entry in logs]


# -- resourceVersions ------------------------------------------------------------------------------


def test_resource_version_validator() -> None:
    for good in ("1", "0", "123456789", "9" * 32):
        assert is_valid_resource_version(good)
    for bad in ("", "12a", "\uff11\uff12", "\u00b2", "-1", " 1", "1.0", "9" * 33, "9" * 5000):
        assert not is_valid_resource_version(bad)


async def test_bad_resource_versions_are_malformed_and_resume_from_the_last_good(
    fake: tuple[FakeAPI, str],
) -> None:
    api, _ = fake
    api.list_scripts = [api.list_of([], "9" * 5000), api.list_of([pod("a", "3")], "3")]
    api.watch_scripts = [
        api.stream(line("ADDED", pod("b", 4)), line("ADDED", pod("c", "12a"))),
        api.stream(bookmark("\uff11\uff12")),
        api.stream(line("MODIFIED", pod("b", 5)), then="stall"),
    ]
    async with running(fake) as h:
        await h.rec.wait_for(lambda: h.informer.resource_version == "5")
        degraded = h.rec.degraded()
        assert [(s.error_code, s.error_reason) for s in degraded] == [(502, "MalformedResponse")] * 3
        assert "resourceVersion" in degraded[0].error_message
        assert "5000" in degraded[0].error_message  # says what is wrong, without echoing it
        assert len(degraded[0].error_message) < 200
        assert [q["resourceVersion"] for q in api.watch_requests] == ["3", "4", "4"]
        assert h.cache() == {"default/a": "3", "default/b": "5"}
        assert len(api.list_requests) == 2
