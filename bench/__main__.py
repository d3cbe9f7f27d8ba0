"""``python -m bench [scenario ...] [--quick]``: the gateway's figures, end to end, on this machine.

Three kinds of processes: the upstream simulator (``bench/upstream.py``), the gateway
(``watchgw serve``) and the load generator(s) (``bench/loadgen.py``); ``cluster-fanout`` and
``storm`` add gateways behind nginx (``bench.harness.behind_nginx``). CPU and RSS are read from
``/proc``. Results: one line per scenario, a table, and ``bench/results/latest.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.harness import Bench, running
from bench.scenarios import SCENARIOS, Figures, Sizes

RESULTS = Path(__file__).resolve().parent / "results" / "latest.json"


def _num(value: Any, fmt: str = ",.0f") -> str:
    return format(value, fmt) if isinstance(value, int | float) else str(value)


def headline(label: str, f: Figures) -> tuple[str, str, bool | None]:
    """(figures, goal or reference, goal met) for the summary table."""
    name = label.split("@")[0]
    if "error" in f or "skipped" in f:
        return (str(f.get("error") or f.get("skipped")), "", None)
    if name.startswith("fanout"):
        text = f"{_num(f['deliveries_per_s'])} deliveries/s, {f['gw_us_per_delivery']} us/delivery"
        if name == "fanout-5000":
            return text, ">= 150,000 deliveries/s", f["deliveries_per_s"] >= 150_000
        return text, "ref (TS hub): ~14,000/s, 80-120 us/delivery", None
    if name.startswith("steady"):
        text = f"p50 {f['p50_ms']} ms, p99 {f['p99_ms']} ms, {f['gw_us_per_delivery']} us/delivery"
        if name == "steady-10":
            return text, "p99 < 30 ms", f["p99_ms"] < 30
        return text, "", None
    if name == "cluster-fanout":
        return (
            f"{_num(f['direct_deliveries_per_s'])}/s 1 direct, {_num(f['nginx1_deliveries_per_s'])}/s 1 "
            f"behind nginx, {_num(f['nginx2_deliveries_per_s'])}/s 2 behind nginx "
            f"(x{f['ratio_nginx2_vs_direct']} of direct)",
            "2 behind nginx vs 1 direct, same run",
            None,
        )
    if name == "storm":
        return (
            f"{f['reconnected']} of {f['clients']} clients back, all {f['channels']} channels synced "
            f"{f['converged_s']} s after the kill; survivors' p99 {f['survivors_p99_ms_storm']} ms "
            f"(before: {f['survivors_p99_ms_before']} ms)",
            "full snapshots (no resourceVersion), reconnects at once",
            None,
        )
    if name.startswith("channels"):
        return f"{_num(f['deliveries_per_s'])} deliveries/s, {f['gw_us_per_delivery']} us/delivery", "", None
    if name == "idle-rss":
        return (
            f"{f['kb_per_idle_client']} KB per idle client at {f['clients']:,} "
            f"({f['kb_per_idle_client_no_snapshot']} KB without the 10 KB snapshot), "
            f"{f['kb_per_idle_client_large']} KB at {f['large_clients']:,}; "
            f"traced {f['traced_bytes_per_client']:,} B",
            "<= 12 KB at 5,000 and 20,000 (ref nchan ~10 KB)",
            max(f["kb_per_idle_client"], f["kb_per_idle_client_large"]) <= 12,
        )
    if name == "slow-client":
        ok = f["p99_ms_with_stalled"] <= max(2 * f["p99_ms_alone"], f["p99_ms_alone"] + 10)
        return (
            f"fast p99 {f['p99_ms_alone']} ms alone, {f['p99_ms_with_stalled']} ms with a stalled client",
            "stalled client does not delay others",
            ok and f["complete_with_stalled"] >= 0.999,
        )
    if name == "abuse":
        ok = (
            f["growth_mb"] < 100
            and f["after_vs_baseline"] <= 1.2
            and f["stalled_closed"] == f["stalled"]
            and f["healthz_p99_ms"] < 50
            and f["synced_s_during"] <= max(2 * f["synced_s_alone"], f["synced_s_alone"] + 0.1)
        )
        return (
            f"{f['sessions']} dropped sessions: +{f['growth_mb']} MB, after x{f['after_vs_baseline']}; "
            f"{f['stalled']} stalled requests closed in {f['stalled_all_closed_s']} s, healthz p99 "
            f"{f['healthz_p99_ms']} ms; synced {f['synced_s_alone']} s alone, {f['synced_s_during']} s "
            f"beside an identity at its limits",
            "< 100 MB, <= 1.2x after; closed by header timeout; p99 < 50 ms; normal",
            ok,
        )
    if name == "informer":
        return (
            f"{_num(f.get('events_per_s', 'n/a'))} events/s, {f.get('cpu_us_per_event', 'n/a')} us/event",
            ">= 50,000 events/s",
            f.get("events_per_s", 0) >= 50_000,
        )
    return "", "", None


def line(name: str, f: Figures) -> str:
    return f"{name:<26} " + " ".join(f"{k}={v}" for k, v in f.items())


def table(results: dict[str, Figures], *, quick: bool) -> str:
    """The summary; a ``--quick`` run uses small sizes, so no goal is judged on it."""
    rows = [("scenario", "figures", "goal / reference", "")]
    for name, f in results.items():
        text, goal, met = headline(name, f)
        verdict = "(quick)" if quick and goal else {True: "MET", False: "MISSED", None: ""}[met]
        rows.append((name, text, goal, verdict))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    out = []
    for i, r in enumerate(rows):
        out.append("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
        if i == 0:
            out.append("  ".join("-" * w for w in widths).rstrip())
    return "\n".join(out)


async def _scenario(bench: Bench, name: str, sizes: Sizes) -> Figures:
    began = time.monotonic()
    try:
        figures = await SCENARIOS[name](bench, sizes)
    except Exception as exc:  # one broken scenario must not hide the others' figures
        figures = {"error": f"{type(exc).__name__}: {exc}"}
        # The run's gateway and those a scenario started behind nginx (bench.harness.behind_nginx).
        log = [
            x
            for path in sorted(bench.workdir.rglob("gateway*.log"))
            for x in path.read_text(errors="replace").splitlines()
        ]
        errors = [x for x in log if '"error"' in x or "Traceback" in x][-3:]
        if errors:
            figures["gateway_log"] = errors
        try:  # leave a clean gateway for the next scenario
            await bench.close_clients()
        except Exception as cleanup:
            figures["cleanup_error"] = repr(cleanup)
    figures["scenario_s"] = round(time.monotonic() - began, 1)
    return figures


async def run(names: list[str], *, quick: bool, loadgens: int, compare: Path | None) -> dict[str, Figures]:
    """Every scenario on one set of processes; with ``compare``, each scenario twice, alternately
    on this tree's gateway and on the candidate's (fresh processes for each)."""
    results: dict[str, Figures] = {}
    sizes = Sizes(quick=quick)
    with tempfile.TemporaryDirectory(prefix="watchgw-bench-") as tmp:
        workdir = Path(tmp)
        if compare is None:
            async with running(workdir, loadgens=loadgens) as bench:
                for name in names:
                    results[name] = await _scenario(bench, name, sizes)
                    print(line(name, results[name]), flush=True)
            return results
        for name in names:
            for label, path in ((name, None), (f"{name}@compare", compare)):
                async with running(workdir, loadgens=loadgens, gateway_path=path) as bench:
                    results[label] = await _scenario(bench, name, sizes)
                print(line(label, results[label]), flush=True)
    return results


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("scenarios", nargs="*", metavar="SCENARIO", help=f"any of: {', '.join(SCENARIOS)}")
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke run in about 30 s")
    parser.add_argument("--loadgens", type=int, default=1, help="load generator processes (default 1)")
    parser.add_argument("--output", type=Path, default=RESULTS, help="JSON results file")
    parser.add_argument(
        "--compare",
        type=Path,
        metavar="DIR",
        help="A/B: also run each scenario on the watchgw package found in DIR (a patched copy)",
    )
    args = parser.parse_args()
    unknown = [n for n in args.scenarios if n not in SCENARIOS]
    if unknown:
        parser.error(f"unknown scenario {unknown[0]!r}; choose from {', '.join(SCENARIOS)}")
    names = args.scenarios or list(SCENARIOS)
    began = time.monotonic()
    try:
        results = asyncio.run(run(names, quick=args.quick, loadgens=args.loadgens, compare=args.compare))
    except KeyboardInterrupt:
        print("interrupted; every process started was stopped", file=sys.stderr)
        return 130
    elapsed = time.monotonic() - began
    print()
    print(table(results, quick=args.quick))
    print(f"\ntotal {elapsed:.0f} s, {os.cpu_count()} CPUs, loadgens={args.loadgens}, quick={args.quick}")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(
        json.dumps(
            {
                "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
                "quick": args.quick,
                "loadgens": args.loadgens,
                "compare": str(args.compare) if args.compare else None,
                "total_s": round(elapsed, 1),
                "scenarios": results,
            },
            indent=2,
        )
        + "\n"
    )
    print(f"written: {args.output}")
    failed = any("error" in f for f in results.values())
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
