"""``credential = "subscriber"``: the shared watch of a channel runs with a subscriber's own token.

Every subscriber was authorized (and is re-checked) with its own token, so any of them may carry
the channel's upstream watch. The policy: use the first subscriber's token the control plane has
not rejected; when the control plane rejects it (401, or 403 once its user lost access), skip it
until its owner leaves; when its
owner leaves, the watch must move to another subscriber's token (the channel resumes the watch
from its resourceVersion, no LIST). With no subscriber left, the last token serves only the grace
period.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol


class TokenHolder(Protocol):
    @property
    def token(self) -> str | None: ...


class SubscriberCredential:
    __slots__ = ("_owner", "_rejected")

    def __init__(self) -> None:
        self._owner: TokenHolder | None = None
        self._rejected: set[str] = set()

    def pick(self, subscribers: Iterable[TokenHolder]) -> str | None:
        """The token for the next upstream request, from the channel's current subscribers."""
        candidates = [s for s in subscribers if s.token]
        self._rejected &= {s.token for s in candidates if s.token}
        for holder in candidates:
            if holder.token not in self._rejected:
                self._owner = holder
                return holder.token
        self._owner = None
        return None

    def rejected(self) -> bool:
        """The control plane refused the token in use (401 expired, 403 no longer allowed): the
        next pick skips it until its owner leaves. True when a subscriber's token was in use."""
        if self._owner is not None and self._owner.token:
            self._rejected.add(self._owner.token)
            return True
        return False

    def owner_left(self, holder: TokenHolder) -> bool:
        """``holder`` stops subscribing; True when the watch runs with its token and must move."""
        if holder is not self._owner:
            return False
        self._owner = None
        return True
