"""Chaos convergence: the proof of PROTOCOL.md section 4's guarantee.

Dozens of clients over several channels; random creates, updates and deletes; random upstream
faults (cut streams, 410s, stalls, 500s, 401 with token rotation); clients that disconnect and
resume, that come back too late and re-subscribe with their last resourceVersion, that stop
reading for a while, that subscribe and unsubscribe at random. When the churn stops, every
client's state for every channel it holds must equal the simulator's.

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

from tests.stacks import fast_upstream, sim_and_gateway
from watchgw.client.client import WatchClient, WatchClientError, object_key
from watchgw.config import Config, config_from_mapping
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
        self.clients = [WatchClient(url, client_id=f"chaos-{seed}-{i:03d}") for i in range(clients)]
        self.away: dict[WatchClient, str] = {}  # client -> "resume" | "late"
        self.paused: set[WatchClient] = set()
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
    def present(self) -> list[WatchClient]:
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

    async def come_back(self, client: WatchClient) -> None:
        how = self.away.pop(client)
        if how == "late":
            await self.hub.wait_for(lambda: client.client_id not in self.hub.sessions, timeout=10)
            self.report.late_reconnects += 1
        connected = await client.reconnect()
        if connected.get("resumed"):
            self.report.resumes += 1

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

    logging.disable(logging.WARNING)
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
            "pauses",
            "subscription_changes",
            "resyncs",
            "events_delivered",
            "checked",
            "mismatches",
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
