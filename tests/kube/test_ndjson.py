"""NDJSON splitter: any chunking of any lines (incl. multi-MiB ones) gives the same lines."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from watchgw.kube.errors import MalformedResponseError
from watchgw.kube.ndjson import NDJSONSplitter, iter_lines

MiB = 1024 * 1024

# A line: short arbitrary bytes (no newline, not ending in CR), or a big one described by its size.
small_line = st.binary(min_size=1, max_size=300).map(lambda b: b.replace(b"\n", b"n").rstrip(b"\r") or b"x")
big_line = st.integers(min_value=64 * 1024, max_value=3 * MiB).map(
    lambda n: (b'{"k":"' + bytes(range(32, 127)) * (n // 95 + 1))[:n] + b"}"
)
line_st = st.one_of(small_line, small_line, small_line, big_line)
terminator = st.sampled_from([b"\n", b"\r\n", b"\n\n", b"\r\n\r\n", b"\n\r\n"])


def split_all(data: bytes, cuts: list[int], max_line: int = 64 * MiB) -> list[bytes]:
    splitter = NDJSONSplitter(max_line)
    out: list[bytes] = []
    prev = 0
    for cut in [*sorted(set(cuts)), len(data)]:
        out.extend(splitter.feed(data[prev:cut]))
        prev = cut
    last = splitter.finish()
    if last is not None:
        out.append(last)
    return out


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
)
@given(
    lines=st.lists(line_st, max_size=12),
    terms=st.lists(terminator, min_size=12, max_size=12),
    final_newline=st.booleans(),
    data=st.data(),
)
def test_any_chunking_gives_the_same_lines(
    lines: list[bytes], terms: list[bytes], final_newline: bool, data: st.DataObject
) -> None:
    event(f"longest line >= 64 KiB: {max(map(len, lines), default=0) >= 64 * 1024}")
    stream = b"".join(line + terms[i] for i, line in enumerate(lines))
    if lines and not final_newline:
        stream = stream[: -len(terms[len(lines) - 1])]
    cuts = data.draw(st.lists(st.integers(min_value=0, max_value=len(stream)), max_size=40))
    assert split_all(stream, cuts) == lines


@given(st.lists(st.binary(max_size=50), max_size=30), st.data())
def test_small_random_bytes_match_reference(parts: list[bytes], data: st.DataObject) -> None:
    stream = b"".join(parts)
    cuts = data.draw(st.lists(st.integers(min_value=0, max_value=len(stream)), max_size=20))
    expected = [ln[:-1] if ln.endswith(b"\r") else ln for ln in stream.split(b"\n")]
    expected = [ln for ln in expected if ln]
    assert split_all(stream, cuts) == expected


def test_every_byte_a_chunk() -> None:
    stream = b'{"a":1}\r\n\n{"b":2}\n{"c":3}'
    splitter = NDJSONSplitter()
    out = [line for i in range(len(stream)) for line in splitter.feed(stream[i : i + 1])]
    assert out == [b'{"a":1}', b'{"b":2}']
    assert splitter.finish() == b'{"c":3}'
    assert splitter.finish() is None


def test_line_over_limit_while_pending() -> None:
    splitter = NDJSONSplitter(max_line_bytes=100)
    splitter.feed(b"x" * 60)
    with pytest.raises(MalformedResponseError, match="longer than 100"):
        splitter.feed(b"x" * 60)


def test_line_over_limit_in_one_chunk() -> None:
    splitter = NDJSONSplitter(max_line_bytes=100)
    assert splitter.feed(b"y" * 100 + b"\n") == [b"y" * 100]
    with pytest.raises(MalformedResponseError):
        splitter.feed(b"ok\n" + b"x" * 101 + b"\nok\n")


def test_line_over_limit_across_chunks() -> None:
    splitter = NDJSONSplitter(max_line_bytes=100)
    splitter.feed(b"x" * 90)
    with pytest.raises(MalformedResponseError):
        splitter.feed(b"x" * 20 + b"\n")


async def test_iter_lines_batches_and_final_line() -> None:
    chunks = [b'{"a"', b":1}\n{", b" ", b'"b":2}\n{"c":3}\n', b'{"d":4}']

    async def source() -> AsyncIterator[bytes]:
        for c in chunks:
            yield c

    batches = [b async for b in iter_lines(source())]
    # One batch per chunk that completed a line; the chunks that did not yield nothing.
    assert batches == [[b'{"a":1}'], [b'{ "b":2}', b'{"c":3}'], [b'{"d":4}']]


def test_multi_mib_lines_with_seeded_random_chunks() -> None:
    import random

    rng = random.Random(7)
    lines = [b'{"big":"' + b"A" * (5 * MiB) + b'"}', b'{"small":1}', b"{" + b"z" * (2 * MiB) + b"}"]
    stream = b"\r\n".join(lines) + b"\n"
    for _ in range(5):
        cuts = [rng.randrange(len(stream)) for _ in range(rng.randrange(1, 300))]
        assert split_all(stream, cuts) == lines
