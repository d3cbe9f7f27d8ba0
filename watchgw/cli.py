"""Command line (PROTOCOL.md section 7): serve / check-config / demo / sim / --version."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import errno
import os
import signal
import socket
import sys
from collections.abc import Coroutine, Sequence
from typing import Any

import structlog

from watchgw import __version__
from watchgw.config import Config, ConfigError, LogConfig, config_from_mapping, load_config
from watchgw.logs import configure_logging

log = structlog.get_logger("watchgw")


class _HelpFormatter(argparse.HelpFormatter):
    """Every option's help ends with its default, where it has one: argparse's own
    ``ArgumentDefaultsHelpFormatter`` also prints ``(default: None)`` for required options and
    ``(default: False)`` for flags, which says nothing."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if (
            action.option_strings
            and "%(default)" not in text
            and action.default not in (None, False, argparse.SUPPRESS)
        ):
            text += " (default: %(default)s)"
        return text


class _Parser(argparse.ArgumentParser):
    """An argument parser with :class:`_HelpFormatter`, also for every subcommand."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", _HelpFormatter)
        super().__init__(*args, **kwargs)


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="watchgw",
        description="One Server-Sent Events stream per client, one shared Kubernetes watch per channel.",
    )
    parser.add_argument("--version", action="version", version=f"watchgw {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)

    serve = commands.add_parser("serve", help="run the gateway")
    serve.add_argument("--config", required=True, help="TOML configuration file")
    serve.add_argument(
        "--port",
        type=int,
        help="port to listen on (default: server.port of the config); one instance per core:"
        " watchgw@<port>.service. A socket passed by systemd (watchgw.socket) takes precedence",
    )

    check = commands.add_parser("check-config", help="validate a configuration file and exit 0 or 1")
    check.add_argument("--config", required=True, help="TOML configuration file")

    demo = commands.add_parser(
        "demo", help="the gateway on a built-in simulated control plane, with a live page"
    )
    demo.add_argument("--host", default="127.0.0.1", help="address the gateway listens on")
    demo.add_argument("--port", type=int, default=8080, help="port of the gateway and its live page")
    demo.add_argument("--period", type=float, default=1.0, help="seconds between simulated changes")

    sim = commands.add_parser("sim", help="run the Kubernetes list/watch simulator alone")
    sim.add_argument("--host", default="127.0.0.1", help="address the simulator listens on")
    sim.add_argument("--port", type=int, default=8081, help="port of the simulator (0: a free one)")
    sim.add_argument("--demo", action="store_true", help="populate and change sample resources")
    sim.add_argument(
        "--rbac",
        metavar="FILE",
        help="require bearer tokens: users, tokens and grants from this TOML file (example:"
        " config/sim-rbac.toml)",
    )
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
        from watchgw.web.activation import ActivationError, inherited_listener

        try:
            sock = inherited_listener(os.environ, os.getpid())
        except ActivationError as exc:
            print(f"watchgw: {exc}", file=sys.stderr)
            return 1
        configure_logging(config.log)
        return _run_listening(
            _serve(config, args.config, sock),
            host=config.server.host,
            port=config.server.port,
            instead=f"--port (or server.port in {args.config})",
        )
    if args.command == "demo":
        configure_logging(LogConfig())
        demo_main = _demo(host=args.host, port=args.port, period_s=args.period)
        return _run_listening(demo_main, host=args.host, port=args.port, instead="--port")
    if args.command == "sim":
        configure_logging(LogConfig())
        from watchgw.sim.rbac import RbacFileError, load_rbac
        from watchgw.sim.server import serve_sim

        try:
            rbac = load_rbac(args.rbac) if args.rbac else None
        except RbacFileError as exc:
            print(f"watchgw: {exc}", file=sys.stderr)
            return 1
        sim_main = serve_sim(host=args.host, port=args.port, demo_churn=args.demo, rbac=rbac)
        return _run_listening(_until_signalled(sim_main), host=args.host, port=args.port, instead="--port")
    raise AssertionError(args.command)  # pragma: no cover - argparse enforces the choices


def _run_listening(main: Coroutine[Any, Any, None], *, host: str, port: int, instead: str) -> int:
    """Run a command that listens on ``host:port``: exit 0 when it ends, 1 with one line naming
    the port when the port is taken (the first thing a new user meets: not a traceback)."""
    try:
        asyncio.run(main)
    except OSError as exc:
        if exc.errno != errno.EADDRINUSE:
            raise
        print(
            f"watchgw: port {port} on {host} is already in use; choose another with {instead}",
            file=sys.stderr,
        )
        return 1
    return 0


async def _until_signalled(main: Coroutine[Any, Any, None]) -> None:
    """Run ``main`` until SIGTERM or SIGINT, then cancel it and let it clean up."""
    task = asyncio.create_task(main)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, task.cancel)
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def _serve(config: Config, path: str, sock: socket.socket | None) -> None:
    from watchgw.web.app import make_app
    from watchgw.web.server import serve_until_signalled
    from watchgw.web.supervision import SystemdLink, arm_debug_loop_block

    arm_debug_loop_block(os.environ)

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

    app = make_app(config, static=config.server.live_page)
    await serve_until_signalled(
        app,
        host=config.server.host,
        port=config.server.port,
        shutdown_timeout_s=config.server.shutdown_timeout_s,
        on_reload=reload,
        sock=sock,
        systemd=SystemdLink.from_environ(os.environ),
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
