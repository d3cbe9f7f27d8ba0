"""Command line (PROTOCOL.md section 7): serve / check-config / demo / sim / --version."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import signal
import sys
from collections.abc import Coroutine, Sequence
from typing import Any

import structlog

from watchgw import __version__
from watchgw.config import Config, ConfigError, LogConfig, config_from_mapping, load_config
from watchgw.logs import configure_logging

log = structlog.get_logger("watchgw")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="watchgw",
        description="One Server-Sent Events stream per client, one shared Kubernetes watch per channel.",
    )
    parser.add_argument("--version", action="version", version=f"watchgw {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser("serve", help="run the gateway")
    serve.add_argument("--config", required=True, help="TOML configuration file")
    serve.add_argument(
        "--port",
        type=int,
        help="listen on this port instead of server.port (one instance per core: watchgw@<port>.service)",
    )

    check = commands.add_parser("check-config", help="validate a configuration file and exit 0 or 1")
    check.add_argument("--config", required=True, help="TOML configuration file")

    demo = commands.add_parser(
        "demo", help="the gateway on a built-in simulated control plane, with a live page"
    )
    demo.add_argument("--host", default="127.0.0.1")
    demo.add_argument("--port", type=int, default=8080)
    demo.add_argument("--period", type=float, default=1.0, help="seconds between simulated changes")

    sim = commands.add_parser("sim", help="run the Kubernetes list/watch simulator alone")
    sim.add_argument("--host", default="127.0.0.1")
    sim.add_argument("--port", type=int, default=8081)
    sim.add_argument("--demo", action="store_true", help="populate and change sample resources")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "check-config":
        try:
            load_config(args.config)
        except ConfigError as exc:
            print(f"watchgw: {exc}", file=sys.stderr)
            return 1
        print(f"{args.config}: ok")
        return 0
    if args.command == "serve":
        try:
            config = load_config(args.config)
            if args.port is not None:
                if not 0 <= args.port <= 65535:
                    raise ConfigError(f"--port must be from 0 to 65535, not {args.port}")
                config = dataclasses.replace(
                    config, server=dataclasses.replace(config.server, port=args.port)
                )
        except ConfigError as exc:
            print(f"watchgw: {exc}", file=sys.stderr)
            return 1
        configure_logging(config.log)
        asyncio.run(_serve(config, args.config))
        return 0
    if args.command == "demo":
        configure_logging(LogConfig())
        asyncio.run(_demo(host=args.host, port=args.port, period_s=args.period))
        return 0
    if args.command == "sim":
        configure_logging(LogConfig())
        from watchgw.sim.server import serve_sim

        asyncio.run(_until_signalled(serve_sim(host=args.host, port=args.port, demo_churn=args.demo)))
        return 0
    raise AssertionError(args.command)  # pragma: no cover - argparse enforces the choices


async def _until_signalled(main: Coroutine[Any, Any, None]) -> None:
    """Run ``main`` until SIGTERM or SIGINT, then cancel it and let it clean up."""
    task = asyncio.create_task(main)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, task.cancel)
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def _serve(config: Config, path: str) -> None:
    from watchgw.web.app import make_app
    from watchgw.web.server import serve_until_signalled

    def reload() -> None:
        # What can change without a restart: the log level and format. Everything else is read
        # again on the next start; say so rather than pretend.
        try:
            fresh = load_config(path)
        except ConfigError as exc:
            log.error("config.reload_failed", error=str(exc))
            return
        configure_logging(fresh.log)
        log.info("config.reloaded", note="log settings applied; other changes need a restart")

    app = make_app(config)
    await serve_until_signalled(
        app,
        host=config.server.host,
        port=config.server.port,
        shutdown_timeout_s=config.server.shutdown_timeout_s,
        on_reload=reload,
    )


def demo_config(upstream_url: str, *, host: str, port: int) -> Config:
    config = config_from_mapping(
        {
            "server": {"host": host, "port": port, "stats": True, "metrics": True, "shutdown_timeout_s": 3},
            "upstream": {"url": upstream_url},
            "limits": {"grace_period_s": 10},
        }
    )
    return dataclasses.replace(config)


async def _demo(*, host: str, port: int, period_s: float) -> None:
    from watchgw.sim import running_simulator
    from watchgw.sim.demo import run_demo_churn
    from watchgw.web.app import make_app
    from watchgw.web.server import serve_until_signalled

    async with running_simulator() as (sim, sim_url):
        churn = asyncio.create_task(run_demo_churn(sim, period_s=period_s))
        app = make_app(demo_config(sim_url, host=host, port=port), static=True)

        def started(url: str) -> None:
            print(
                f"\nwatchgw demo\n  live page:   {url}/\n  stats:       {url}/api/watch/stats\n"
                f"  metrics:     {url}/metrics\n  simulator:   {sim_url}\n"
                f"  try:         curl -N '{url}/api/watch/stream?cid=demo-curl-1'\n"
                "  Ctrl-C stops it.\n",
                flush=True,
            )

        try:
            await serve_until_signalled(app, host=host, port=port, shutdown_timeout_s=3, on_started=started)
        finally:
            churn.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await churn
