"""A minimal Chrome DevTools Protocol driver for headless Chromium (no browser download needed)."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import re
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp

FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--remote-debugging-address=127.0.0.1",
    "--remote-debugging-port=0",
]


def chromium_path() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


class Page:
    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self._ws = ws
        self._ids = itertools.count(1)

    async def call(self, method: str, **params: Any) -> dict[str, Any]:
        call_id = next(self._ids)
        await self._ws.send_json({"id": call_id, "method": method, "params": params})
        while True:
            message = await self._ws.receive_json()
            if message.get("id") == call_id:
                if "error" in message:
                    raise RuntimeError(message["error"])
                result: dict[str, Any] = message.get("result", {})
                return result

    async def evaluate(self, expression: str) -> Any:
        result = await self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        return result.get("result", {}).get("value")

    async def wait_for(self, expression: str, *, timeout: float = 10.0) -> Any:
        """Wait, in the page, until a JavaScript expression is truthy: re-checked on every DOM
        change by a MutationObserver, so nothing polls."""
        script = f"""new Promise((resolve) => {{
            const check = () => {{
                const v = ({expression});
                if (v) {{ resolve(v); return true; }}
                return false;
            }};
            if (check()) return;
            const observer = new MutationObserver(() => {{ if (check()) observer.disconnect(); }});
            const all = {{subtree: true, childList: true, characterData: true, attributes: true}};
            observer.observe(document, all);
        }})"""
        async with asyncio.timeout(timeout):
            result = await self.call(
                "Runtime.evaluate", expression=script, awaitPromise=True, returnByValue=True
            )
        return result.get("result", {}).get("value")


@contextlib.asynccontextmanager
async def chromium_page(url: str, profile_dir: Path) -> AsyncIterator[Page]:
    binary = chromium_path()
    assert binary is not None
    proc = await asyncio.create_subprocess_exec(
        binary,
        *FLAGS,
        f"--user-data-dir={profile_dir}",
        "about:blank",
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        start_new_session=True,
    )
    try:
        assert proc.stderr is not None
        endpoint = ""
        async with asyncio.timeout(30):
            while not endpoint:
                line = (await proc.stderr.readline()).decode(errors="replace")
                assert line, "chromium exited before DevTools was listening"
                found = re.search(r"DevTools listening on ws://([^/]+)/", line)
                if found:
                    endpoint = found.group(1)
        async with aiohttp.ClientSession() as http:
            async with http.get(f"http://{endpoint}/json/list") as response:
                targets = await response.json()
            page_target = next(t for t in targets if t.get("type") == "page")
            async with http.ws_connect(page_target["webSocketDebuggerUrl"], max_msg_size=0) as ws:
                page = Page(ws)
                await page.call("Page.enable")
                await page.call("Page.navigate", url=url)
                yield page
    finally:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, 9)
            await proc.wait()
