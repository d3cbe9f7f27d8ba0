"""In-memory object store, event history and watcher fan-out of the simulator (no HTTP here).

Design, for speed:

- Every stored object is kept twice: as a private ``dict`` and as its encoded JSON ``bytes``
  (``raw``), made once per change. LIST pages are ``b",".join`` of those bytes; a watch line is
  ``prefix + raw + b"}\\n"``, built once per event (per event type) and shared by every watcher.
- A mutation appends the shared line to each interested watcher's ``pending`` list and wakes it
  (one future per waiting watcher, no task per event). The HTTP side writes all pending lines of a
  watcher in one write.
- History is per collection (like the kube-apiserver watch cache, one per resource type): the last
  ``history_limit`` events. A watch from a resourceVersion older than what is retained gets 410.
- One global resourceVersion counter across all collections, like etcd.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Literal

import ujson

from .rbac import uid_of
from .selectors import FieldSelector, LabelSelector

__all__ = [
    "Collection",
    "Event",
    "Fault",
    "SimConflict",
    "SimNotFound",
    "Simulator",
    "StoredObject",
    "Watcher",
    "api_version_of",
    "dumps",
    "kind_of",
]

DEFAULT_PROJECT_PREFIX = "/apis/resourcemanager.miloapis.com/v1alpha1/projects/{project}/control-plane"
DEFAULT_ORG_PREFIX = "/apis/resourcemanager.miloapis.com/v1alpha1/organizations/{org}/control-plane"
DEFAULT_USER_PREFIX = "/apis/iam.miloapis.com/v1alpha1/users/{user}/control-plane"

KINDS: dict[str, str] = {
    "dnszones": "DNSZone",
    "dnsrecordsets": "DNSRecordSet",
    "domains": "Domain",
    "secrets": "Secret",
    "configmaps": "ConfigMap",
    "httpproxies": "HTTPProxy",
    "exportpolicies": "ExportPolicy",
    "pods": "Pod",
    "namespaces": "Namespace",
    "services": "Service",
    "endpoints": "Endpoints",
    "events": "Event",
}
CLUSTER_SCOPED = frozenset({"namespaces", "nodes", "persistentvolumes", "customresourcedefinitions"})

EventType = Literal["ADDED", "MODIFIED", "DELETED"]
_PREFIX: dict[str, bytes] = {
    t: b'{"type":"' + t.encode() + b'","object":'
    for t in ("ADDED", "MODIFIED", "DELETED", "BOOKMARK", "ERROR")
}


def dumps(obj: Any) -> bytes:
    """Compact JSON as Go's encoding/json writes it (no spaces, '/' unescaped, <>& escaped)."""
    data: bytes = ujson.dumps(
        obj, ensure_ascii=False, escape_forward_slashes=False, encode_html_chars=True
    ).encode()
    return data


def kind_of(plural: str) -> str:
    if plural in KINDS:
        return KINDS[plural]
    if plural.endswith("ies"):
        singular = plural[:-3] + "y"
    elif plural.endswith(("sses", "xes", "ches", "shes", "zes")):
        singular = plural[:-2]
    elif plural.endswith("s") and not plural.endswith("ss"):
        singular = plural[:-1]
    else:
        singular = plural
    return singular[:1].upper() + singular[1:]


def api_version_of(resource_type: str) -> str:
    parts = resource_type.split("/")
    return "/".join(parts[1:-1])


def split_resource_type(resource_type: str) -> tuple[str, str, str]:
    """``api/v1/pods`` -> ("", "v1", "pods"); ``apis/g/v/p`` -> ("g", "v", "p")."""
    parts = resource_type.strip("/").split("/")
    if len(parts) == 3 and parts[0] == "api" and all(parts):
        return "", parts[1], parts[2]
    if len(parts) == 4 and parts[0] == "apis" and all(parts):
        return parts[1], parts[2], parts[3]
    raise ValueError(
        f"invalid resource type {resource_type!r}: want api/v1/<plural> or apis/<group>/<version>/<plural>"
    )


class SimConflict(ValueError):
    """create() of a name that exists (HTTP 409 AlreadyExists), or a stale resourceVersion on PUT."""


