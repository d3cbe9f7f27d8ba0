"""Waiting on a page right after it navigated.

``Page.wait_for`` (cdp.py) evaluates in the page's current document. Issued while a navigation is
still replacing ``about:blank``, that document goes away under it and the evaluation comes back
without the condition having held (measured: its value is an empty object, and the next
evaluation runs in a document whose scripts have not run yet). :func:`wait_true` asks again until
the answer is the condition itself.
"""

from __future__ import annotations

import asyncio

from tests.browser.cdp import Page


async def wait_true(page: Page, expression: str, *, timeout: float = 20.0) -> None:
    """Wait until ``expression`` is truthy in the page's document, whatever document that is."""
    async with asyncio.timeout(timeout):
        while await page.wait_for(f"({expression}) && 'holds'", timeout=timeout) != "holds":
            continue  # evaluated in a document that was being replaced: ask the current one
