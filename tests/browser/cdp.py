"""A minimal Chrome DevTools Protocol driver for headless Chromium (no browser download needed).

:func:`chromium` starts a browser and yields a :class:`Browser` that opens and closes tabs (one
DevTools connection each); :func:`chromium_page` is the one-tab shorthand."""

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
    def __init__(self, ws: aiohttp.ClientWebSocketResponse, target_id: str = "") -> None:
        self._ws = ws
        self._ids = itertools.count(1)
        self.target_id = target_id

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
        """The expression's value; a promise's once it settles (a rejection raises)."""
        result = await self.call(
            "Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True
        )
        if "exceptionDetails" in result:
            raise RuntimeError(result["exceptionDetails"].get("exception", {}).get("description"))
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


class Browser:
    """One Chromium: tabs opened with :meth:`open` are closed with it, or earlier by :meth:`close`
    (as a user closes a tab: the page's ``pagehide`` runs)."""

    def __init__(self, endpoint: str, http: aiohttp.ClientSession, stack: contextlib.AsyncExitStack) -> None:
        self._endpoint = endpoint
        self._http = http
        self._stack = stack
        self._browser: Page | None = None
        self._sockets: dict[str, aiohttp.ClientWebSocketResponse] = {}

    async def _connect(self, target_id: str) -> Page:
        ws = await self._stack.enter_async_context(
            self._http.ws_connect(f"ws://{self._endpoint}/devtools/page/{target_id}", max_msg_size=0)
        )
        self._sockets[target_id] = ws
        page = Page(ws, target_id)
        await page.call("Page.enable")
        return page

    async def first_tab(self) -> Page:
        """The tab the browser started with."""
        async with self._http.get(f"http://{self._endpoint}/json/list") as response:
            targets = await response.json()
        return await self._connect(next(t["id"] for t in targets if t.get("type") == "page"))

    async def open(self, url: str = "about:blank") -> Page:
        if self._browser is None:
            async with self._http.get(f"http://{self._endpoint}/json/version") as response:
                version = await response.json()
            ws = await self._stack.enter_async_context(
                self._http.ws_connect(version["webSocketDebuggerUrl"], max_msg_size=0)
            )
            self._browser = Page(ws)
        created = await self._browser.call("Target.createTarget", url="about:blank")
        page = await self._connect(created["targetId"])
        if url != "about:blank":
            await page.call("Page.navigate", url=url)
        return page

    async def close(self, page: Page) -> None:
        assert self._browser is not None, "only tabs made by open() are closed this way"
        await self._browser.call("Target.closeTarget", targetId=page.target_id)
        await self._sockets.pop(page.target_id).close()


@contextlib.asynccontextmanager
async def chromium(profile_dir: Path) -> AsyncIterator[Browser]:
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
    drain: asyncio.Task[None] | None = None
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
        # Read on until the end: a pipe left unread blocks Chromium once full (many tabs log more).
        drain = asyncio.create_task(_discard(proc.stderr), name="chromium stderr")
        async with aiohttp.ClientSession() as http, contextlib.AsyncExitStack() as stack:
            yield Browser(endpoint, http, stack)
    finally:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, 9)
            await proc.wait()
        if drain is not None:
            await drain  # ends at the end of the pipe, which the kill closed


async def _discard(stream: asyncio.StreamReader) -> None:
    while await stream.read(65536):
        pass


@contextlib.asynccontextmanager
async def chromium_page(url: str, profile_dir: Path) -> AsyncIterator[Page]:
    async with chromium(profile_dir) as browser:
        page = await browser.first_tab()
        await page.call("Page.navigate", url=url)
        yield page
