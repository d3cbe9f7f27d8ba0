"""Chaos convergence: the proof of PROTOCOL.md section 4's guarantee.

Dozens of clients over several channels; random creates, updates and deletes; random upstream
faults (cut streams, 410s, stalls, 500s, 401 with token rotation); clients that disconnect and
resume, that come back too late and re-subscribe with their last resourceVersion (or, half of
the time, with the resourceVersion of a random event they applied long before: the catch-up then
replays older events onto a newer state), that stop reading for a while, that subscribe and
unsubscribe at random. When the churn stops, every client's state for every channel it holds must
equal the simulator's.

Used by ``tests/e2e/test_chaos.py`` (several seeds in CI) and by ``make soak``
(``python -m tests.chaos --seconds 300``), which prints the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import ujson

from tests.stacks import fast_upstream, sim_and_gateway
from watchgw.client.client import WatchClient, WatchClientError, object_key
from watchgw.client.sse import SSEEvent
from watchgw.config import Config, config_from_mapping
from watchgw.hub.keys import InvalidField, channel_key, target_from_fields
from watchgw.sim import Fault, Simulator
from watchgw.web.keys import HUB

SECRETS = "api/v1/secrets"
ZONES = "apis/dns.networking.miloapis.com/v1alpha1/dnszones"
CHANNELS: list[dict[str, str]] = [
    {"resourceType": SECRETS, "projectId": "proj-a", "namespace": "default"},
    {"resourceType": SECRETS, "projectId": "proj-b", "namespace": "default"},
    {"resourceType": ZONES, "projectId": "proj-a", "namespace": "default"},
    {"resourceType": SECRETS, "projectId": "proj-a", "namespace": "default", "labelSelector": "tier=web"},
]
SCOPES = [(SECRETS, "proj-a"), (SECRETS, "proj-b"), (ZONES, "proj-a")]


@dataclasses.dataclass
class ChaosReport:
    seed: int
    steps: int = 0
    changes: int = 0
    faults: int = 0
    resumes: int = 0
    late_reconnects: int = 0
    random_resumes: int = 0
    """Channels re-subscribed (after a late reconnect) from a random version the client applied."""
    random_behind: int = 0
    """Of those, the ones from a version older than the channel's last (older events replayed)."""
    random_caught_up: int = 0
    """Of those, the ones answered with a catch-up and ``synced`` (the others: ``resync``)."""
    pauses: int = 0
    subscription_changes: int = 0
    resyncs: int = 0
    events_delivered: int = 0
    checked: int = 0
    mismatches: int = 0
    ids_out_of_order: int = 0
    rss_start_kb: int = 0
    rss_end_kb: int = 0
    seconds: float = 0.0

    def line(self) -> str:
        return " ".join(f"{k}={v}" for k, v in dataclasses.asdict(self).items())


def rss_kb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def expected_state(sim: Simulator, fields: dict[str, str]) -> dict[str, Any]:
    objects = sim.list_objects(
        fields["resourceType"], project=fields["projectId"], namespace=fields["namespace"]
    )
    if fields.get("labelSelector") == "tier=web":
        objects = [o for o in objects if (o["metadata"].get("labels") or {}).get("tier") == "web"]
    return {object_key(o): o for o in objects}


def chaos_config(sim_url: str, token_file: Path) -> Config:
    config = config_from_mapping(
        {
            "upstream": {"url": sim_url, "token_file": str(token_file)},
            "limits": {
                "grace_period_s": 0.3,
                "session_ttl_s": 0.4,
                "client_buffer_bytes": 32 * 1024,
                "channel_history": 40,
                "subscribe_burst": 100000,
                "subscribe_rate_per_s": 100000,
                "stalled_client_timeout_s": 5,
            },
        }
    )
    return fast_upstream(config, backoff_reset_s=0.5, inactivity_timeout_s=0.8, watch_timeout_s=5)


RESERVOIR_SIZE = 32


