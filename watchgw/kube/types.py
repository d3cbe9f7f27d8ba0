"""Shapes shared by the upstream side and its consumers (the hub).

Wire shapes are ``TypedDict``/``Literal``; what the informer hands upward is a small slotted class
built once per upstream event and shared by every subscriber of the channel.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any, Literal, NewType, Protocol, TypeGuard

#: ``namespace/name`` (or ``name`` for cluster-scoped objects): the identity of an object in a channel.
ObjectKey = NewType("ObjectKey", str)

EventType = Literal["ADDED", "MODIFIED", "DELETED", "BOOKMARK"]


@dataclass(frozen=True, slots=True)
class WatchTarget:
    """What one channel watches: the fields of PROTOCOL.md section 2, already validated."""

    resource_type: str
    """``api/v1/<plural>`` or ``apis/<group>/<version>/<plural>``."""
    org_id: str = ""
    project_id: str = ""
    namespace: str = ""
    name: str = ""
    label_selector: str = ""
    field_selector: str = ""
    user_scoped: bool = False
    """Watched in the caller's own user control plane (``upstream.user_prefix``)."""
    user: str = ""
    """The user id of a user-scoped channel (from the caller's identity, never from the request)."""


class WatchEvent:
    """One change of one object, parsed once and encoded once.

    ``object_json`` is the object's JSON exactly as it will appear in the ``object`` field of the
    SSE ``watch`` event: the hub splices it into the frame without encoding it again.
    """

    __slots__ = ("key", "object", "object_json", "resource_version", "type")

    def __init__(
        self,
        type: EventType,
        key: ObjectKey,
        object: dict[str, Any],
        object_json: bytes,
        resource_version: str,
    ) -> None:
        self.type = type
        self.key = key
        self.object = object
        self.object_json = object_json
        self.resource_version = resource_version

    def __repr__(self) -> str:
        return f"WatchEvent({self.type} {self.key} rv={self.resource_version})"


class InformerPhase(enum.Enum):
    LISTING = "listing"
    """First LIST in progress: no state yet."""
    WATCHING = "watching"
    """State is complete and live (after the first LIST, and again after recovering)."""
    DEGRADED = "degraded"
    """The control plane cannot be reached or refuses; retrying with backoff. State is stale."""
    GONE = "gone"
    """The resource type is not served (404 on LIST): the informer has stopped for good."""


@dataclass(frozen=True, slots=True)
class InformerState:
    phase: InformerPhase
    resource_version: str = ""
    error_code: int = 0
    """HTTP-ish status of the last error (0 when none; 503 for a connection failure)."""
    error_reason: str = ""
    """Kubernetes-style reason (``Unauthorized``, ``Expired``, ``ConnectionFailed`` ...)."""
    error_message: str = ""
    """Human sentence, upstream text truncated; never contains a token."""


class InformerListener(Protocol):
    """What the informer reports to (the hub's channel)."""

    def on_events(self, events: list[WatchEvent]) -> None:
        """Objects changed: one batch per upstream chunk (or the diff of a (re)LIST), in order.

        Batches let the hub write every event of a chunk to a subscriber in one write. The
        informer's cache already reflects the whole batch when this is called; each event
        carries its own ``resource_version``."""

    def on_relist(self, events: list[WatchEvent], resource_version: str) -> None:
        """The difference of a (re)LIST against what was held, in order (possibly none), and the
        LIST's ``resource_version``. The objects are consistent only once the whole batch is applied
        (the events' own versions are older than the LIST's and may repeat), so a consumer that
        labels positions must not treat an event inside the batch as a consistent state."""

    def on_state(self, state: InformerState) -> None:
        """The informer's phase changed (``WATCHING`` is also reported after every relist)."""


#: Longest resourceVersion accepted: etcd revisions are int64 (19 digits); room to spare.
MAX_RESOURCE_VERSION_CHARS = 32


def is_valid_resource_version(rv: object) -> TypeGuard[str]:
    """A resourceVersion watchgw can hold and compare: 1 to 32 ASCII digits.

    Kubernetes calls it opaque, but etcd-backed servers write a decimal revision, and the hub orders
    positions with ``int()``, which accepts other Unicode digits (fullwidth ones, superscripts)
    and refuses strings of more than 4300 digits. Upstream versions are checked with this (a bad
    one is a malformed response); the web layer can check client-supplied ones with it too.
    """
    return type(rv) is str and 0 < len(rv) <= MAX_RESOURCE_VERSION_CHARS and rv.isascii() and rv.isdigit()
