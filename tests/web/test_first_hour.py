"""What a newcomer runs into in the first hour with curl and a browser: the documented CORS
refusal, a 429 whose figures agree, JSON answers that end with a newline, a documented stats."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.conftest import make_config
from tests.web.conftest import Gateway
from watchgw.web.body import RateLimited
from watchgw.web.keys import CONFIG

PROTOCOL = Path(__file__).resolve().parents[2] / "docs" / "PROTOCOL.md"
SECRETS = {"resourceType": "api/v1/secrets", "namespace": "default"}
FOREIGN_PREFLIGHT = {"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"}


async def test_a_foreign_preflight_is_refused_as_documented_without_cors_origins(gateway: Gateway) -> None:
    assert gateway.app[CONFIG].server.cors_origins == ()
    async with (
        aiohttp.ClientSession() as http,
        http.options(f"{gateway.url}/api/watch/subscribe", headers=FOREIGN_PREFLIGHT) as response,
    ):
        body = await response.json()
    assert response.status == 403
    assert body["error"]["code"] == "origin_not_allowed"
    assert body["error"]["message"]
    assert "Access-Control-Allow-Origin" not in response.headers


async def test_a_foreign_preflight_is_refused_with_cors_origins_too(
    gateway_factory: Callable[..., Any],
) -> None:
    gateway: Gateway = await gateway_factory(
        make_config(server={"cors_origins": ["https://console.example"]})
    )
    async with (
        aiohttp.ClientSession() as http,
        http.options(f"{gateway.url}/api/watch/stream", headers=FOREIGN_PREFLIGHT) as response,
    ):
        assert response.status == 403
        assert (await response.json())["error"]["code"] == "origin_not_allowed"


async def test_a_429_says_the_same_wait_in_its_header_and_its_body(
    gateway_factory: Callable[..., Any],
) -> None:
    # One subscribe per 10 s: the second waits almost 10 s, which is not a whole number.
    gateway: Gateway = await gateway_factory(
        make_config(limits={"subscribe_rate_per_s": 0.1, "subscribe_burst": 1})
    )
    client = await gateway.client()
    await client.subscribe(**SECRETS)
    body = {"clientId": client.client_id, "resourceType": "api/v1/configmaps"}
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"{gateway.url}/api/watch/subscribe", json=body) as response,
    ):
        error = (await response.json())["error"]
    assert response.status == 429
    assert error["code"] == "rate_limited"
    wait = int(response.headers["Retry-After"])
    assert wait in (9, 10)  # rounded up, never down: a client that obeys is not refused again
    assert error["retryAfter"] == wait
    assert error["message"] == f"too many requests: retry in {wait} s"


@pytest.mark.parametrize(("wait_s", "seconds"), [(0.001, 1), (0.5, 1), (1.0, 1), (1.01, 2), (2.5, 3)])
def test_rate_limited_rounds_the_wait_up_to_whole_seconds(wait_s: float, seconds: int) -> None:
    refused = RateLimited(wait_s)
    assert refused.retry_after_s == seconds
    assert refused.message == f"too many requests: retry in {seconds} s"


async def test_json_answers_end_with_a_newline(gateway: Gateway) -> None:
    client = await gateway.client()
    url = gateway.url
    subscribe = {"clientId": client.client_id, **SECRETS}
    async with aiohttp.ClientSession() as http:
        answers = []
        async with http.post(f"{url}/api/watch/subscribe", json=subscribe) as response:
            answers.append((response.status, await response.read()))
        for path in ("/api/watch/stats", "/healthz", "/readyz", "/nope"):
            async with http.get(url + path) as response:
                answers.append((response.status, await response.read()))
        async with http.post(
            f"{url}/api/watch/subscribe", data=b"{", headers={"Content-Type": "application/json"}
        ) as response:
            answers.append((response.status, await response.read()))
    assert [status for status, _ in answers] == [200, 200, 200, 200, 404, 400]
    for _, raw in answers:
        assert raw.endswith(b"}\n"), raw
        assert raw.count(b"\n") == 1  # one line: the newline ends it, nothing else changed


def _documented_stats_fields() -> set[str]:
    """The first column of the table under PROTOCOL.md's ``### GET /api/watch/stats``."""
    section = PROTOCOL.read_text().split("### GET /api/watch/stats", 1)[1].split("\n### ", 1)[0]
    fields = set(re.findall(r"^\| `([A-Za-z]+)` \|", section, flags=re.MULTILINE))
    assert fields, "no field table in the stats section of PROTOCOL.md"
    return fields


async def test_every_stats_field_is_documented_and_every_documented_one_is_there(gateway: Gateway) -> None:
    client = await gateway.client()
    await client.subscribe(**SECRETS)
    async with aiohttp.ClientSession() as http, http.get(f"{gateway.url}/api/watch/stats") as response:
        stats = await response.json()
    assert set(stats) == _documented_stats_fields()
