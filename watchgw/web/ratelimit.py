"""Token buckets per key: subscribe/unsubscribe per identity (per client address without
authentication), failed authentications per client address. A client cannot make the gateway
(and, through it, the control plane's reviews) do unbounded work. Buckets live in a bounded LRU,
so many keys cannot grow memory without bound either."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable


class RateLimiter:
    def __init__(
        self,
        *,
        rate_per_s: float,
        burst: int,
        max_identities: int = 65536,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._rate = rate_per_s
        self._burst = float(burst)
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()
        self._max = max_identities
        self._clock = clock

    def acquire(self, identity: str) -> float:
        """Take one token: 0.0 when allowed, else the seconds until one is available."""
        now = self._clock()
        tokens, last = self._buckets.get(identity, (self._burst, now))
        tokens = min(self._burst, tokens + (now - last) * self._rate)
        if tokens >= 1.0:
            self._buckets[identity] = (tokens - 1.0, now)
            self._buckets.move_to_end(identity)
            while len(self._buckets) > self._max:
                self._buckets.popitem(last=False)
            return 0.0
        self._buckets[identity] = (tokens, now)
        return (1.0 - tokens) / self._rate

    def refund(self, identity: str) -> None:
        """Give back a token taken by :meth:`acquire` (the work it reserved turned out fine)."""
        item = self._buckets.get(identity)
        if item is not None:
            tokens, last = item
            self._buckets[identity] = (min(self._burst, tokens + 1.0), last)
