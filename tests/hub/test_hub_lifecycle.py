"""Sessions and streams in the hub: expiry, attaching, ids (no HTTP: the races are between calls)."""

from __future__ import annotations

import asyncio

from tests.conftest import make_config
from tests.fakes import FakeUpstreams
from tests.hub.test_session import FakeTransport
from watchgw.hub.frames import FrameFactory
from watchgw.hub.hub import WatchHub


def make_hub(*, session_ttl_s: float) -> WatchHub:
    config = make_config(limits={"session_ttl_s": session_ttl_s})
    return WatchHub(limits=config.limits, upstream_factory=FakeUpstreams())


async def wait_past(seconds: float) -> None:
    """Let a deadline pass (what is asserted is that something did NOT happen by then)."""
    await asyncio.sleep(seconds)


async def test_a_stream_that_is_starting_stops_the_session_expiring() -> None:
    hub = make_hub(session_ttl_s=0.05)
    first = hub.open_stream(client_id="client-0001", identity="anonymous", last_event_id=None)
    generation = hub.attach(first.session, FakeTransport(), chunked=True, last_event_id=None)
    hub.stream_closed(first.session, generation)  # the session now expires in 50 ms...
    again = hub.open_stream(client_id="client-0001", identity="anonymous", last_event_id=1)
    await wait_past(0.15)  # ...unless the stream that opened meanwhile (still starting) stops it
    assert hub.sessions.get("client-0001") is again.session
    assert hub.attach(again.session, FakeTransport(), chunked=True, last_event_id=1) is not None
    await hub.close()


async def test_a_stream_never_attaches_to_a_session_that_ended_while_it_started() -> None:
    hub = make_hub(session_ttl_s=30)
    grant = hub.open_stream(client_id="client-0002", identity="anonymous", last_event_id=None)
    hub.end_session(grant.session)  # e.g. shutdown, or an expiry, while the response is prepared
    assert hub.attach(grant.session, FakeTransport(), chunked=True, last_event_id=None) is None
    assert "client-0002" not in hub.sessions
    hub.stream_closed(grant.session, None)
    assert "client-0002" not in hub.sessions, "an ended session is not scheduled again"
    await hub.close()


def test_ids_stay_above_a_previous_process_even_right_after_a_burst() -> None:
    """Ids follow a nanosecond clock: a burst of frames (here 1,000 within one microsecond, far
    beyond what a process makes) does not take them past what the next process starts from."""
    now = [1_800_000_000_000_000_000]
    before = FrameFactory(clock=lambda: now[0])
    last = 0
    for _ in range(1000):
        last = before.event("synced", {"channel": "c"}).id
    now[0] += 1_001  # the restart takes (at least) a microsecond
    after = FrameFactory(clock=lambda: now[0])
    assert after.event("connected", {}).id > last
