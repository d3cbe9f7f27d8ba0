"""Channel fields: validation (PROTOCOL.md section 2) and the channel key.

The key is ``<resourceType>:<orgId>:<projectId>:<namespace>:<name>:<labelSelector>:<fieldSelector>:<scope>``
where ``<scope>`` is ``user`` for a user-scoped channel and empty otherwise (the portal's client
computes exactly this key and drops events whose ``channel`` differs). The original document's
seven-segment key (without ``<scope>``) is kept for clients built on it: ``key_segments = 7``.
``%`` and ``:`` are percent-encoded in every field after ``resourceType`` (which cannot contain
either), so a key always splits back into the same fields; values without them (every value the
portal sends) appear as they are.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from watchgw.kube.types import WatchTarget

_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
_DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
# api/v1/<plural> | apis/<group>/<version>/<plural>; group is a DNS subdomain, the rest labels.
_RESOURCE_TYPE = re.compile(
    r"api/(?P<cv>[a-z0-9]+)/(?P<cp>[a-z0-9]([-a-z0-9]*[a-z0-9])?)"
    r"|apis/(?P<group>[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*)"
    r"/(?P<version>[a-z0-9]+)/(?P<plural>[a-z0-9]([-a-z0-9]*[a-z0-9])?)"
)
# Kubernetes selector syntax uses printable ASCII only; control characters could break a log line,
# an SSE frame or a URL, so they are refused outright.
_SELECTOR = re.compile(r"[\x20-\x7e]*")

MAX_RESOURCE_TYPE = 256
MAX_SELECTOR = 512

#: Body field -> WatchTarget attribute, in key order.
CHANNEL_FIELDS: tuple[tuple[str, str], ...] = (
    ("resourceType", "resource_type"),
    ("orgId", "org_id"),
    ("projectId", "project_id"),
    ("namespace", "namespace"),
    ("name", "name"),
    ("labelSelector", "label_selector"),
    ("fieldSelector", "field_selector"),
)


#: The eighth segment of a user-scoped channel's key.
USER_SCOPE = "user"


class InvalidField(ValueError):
    """A channel field breaks its rule; ``field`` is the body field's name."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


def _escape(value: str) -> str:
    return value.replace("%", "%25").replace(":", "%3A")


def _unescape(value: str) -> str:
    return value.replace("%3A", ":").replace("%3a", ":").replace("%25", "%")


def channel_key(target: WatchTarget, *, segments: int = 8) -> str:
    """The channel key of a validated target, with ``segments`` (8, or the document's 7)."""
    parts = [target.resource_type] + [_escape(getattr(target, attr)) for _field, attr in CHANNEL_FIELDS[1:]]
    if segments == 8:
        parts.append(USER_SCOPE if target.user_scoped else "")
    elif target.user_scoped:
        raise InvalidField("userScoped", "needs the eight-segment channel keys (server.key_segments = 8)")
    return ":".join(parts)


def parse_channel_key(key: str) -> WatchTarget:
    """Split a key (seven or eight segments) back into its validated target; :class:`InvalidField`
    names ``channel``."""
    parts = key.split(":")
    if len(parts) == len(CHANNEL_FIELDS) + 1:
        scope = parts.pop()
        if scope not in ("", USER_SCOPE):
            raise InvalidField("channel", f"the eighth segment of a channel key is '{USER_SCOPE}' or empty")
    elif len(parts) == len(CHANNEL_FIELDS):
        scope = ""
    else:
        raise InvalidField("channel", "a channel key has 8 (or 7) fields separated by ':'")
    raw: dict[str, Any] = {
        field: _unescape(part) for (field, _attr), part in zip(CHANNEL_FIELDS, parts, strict=True)
    }
    raw["userScoped"] = scope == USER_SCOPE
    try:
        return target_from_fields(raw)
    except InvalidField as exc:
        raise InvalidField("channel", str(exc)) from None


def target_from_fields(body: Mapping[str, Any]) -> WatchTarget:
    """Validate the channel fields of a subscribe body (absent, null and "" are the same)."""
    values: dict[str, str] = {}
    for field, attr in CHANNEL_FIELDS:
        value = body.get(field)
        if value is None:
            value = ""
        if not isinstance(value, str):
            raise InvalidField(field, f"must be a string, not {type(value).__name__}")
        values[attr] = value
    rt = values["resource_type"]
    if not rt:
        raise InvalidField("resourceType", "is required")
    if len(rt) > MAX_RESOURCE_TYPE:
        raise InvalidField("resourceType", f"must be at most {MAX_RESOURCE_TYPE} characters")
    if not _RESOURCE_TYPE.fullmatch(rt):
        raise InvalidField(
            "resourceType",
            "must be api/<version>/<plural> or apis/<group>/<version>/<plural> in lowercase DNS names",
        )
    for field, attr in (("orgId", "org_id"), ("projectId", "project_id"), ("namespace", "namespace")):
        if values[attr] and not _DNS_LABEL.fullmatch(values[attr]):
            raise InvalidField(field, "must be a DNS-1123 label (lowercase a-z, 0-9, '-', at most 63)")
    name = values["name"]
    if name and (len(name) > 253 or not _DNS_SUBDOMAIN.fullmatch(name)):
        raise InvalidField("name", "must be a DNS-1123 subdomain (lowercase a-z, 0-9, '-', '.', at most 253)")
    for field, attr in (("labelSelector", "label_selector"), ("fieldSelector", "field_selector")):
        selector = values[attr]
        if len(selector) > MAX_SELECTOR:
            raise InvalidField(field, f"must be at most {MAX_SELECTOR} characters")
        if not _SELECTOR.fullmatch(selector):
            raise InvalidField(field, "must be printable ASCII (Kubernetes selector syntax)")
    user_scoped = body.get("userScoped")
    if user_scoped is None:
        user_scoped = False
    if not isinstance(user_scoped, bool):
        raise InvalidField("userScoped", f"must be true or false, not {type(user_scoped).__name__}")
    return WatchTarget(**values, user_scoped=user_scoped)