class SamplingClient(WatchClient):
    """A client that remembers a random sample of the positions it could resume each channel from.

    The gateway promises that the ``resourceVersion`` of any ``watch`` or ``synced`` event applied
    while the channel was synced is a position to subscribe from, not only the last one. Per
    channel, a reservoir sample (at most ``RESERVOIR_SIZE`` versions: memory bounded however long
    the run) of those applied since the channel's state last started over (``resync``, a fresh
    subscription) or was dropped (unsubscribed).
    """

    def __init__(self, *args: Any, seed: int | str, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.sample_rng = random.Random(seed)
        self.reservoirs: dict[str, list[str]] = {}
        self.seen: dict[str, int] = {}
        """Channel -> versions offered to its reservoir (the sampling's denominator)."""
        self.rewound: set[str] = set()
        """Channels subscribed from a random version, not yet answered (``synced`` or ``resync``)."""
        self.random_caught_up = 0

    def forget_positions(self, channel: str) -> None:
        """The channel's state starts over (or is dropped): no position of it holds any more."""
        self.reservoirs.pop(channel, None)
        self.seen.pop(channel, None)
        self.rewound.discard(channel)

    def _offer(self, channel: str, version: str) -> None:
        seen = self.seen.get(channel, 0) + 1
        self.seen[channel] = seen
        reservoir = self.reservoirs.setdefault(channel, [])
        if len(reservoir) < RESERVOIR_SIZE:
            reservoir.append(version)
        else:
            slot = self.sample_rng.randrange(seen)
            if slot < RESERVOIR_SIZE:
                reservoir[slot] = version

    def apply(self, event: SSEEvent) -> None:
        super().apply(event)
        kind = event.event
        if kind not in ("watch", "synced", "resync", "unsubscribed"):
            return
        data = ujson.loads(event.data) if event.data else {}
        channel = data.get("channel", "")
        if kind in ("resync", "unsubscribed"):
            self.forget_positions(channel)
        elif kind == "synced" and channel in self.rewound:
            self.rewound.discard(channel)
            self.random_caught_up += 1
        if (
            kind in ("watch", "synced")
            and channel in self.synced
            and (version := data.get("resourceVersion"))
        ):
            # Snapshot and catch-up frames arrive while the channel is not synced: not positions.
            self._offer(channel, version)

    def random_position(self, channel: str) -> str | None:
        reservoir = self.reservoirs.get(channel)
        return self.sample_rng.choice(reservoir) if reservoir else None

    def rewind(self, channel: str, version: str) -> None:
        """Subscribing from ``version`` (older than the state held): until ``synced``, the state
        mixes older events into a newer one, so only positions up to ``version`` stay valid."""
        self.resource_versions[channel] = version
        self.rewound.add(channel)
        self.reservoirs[channel] = [v for v in self.reservoirs.get(channel, []) if int(v) <= int(version)]
        self.seen[channel] = len(self.reservoirs[channel])

    async def subscribe(self, **fields: Any) -> str:
        if not fields.get("resourceVersion"):
            channel_fields = {k: v for k, v in fields.items() if k not in ("resourceVersion", "snapshot")}
            try:
                key = channel_key(target_from_fields(channel_fields))
            except InvalidField:
                pass
            else:
                if key not in self.subscriptions:  # a fresh subscription: the state starts over
                    self.forget_positions(key)
        return await super().subscribe(**fields)

    async def unsubscribe(self, channel: str) -> None:
        self.forget_positions(channel)
        await super().unsubscribe(channel)


class Chaos:
    def __init__(
        self, seed: int, *, clients: int, sim: Simulator, url: str, hub: Any, token_file: Path
    ) -> None:
        self.rng = random.Random(seed)
        self.sim = sim
        self.url = url
        self.hub = hub
        self.token_file = token_file
        self.token_serial = 0
        self.report = ChaosReport(seed)
        self.clients = [
            SamplingClient(url, client_id=f"chaos-{seed}-{i:03d}", seed=f"{seed}-{i}") for i in range(clients)
        ]
        self.away: dict[SamplingClient, str] = {}  # client -> "resume" | "late"
        self.paused: set[SamplingClient] = set()
        self.serial = 0

    async def start(self) -> None:
        for client in self.clients:
            await client.connect()
            for fields in self.rng.sample(CHANNELS, self.rng.randint(1, 3)):
                await client.subscribe(**fields)

    # ------------------------------------------------------------------ the control plane
    def mutate(self) -> None:
        resource_type, project = self.rng.choice(SCOPES)
        existing = self.sim.list_objects(resource_type, project=project, namespace="default")
        roll = self.rng.random()
        if len(existing) < 3 or roll < 0.4:
            self.serial += 1
            obj = {
                "metadata": {"name": f"o-{self.serial}", "labels": {"tier": self.rng.choice(["web", "db"])}},
                "spec": {"v": self.rng.random()},
            }
            self.sim.create(resource_type, obj, project=project, namespace="default")
        elif roll < 0.8:
            obj = self.rng.choice(existing)
            obj["spec"] = {"v": self.rng.random()}
            if self.rng.random() < 0.3:  # moves in or out of the label-selected channel
                obj["metadata"]["labels"] = {"tier": self.rng.choice(["web", "db"])}
            self.sim.update(resource_type, obj, project=project, namespace="default")
        else:
            self.sim.delete(
                resource_type,
                self.rng.choice(existing)["metadata"]["name"],
                project=project,
                namespace="default",
            )
        self.report.changes += 1

    def fault(self) -> None:
        kind = self.rng.choice(["cut", "gone", "error500", "stall", "compact", "rotate"])
        if kind == "cut":
            self.sim.cut_watches()
        elif kind == "gone":
            self.sim.inject(Fault(kind="gone", on="watch", count=1))
            self.sim.cut_watches()
        elif kind == "error500":
            self.sim.inject(Fault(kind="error500", on="any", count=2))
            self.sim.cut_watches()
        elif kind == "stall":
            self.sim.inject(Fault(kind="stall", on="watch", count=1))
            self.sim.cut_watches()
        elif kind == "compact":
            self.sim.compact()
            self.sim.cut_watches()
        else:
            # Token rotation: the old token is rejected (401) from now on; the file holds the new one.
            self.token_serial += 1
            new = f"chaos-token-{self.token_serial:04d}"
            self.sim.tokens = {new: "gateway"}
            self.token_file.write_text(new + "\n")
            self.sim.cut_watches()
        self.report.faults += 1

    # ------------------------------------------------------------------ the clients
    def present(self) -> list[SamplingClient]:
        return [c for c in self.clients if c not in self.away]

    async def client_action(self) -> None:
        roll = self.rng.random()
        if roll < 0.3 and self.present():
            client = self.rng.choice(self.present())
            await client.disconnect()
            self.paused.discard(client)
            client.resume_reading()
            self.away[client] = "late" if self.rng.random() < 0.35 else "resume"
        elif roll < 0.55 and self.away:
            client = self.rng.choice(list(self.away))
            await self.come_back(client)
        elif roll < 0.75 and self.present():
            client = self.rng.choice(self.present())
            if client in self.paused:
                client.resume_reading()
                self.paused.discard(client)
            else:
                client.pause_reading()
                self.paused.add(client)
                self.report.pauses += 1
        elif self.present():
            client = self.rng.choice(self.present())
            fields = self.rng.choice(CHANNELS)
            held = [ch for ch, f in client.subscriptions.items() if f == fields]
            try:
                if held:
                    await client.unsubscribe(held[0])
                else:
                    await client.subscribe(**fields)
            except WatchClientError as exc:
                if exc.status != 404:  # a session can end while its stream is away
                    raise
            self.report.subscription_changes += 1

    async def come_back(self, client: SamplingClient) -> None:
        how = self.away.pop(client)
        if how == "late":
            await self.hub.wait_for(lambda: client.client_id not in self.hub.sessions, timeout=10)
            self.report.late_reconnects += 1
            if self.rng.random() < 0.5:
                await self.resubscribe_from_random_versions(client)
                return
        connected = await client.reconnect()
        if connected.get("resumed"):
            self.report.resumes += 1

    async def resubscribe_from_random_versions(self, client: SamplingClient) -> None:
        """A new stream (the session is gone), then each held channel from a random position the
        client applied rather than its last: the local state stays, newer than that position."""
        await client.connect()
        for channel, fields in list(client.subscriptions.items()):
            last = client.resource_versions.get(channel)
            version = client.random_position(channel)
            if version is None:
                version = last  # never synced since its state started over: as resubscribe() does
            else:
                self.report.random_resumes += 1
                if last and int(version) < int(last):
                    self.report.random_behind += 1
                client.rewind(channel, version)
            await client.subscribe(**fields, **({"resourceVersion": version} if version else {}))

    # ------------------------------------------------------------------ the run
    async def run(self, *, steps: int | None = None, seconds: float | None = None) -> ChaosReport:
        started = time.monotonic()
        self.report.rss_start_kb = rss_kb()
        await self.start()
        step = 0
        while (steps is not None and step < steps) or (
            seconds is not None and time.monotonic() - started < seconds
        ):
            step += 1
            roll = self.rng.random()
            if roll < 0.6:
                for _ in range(self.rng.randint(1, 4)):
                    self.mutate()
            elif roll < 0.7:
                self.fault()
            else:
                await self.client_action()
            await asyncio.sleep(self.rng.choice([0, 0, 0.002, 0.01]))  # pacing of the churn, bounded
        self.report.steps = step
        await self.settle()
        self.report.seconds = round(time.monotonic() - started, 2)
        self.report.rss_end_kb = rss_kb()
        return self.report

    async def settle(self) -> None:
        """Churn has stopped: every client comes back and must converge."""
        for client in list(self.paused):
            client.resume_reading()
        self.paused.clear()
        for client in list(self.away):
            await self.come_back(client)
        for client in self.clients:
            for channel, fields in list(client.subscriptions.items()):
                expected = expected_state(self.sim, fields)
                self.report.checked += 1
                try:
                    await client.wait_for(
                        lambda c, ch=channel, e=expected: ch in c.synced and c.objects(ch) == e, timeout=20
                    )
                except TimeoutError:
                    self.report.mismatches += 1
                    got = client.objects(channel)
                    print(
                        f"MISMATCH seed={self.report.seed} client={client.client_id} channel={channel} "
                        f"synced={channel in client.synced} missing={sorted(set(expected) - set(got))[:5]} "
                        f"extra={sorted(set(got) - set(expected))[:5]}",
                        file=sys.stderr,
                    )
            self.report.resyncs += client.resyncs
            self.report.events_delivered += client.events_received
            self.report.ids_out_of_order += client.ids_out_of_order
            self.report.random_caught_up += client.random_caught_up

    async def close(self) -> None:
        for client in self.clients:
            await client.close()


async def run_chaos(
    seed: int, *, clients: int = 24, steps: int | None = 200, seconds: float | None = None
) -> ChaosReport:
    with tempfile.TemporaryDirectory() as tmp:
        token_file = Path(tmp) / "token"
        token_file.write_text("chaos-token-0000\n")

        def prepare(sim: Simulator) -> None:
            sim.tokens = {"chaos-token-0000": "gateway"}

        async with sim_and_gateway(
            lambda sim_url: chaos_config(sim_url, token_file),
            prepare=prepare,
            history_limit=200,
            bookmark_interval_s=0.5,
        ) as (sim, app, url):
            chaos = Chaos(seed, clients=clients, sim=sim, url=url, hub=app[HUB], token_file=token_file)
            try:
                return await chaos.run(steps=steps, seconds=seconds)
            finally:
                await chaos.close()


def main() -> int:
    parser = argparse.ArgumentParser(description="chaos soak: convergence under faults (make soak)")
    parser.add_argument("--seconds", type=float, default=300.0, help="total soak time")
    parser.add_argument("--round-seconds", type=float, default=30.0, help="churn time per seed")
    parser.add_argument("--clients", type=int, default=48)
    args = parser.parse_args()
    import logging

    import structlog

    logging.disable(logging.WARNING)
    # The gateway logs through structlog, which logging.disable does not reach (its default
    # configuration prints every level to stdout): only errors, or the figures drown.
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.ERROR))
    started = time.monotonic()
    seed = 1000
    totals = ChaosReport(seed=-1)
    while time.monotonic() - started < args.seconds:
        report = asyncio.run(run_chaos(seed, clients=args.clients, steps=None, seconds=args.round_seconds))
        print(report.line(), flush=True)
        for name in (
            "steps",
            "changes",
            "faults",
            "resumes",
            "late_reconnects",
            "random_resumes",
            "random_behind",
            "random_caught_up",
            "pauses",
            "subscription_changes",
            "resyncs",
            "events_delivered",
            "checked",
            "mismatches",
            "ids_out_of_order",
        ):
            setattr(totals, name, getattr(totals, name) + getattr(report, name))
        totals.rss_start_kb = totals.rss_start_kb or report.rss_start_kb
        totals.rss_end_kb = report.rss_end_kb
        seed += 1
    totals.seconds = round(time.monotonic() - started, 1)
    print("TOTAL " + totals.line())
    return 1 if totals.mismatches or totals.ids_out_of_order else 0


if __name__ == "__main__":
    raise SystemExit(main())
