"""A port already in use is one line on stderr naming the port and how to choose another, exit 1."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import pytest

from tests.processes import running_watchgw


@pytest.mark.parametrize("command", ["serve", "demo", "sim"])
async def test_a_port_in_use_is_one_line_naming_it_not_a_traceback(command: str, tmp_path: Path) -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        config = tmp_path / "watchgw.toml"
        config.write_text(f'[server]\nport = {port}\n[upstream]\nurl = "http://127.0.0.1:1"\n')
        args = ["--config", str(config)] if command == "serve" else ["--port", str(port)]
        async with running_watchgw(command, *args, stdout=asyncio.subprocess.PIPE) as proc:
            out, err = await asyncio.wait_for(proc.communicate(), timeout=30)
    assert proc.returncode == 1
    assert out == b""
    where = f"--port (or server.port in {config})" if command == "serve" else "--port"
    assert err.decode() == (
        f"watchgw: port {port} on 127.0.0.1 is already in use; choose another with {where}\n"
    )