class SimNotFound(KeyError):
    """update()/delete() of an object that does not exist (HTTP 404)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "not found"


@dataclass(slots=True)
class Fault:
    """A queued failure; every matching request consumes one ``count``."""

    kind: Literal["cut", "stall", "gone", "gone_http", "too_many", "error500", "unauthorized", "not_found"]
    on: Literal["list", "watch", "any"] = "watch"
    count: int = 1
    path_contains: str = ""
    retry_after_s: int = 1


class StoredObject:
    """One version of one object: its encoded JSON and the fields the store needs (the dict is not kept)."""

    __slots__ = ("created", "generation", "labels", "name", "namespace", "raw", "rv", "uid")

    def __init__(self, obj: dict[str, Any], rv: int) -> None:
        meta = obj["metadata"]
        self.raw: bytes = dumps(obj)
        self.rv = rv
        self.name: str = meta["name"]
        self.namespace: str = meta.get("namespace") or ""
        labels = meta.get("labels")
        self.labels: dict[str, str] = dict(labels) if isinstance(labels, dict) else {}
        self.uid: str = meta.get("uid") or ""
        self.created: str = meta.get("creationTimestamp") or ""
        self.generation: int = int(meta.get("generation") or 0)

    @property
    def obj(self) -> dict[str, Any]:
        """A fresh decoded copy."""
        obj: dict[str, Any] = ujson.loads(self.raw)
        return obj


class Event:
    """One change of one collection, with its watch lines encoded lazily and at most once."""

    __slots__ = ("_line", "_old_deleted_line", "new", "old", "rv", "type")

    def __init__(self, type_: EventType, rv: int, new: StoredObject, old: StoredObject | None) -> None:
        self.type = type_
        self.rv = rv
        self.new = new
        self.old = old
        self._line: bytes | None = None
        self._old_deleted_line: bytes | None = None

    @property
    def line(self) -> bytes:
        line = self._line
        if line is None:
            line = self._line = _PREFIX[self.type] + self.new.raw + b"}\n"
        return line

    def line_for(self, w: Watcher) -> bytes | None:
        """The line this watcher gets for this event (selector transitions like the watch cache), or None."""
        if w.namespace and self.new.namespace != w.namespace:
            return None
        if w.plain:
            return self.line
        if self.type != "MODIFIED":
            return self.line if w.matches(self.new) else None
        now, before = w.matches(self.new), self.old is not None and w.matches(self.old)
        if now and before:
            return self.line
        if now:
            return _PREFIX["ADDED"] + self.new.raw + b"}\n"
        if before:
            line = self._old_deleted_line
            if line is None:
                assert self.old is not None
                obj = self.old.obj
                obj["metadata"]["resourceVersion"] = str(self.rv)
                line = self._old_deleted_line = _PREFIX["DELETED"] + dumps(obj) + b"}\n"
            return line
        return None


class Watcher:
    """The store side of one watch stream: its filter and the lines not yet written."""

    __slots__ = (
        "_buffer_limit",
        "_waiter",
        "closed",
        "collection",
        "field_selector",
        "label_selector",
        "min_rv",
        "namespace",
        "overflowed",
        "pending",
        "plain",
    )

    def __init__(
        self,
        *,
        collection: Collection,
        namespace: str,
        label_selector: LabelSelector | None,
        field_selector: FieldSelector | None,
        min_rv: int,
        buffer_limit: int,
    ) -> None:
        self.collection = collection
        self.namespace = namespace
        self.label_selector = label_selector if label_selector and not label_selector.empty else None
        self.field_selector = field_selector if field_selector and not field_selector.empty else None
        self.plain = self.label_selector is None and self.field_selector is None
        self.min_rv = min_rv
        self.pending: list[bytes] = []
        self.closed = False
        self.overflowed = False
        self._buffer_limit = buffer_limit
        self._waiter: asyncio.Future[None] | None = None

    def matches(self, s: StoredObject) -> bool:
        if self.namespace and s.namespace != self.namespace:
            return False
        if self.label_selector is not None and not self.label_selector.matches(s.labels):
            return False
        return self.field_selector is None or self.field_selector.matches(s.name, s.namespace)

    def push(self, line: bytes) -> None:
        pending = self.pending
        pending.append(line)
        if len(pending) > self._buffer_limit:
            # Like the apiserver with an unresponsive watcher: drop it; the client re-watches.
            pending.clear()
            self.overflowed = True
            self.close()
            return
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def close(self) -> None:
        self.closed = True
        self.collection.watchers.discard(self)
        self.wake()

    async def wait(self, max_wait_s: float | None) -> None:
        """Return when lines are pending, the watcher is closed, or after ``max_wait_s`` seconds."""
        if self.pending or self.closed:
            return
        loop = asyncio.get_running_loop()
        waiter = self._waiter = loop.create_future()
        handle = loop.call_later(max_wait_s, _resolve, waiter) if max_wait_s is not None else None
        try:
            await waiter
        finally:
            self._waiter = None
            if handle is not None:
                handle.cancel()


def _resolve(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


class Collection:
    """One (scope, resource type): its objects, its retained history and its watchers."""

    def __init__(
        self,
        *,
        resource_type: str,
        project: str,
        org: str,
        history_limit: int,
        floor_rv: int,
        user: str = "",
    ) -> None:
        self.resource_type = resource_type
        self.project = project
        self.org = org
        self.user = user
        """The user control plane this collection belongs to ("" for the others)."""
        group, version, plural = split_resource_type(resource_type)
        self.group, self.version, self.plural = group, version, plural
        self.api_version = f"{group}/{version}" if group else version
        self.kind = kind_of(plural)
        self.qualified = f"{plural}.{group}" if group else plural
        self.objects: dict[tuple[str, str], StoredObject] = {}
        self.history: list[Event] = []
        self.history_limit = history_limit
        self._floor_rv = floor_rv  # every event with rv > floor is retained (physically trimmed part)
        self.watchers: set[Watcher] = set()

    @property
    def floor_rv(self) -> int:
        """Events with a resourceVersion above this are all retained; a watch from below it gets 410."""
        h, limit = self.history, self.history_limit
        if len(h) > limit:
            return h[len(h) - limit - 1].rv
        return self._floor_rv

    def append(self, ev: Event) -> None:
        h = self.history
        h.append(ev)
        limit = self.history_limit
        if len(h) > 2 * limit + 64:
            self._floor_rv = h[len(h) - limit - 1].rv
            del h[: len(h) - limit]
        for w in self.watchers:
            if ev.rv > w.min_rv:
                line = ev.line_for(w)
                if line is not None:
                    w.push(line)

    def events_after(self, rv: int) -> Iterable[Event]:
        h = self.history
        lo, hi = 0, len(h)
        while lo < hi:
            mid = (lo + hi) // 2
            if h[mid].rv <= rv:
                lo = mid + 1
            else:
                hi = mid
        start = max(lo, len(h) - self.history_limit)
        return itertools.islice(h, start, None)

    def compact(self, rv: int) -> None:
        self.history.clear()
        self._floor_rv = rv

    def sorted_objects(self) -> list[StoredObject]:
        return [self.objects[k] for k in sorted(self.objects)]


class Simulator:
    """An in-memory Kubernetes control plane speaking list/watch (see :mod:`watchgw.sim.server`).

    Mutations are synchronous and safe to call from test code running in the server's event loop.
    ``create``/``update`` return a new dict with its own ``metadata``; other nested values may be
    shared with the argument (the store itself keeps only encoded bytes, so it never changes behind
    your back).
    ``update`` always bumps ``metadata.generation`` (simpler to reason about in tests than the
    apiserver's "only when spec changes"), and does not check ``metadata.resourceVersion`` (the
    HTTP PUT does, answering 409).
    """

    def __init__(
        self,
        *,
        history_limit: int = 10000,
        bookmark_interval_s: float = 60.0,
        project_prefix: str = DEFAULT_PROJECT_PREFIX,
        org_prefix: str = DEFAULT_ORG_PREFIX,
        user_prefix: str = DEFAULT_USER_PREFIX,
        watch_buffer_limit: int = 1_000_000,
        default_watch_timeout_s: float = 1800.0,
    ) -> None:
        if history_limit < 0:
            raise ValueError("history_limit must be >= 0")
        self.history_limit = history_limit
        self.bookmark_interval_s = bookmark_interval_s
        self.project_prefix = project_prefix
        self.org_prefix = org_prefix
        self.user_prefix = user_prefix
        self.watch_buffer_limit = watch_buffer_limit
        self.default_watch_timeout_s = default_watch_timeout_s
        self.tokens: dict[str, str] | None = None
        """token -> username; None: no authentication (everyone is ``system:anonymous``). With
        tokens, ``/users/{user}/...`` (``user_prefix``) answers only its own user (its uid or
        name), whatever the authorizer says."""
        # (user, attributes) -> allowed; None allows everything. Attributes: verb, group, version,
        # resource, namespace, name, project, org, user_scope (the {user} of a user control plane).
        # Used for requests and SelfSubjectAccessReview (not in user control planes with tokens).
        self.authorizer: Callable[[str, dict[str, str]], bool] | None = None
        self.list_requests = 0
        self.watch_requests = 0
        self.open_watches = 0
        self.peak_open_watches = 0
        """The most watches open at once since the start: what gateways in front cost upstream."""
        self.faults: list[Fault] = []
        self._rv = 1000
        self._compacted_rv = 0
        self._collections: dict[tuple[str, str, str, str], Collection] = {}
        self._waiters: list[asyncio.Future[None]] = []
        # Continue-token snapshots: id -> (rv, items); a small LRU.
        self._snapshots: OrderedDict[str, tuple[int, list[StoredObject]]] = OrderedDict()
        self._snapshot_ids = itertools.count(1)
        self.snapshot_limit = 64
        # Streams the HTTP side registered: cut_watches() aborts them, close_streams() ends them.
        self._stream_closers: dict[object, tuple[Callable[[], None], Callable[[], None], bool]] = {}
        self.closing = False

    # ----------------------------------------------------------------- state
    @property
    def resource_version(self) -> str:
        return str(self._rv)

    @property
    def rv(self) -> int:
        return self._rv

    @staticmethod
    def uid_of(username: str) -> str:
        """The ``uid`` the simulator's SelfSubjectReview gives ``username`` (stable, not the name)."""
        return uid_of(username)

    def collection(
        self, resource_type: str, *, project: str = "", org: str = "", user: str = ""
    ) -> Collection:
        """One scope's collection: a user's, else a project's, else an org's control plane, else
        the root (one scope wins, as one URL prefix does)."""
        if user:
            project = org = ""
        elif project:
            org = ""
        key = (user, project, org, resource_type)
        coll = self._collections.get(key)
        if coll is None:
            coll = Collection(
                resource_type=resource_type,
                project=project,
                org=org,
                user=user,
                history_limit=self.history_limit,
                floor_rv=self._compacted_rv,
            )
            self._collections[key] = coll
        return coll

    def collections(self) -> list[Collection]:
        return list(self._collections.values())

    def _notify(self) -> None:
        waiters = self._waiters
        if waiters:
            self._waiters = []
            for fut in waiters:
                if not fut.done():
                    fut.set_result(None)

    async def wait_for(self, predicate: Callable[[], bool], timeout: float = 5.0) -> None:
        """Wait until ``predicate()`` holds, re-checked on every state change (TimeoutError)."""
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(timeout):
            while not predicate():
                fut: asyncio.Future[None] = loop.create_future()
                self._waiters.append(fut)
                try:
                    await fut
                finally:
                    if not fut.done():
                        fut.cancel()

    # ------------------------------------------------------------- mutations
    def _prepare(self, coll: Collection, obj: dict[str, Any], namespace: str) -> tuple[dict[str, Any], str]:
        """A new dict (kind and apiVersion first, as the apiserver writes them) with its own metadata."""
        meta = obj.get("metadata") if isinstance(obj, dict) else None
        if not isinstance(meta, dict):
            raise ValueError("object needs a metadata mapping")
        name = meta.get("name")
        if not isinstance(name, str) or not name:
            raise ValueError("object needs metadata.name")
        data: dict[str, Any] = {"kind": obj.get("kind") or coll.kind, "apiVersion": coll.api_version}
        data.update(obj)
        data["apiVersion"] = coll.api_version
        meta = data["metadata"] = dict(meta)
        if isinstance(meta.get("labels"), dict):
            meta["labels"] = dict(meta["labels"])
        ns = "" if coll.plural in CLUSTER_SCOPED else (namespace or meta.get("namespace") or "")
        if ns:
            meta["namespace"] = ns
        else:
            meta.pop("namespace", None)
        return data, ns

    def _commit(
        self, coll: Collection, type_: EventType, new: StoredObject, old: StoredObject | None
    ) -> None:
        coll.append(Event(type_, new.rv, new, old))
        self._notify()

    def create(
        self,
        resource_type: str,
        obj: dict[str, Any],
        *,
        project: str = "",
        org: str = "",
        user: str = "",
        namespace: str = "",
    ) -> dict[str, Any]:
        coll = self.collection(resource_type, project=project, org=org, user=user)
        data, ns = self._prepare(coll, obj, namespace)
        meta = data["metadata"]
        key = (ns, meta["name"])
        if key in coll.objects:
            raise SimConflict(f'{coll.qualified} "{meta["name"]}" already exists')
        self._rv += 1
        meta["uid"] = str(uuid.uuid4())
        meta["resourceVersion"] = str(self._rv)
        meta["generation"] = 1
        meta["creationTimestamp"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        stored = StoredObject(data, self._rv)
        coll.objects[key] = stored
        self._commit(coll, "ADDED", stored, None)
        return data

    def update(
        self,
        resource_type: str,
        obj: dict[str, Any],
        *,
        project: str = "",
        org: str = "",
        user: str = "",
        namespace: str = "",
    ) -> dict[str, Any]:
        coll = self.collection(resource_type, project=project, org=org, user=user)
        data, ns = self._prepare(coll, obj, namespace)
        meta = data["metadata"]
        key = (ns, meta["name"])
        old = coll.objects.get(key)
        if old is None:
            raise SimNotFound(f'{coll.qualified} "{meta["name"]}" not found')
        self._rv += 1
        meta["uid"] = old.uid
        meta["resourceVersion"] = str(self._rv)
        meta["generation"] = old.generation + 1
        meta["creationTimestamp"] = old.created
        stored = StoredObject(data, self._rv)
        coll.objects[key] = stored
        self._commit(coll, "MODIFIED", stored, old)
        return data

    def delete(
        self,
        resource_type: str,
        name: str,
        *,
        project: str = "",
        org: str = "",
        user: str = "",
        namespace: str = "",
    ) -> dict[str, Any]:
        coll = self.collection(resource_type, project=project, org=org, user=user)
        ns = "" if coll.plural in CLUSTER_SCOPED else namespace
        old = coll.objects.pop((ns, name), None)
        if old is None:
            raise SimNotFound(f'{coll.qualified} "{name}" not found')
        self._rv += 1
        obj = old.obj
        obj["metadata"]["resourceVersion"] = str(self._rv)
        stored = StoredObject(obj, self._rv)
        self._commit(coll, "DELETED", stored, old)
        return obj

    def get(
        self,
        resource_type: str,
        name: str,
        *,
        project: str = "",
        org: str = "",
        user: str = "",
        namespace: str = "",
    ) -> dict[str, Any] | None:
        coll = self.collection(resource_type, project=project, org=org, user=user)
        ns = "" if coll.plural in CLUSTER_SCOPED else namespace
        stored = coll.objects.get((ns, name))
        return None if stored is None else ujson.loads(stored.raw)

    def list_objects(
        self, resource_type: str, *, project: str = "", org: str = "", user: str = "", namespace: str = ""
    ) -> list[dict[str, Any]]:
        coll = self.collection(resource_type, project=project, org=org, user=user)
        return [
            ujson.loads(s.raw) for s in coll.sorted_objects() if not namespace or s.namespace == namespace
        ]

    def compact(self) -> None:
        """Drop all event history and continue snapshots: older resourceVersions now get 410."""
        self._compacted_rv = self._rv
        for coll in self._collections.values():
            coll.compact(self._rv)
        self._snapshots.clear()

    # ---------------------------------------------------------------- faults
    def inject(self, fault: Fault) -> None:
        if fault.count < 1:
            raise ValueError("fault count must be >= 1")
        self.faults.append(fault)

    def take_fault(self, verb: Literal["list", "watch", "other"], path: str) -> Fault | None:
        for i, f in enumerate(self.faults):
            if (f.on == "any" or f.on == verb) and f.path_contains in path:
                f.count -= 1
                if f.count <= 0:
                    del self.faults[i]
                return f
        return None

    # --------------------------------------------------------------- watches
    def add_watcher(
        self,
        coll: Collection,
        *,
        namespace: str,
        label_selector: LabelSelector | None,
        field_selector: FieldSelector | None,
        resource_version: int | None,
    ) -> Watcher:
        """Register a watcher; its ``pending`` holds the initial lines. Caller checks ``floor_rv`` first."""
        w = Watcher(
            collection=coll,
            namespace=namespace,
            label_selector=label_selector,
            field_selector=field_selector,
            min_rv=resource_version or 0,
            buffer_limit=self.watch_buffer_limit,
        )
        if resource_version is None:
            prefix = _PREFIX["ADDED"]
            w.pending.extend(prefix + s.raw + b"}\n" for s in coll.sorted_objects() if w.matches(s))
            w.min_rv = self._rv
        else:
            for ev in coll.events_after(resource_version):
                line = ev.line_for(w)
                if line is not None:
                    w.pending.append(line)
        coll.watchers.add(w)
        return w

    def bookmark_line(self, coll: Collection) -> bytes:
        obj = {
            "kind": coll.kind,
            "apiVersion": coll.api_version,
            "metadata": {"resourceVersion": str(self._rv)},
        }
        return _PREFIX["BOOKMARK"] + dumps(obj) + b"}\n"

    # --------------------------------------------------------------- streams
    def register_stream(
        self, token: object, *, cut: Callable[[], None], close: Callable[[], None], watch: bool = True
    ) -> None:
        self._stream_closers[token] = (cut, close, watch)

    def unregister_stream(self, token: object) -> None:
        self._stream_closers.pop(token, None)
        self._notify()

    @property
    def open_streams(self) -> int:
        """Watch streams plus stalled list responses still open."""
        return len(self._stream_closers)

    async def end_streams(self, timeout_s: float = 5.0) -> None:
        """close_streams(), then wait (bounded) until their handlers have finished writing."""
        self.close_streams()
        with contextlib.suppress(TimeoutError):
            await self.wait_for(lambda: not self._stream_closers, timeout=timeout_s)

    def cut_watches(self) -> int:
        """Abort every open watch stream (mid-line where possible); returns how many."""
        cuts = [cut for cut, _, watch in self._stream_closers.values() if watch]
        for cut in cuts:
            cut()
        return len(cuts)

    def close_streams(self) -> None:
        """End every open stream cleanly (server shutdown)."""
        self.closing = True
        for _, close, _ in list(self._stream_closers.values()):
            close()
        self._notify()

    # -------------------------------------------------------------- snapshots
    def save_snapshot(self, rv: int, items: list[StoredObject]) -> str:
        sid = f"{next(self._snapshot_ids)}"
        self._snapshots[sid] = (rv, items)
        while len(self._snapshots) > self.snapshot_limit:
            self._snapshots.popitem(last=False)
        return sid

    def load_snapshot(self, sid: str) -> tuple[int, list[StoredObject]] | None:
        snap = self._snapshots.get(sid)
        if snap is not None:
            self._snapshots.move_to_end(sid)
        return snap

    def request_started(self, verb: Literal["list", "watch", "other"]) -> None:
        if verb == "list":
            self.list_requests += 1
        elif verb == "watch":
            self.watch_requests += 1
        self._notify()

    def watch_opened(self) -> None:
        self.open_watches += 1
        self.peak_open_watches = max(self.peak_open_watches, self.open_watches)
        self._notify()

    def watch_closed(self) -> None:
        self.open_watches -= 1
        self._notify()
