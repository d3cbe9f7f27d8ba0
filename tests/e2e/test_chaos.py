"""Chaos convergence in CI: deterministic seeds, each a few seconds (``make soak`` runs longer)."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from tests.chaos import run_chaos


@pytest.fixture(autouse=True)
def quiet_logs() -> Iterator[None]:
    logging.disable(logging.INFO)
    yield
    logging.disable(logging.NOTSET)


@pytest.mark.parametrize("seed", range(10))
async def test_every_client_converges_under_chaos(seed: int) -> None:
    report = await run_chaos(seed, clients=24, steps=250)
    assert report.mismatches == 0, report.line()
    assert report.ids_out_of_order == 0, report.line()
    assert report.checked > 0
    assert report.faults > 0
    assert report.changes > 100
