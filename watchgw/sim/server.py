"""HTTP side of the simulator: the Kubernetes list/watch protocol over aiohttp.

Watch streams are served with ``handler_cancellation=True`` by :func:`serve_sim` and
:func:`watchgw.sim.testing.running_simulator`, so a client that goes away is noticed at once;
under another runner (e.g. pytest-aiohttp's ``aiohttp_server``) a closed connection is noticed
within a second.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import logging
import math
import re
import time
import uuid
from dataclasses import dataclass
from typing import Any, Literal

import structlog
import ujson
from aiohttp import web

from .rbac import SimRbac, owns_user_scope, uid_of
from .selectors import FieldSelector, LabelSelector, SelectorError, parse_field_selector, parse_label_selector
from .store import (
    _PREFIX,
    CLUSTER_SCOPED,
    Collection,
    Fault,
    SimConflict,
    SimNotFound,
    Simulator,
    StoredObject,
    dumps,
    kind_of,
)

__all__ = ["SIM_KEY", "make_sim_app", "parse_bool", "serve_sim"]

log = logging.getLogger(__name__)

SIM_KEY = web.AppKey("watchgw_sim", Simulator)
JSON = "application/json"
DEMO_GROUPS = (
    "dns.networking.miloapis.com/v1alpha1",
    "networking.datumapis.com/v1alpha",
    "telemetry.miloapis.com/v1alpha1",
)
CORE_DEFAULTS = ("configmaps", "secrets", "namespaces")
VERBS = ["create", "delete", "get", "list", "patch", "update", "watch"]
STATS_PATH = "/sim/stats"
"""The simulator's own counters (not a Kubernetes path): what tests in other processes read."""
PUBLIC_PATHS = frozenset({"/version", "/healthz", "/readyz", "/livez", STATS_PATH})
CUT_FRAGMENT = b'{"type":"MODIFIED","object":{"kind":'
_TRUE = frozenset({"1", "t", "T", "TRUE", "true", "True"})
_FALSE = frozenset({"0", "f", "F", "FALSE", "false", "False"})
CONTINUE_TOO_OLD = (
    "The provided continue parameter is too old to display a consistent list result. You can start a new "
    "list without the continue parameter, or use the continue token in this response to retrieve the "
    "remainder of the results. Continuing with the provided token results in an inconsistent list - "
    "objects that were created, modified, or deleted between the time the first chunk was returned and now "
    "may show up in the list."
)


SSR_PATH = "/apis/authentication.k8s.io/v1/selfsubjectreviews"
SSAR_PATH = "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews"
REVIEW_PATHS = frozenset({SSR_PATH, SSAR_PATH})


class BadRequest(ValueError):
    pass


def parse_bool(value: str) -> bool:
    """Go's strconv.ParseBool."""
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise BadRequest(f'strconv.ParseBool: parsing "{value}": invalid syntax')


def status_body(
    code: int, reason: str, message: str, details: dict[str, Any] | None = None
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
    }
    if details:
        body["details"] = details
    body["code"] = code
    return body


def status_response(
    code: int,
    reason: str,
    message: str,
    *,
    details: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
) -> web.Response:
    return web.Response(
        status=code,
        body=dumps(status_body(code, reason, message, details)),
        content_type=JSON,
        headers=headers,
    )


def json_response(obj: Any, status: int = 200) -> web.Response:
    return web.Response(status=status, body=dumps(obj), content_type=JSON)


def raw_response(raw: bytes, status: int = 200) -> web.Response:
    return web.Response(status=status, body=raw, content_type=JSON)


def _prefix_regex(template: str, field: str) -> re.Pattern[str]:
    escaped = re.escape(template).replace(re.escape("{" + field + "}"), f"(?P<{field}>[^/]+)")
    return re.compile("^" + escaped + "(?=/|$)")


@dataclass(slots=True)
class Target:
    """A parsed resource path."""

    project: str
    org: str
    group: str
    version: str
    plural: str
    namespace: str
    name: str
    user: str = ""
    """The ``{user}`` of a user control plane ("" elsewhere)."""

    @property
    def resource_type(self) -> str:
        if self.group:
            return f"apis/{self.group}/{self.version}/{self.plural}"
        return f"api/{self.version}/{self.plural}"


class _StreamState:
    __slots__ = ("closing", "cut", "waiter")

    def __init__(self) -> None:
        self.closing = False
        self.cut = False
        self.waiter: asyncio.Future[None] | None = None

    def wake(self) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)


class SimServer:
    def __init__(self, sim: Simulator) -> None:
        self.sim = sim
        self._project_re = _prefix_regex(sim.project_prefix, "project")
        self._org_re = _prefix_regex(sim.org_prefix, "org")
        self._user_re = _prefix_regex(sim.user_prefix, "user")

    # ------------------------------------------------------------ dispatch
    async def handle(self, request: web.Request) -> web.StreamResponse:
        sim = self.sim
        path = request.path
        project = org = user_scope = ""
        m = self._project_re.match(path)
        if m:
            project, path = m.group("project"), path[m.end() :]
        elif m := self._org_re.match(path):
            org, path = m.group("org"), path[m.end() :]
        elif m := self._user_re.match(path):
            user_scope, path = m.group("user"), path[m.end() :]
        path = path.rstrip("/") or "/"
        if path in PUBLIC_PATHS and request.method == "GET":
            return self.public(path)
        user = self.authenticate(request)
        if user is None:
            sim.request_started("other")
            return status_response(401, "Unauthorized", "Unauthorized")
        if user_scope and user_scope == user and sim.tokens is not None:
            user_scope = uid_of(user)  # one's own control plane by name is the one under one's uid
        segments = path.strip("/").split("/")
        if request.method == "GET":
            discovery = self.discovery(segments, request)
            if discovery is not None:
                sim.request_started("other")
                return discovery
        if request.method == "POST" and path in REVIEW_PATHS:
            sim.request_started("other")
            # Faults queued for "any" request reach the review endpoints too (an outage is total).
            fault = sim.take_fault("other", request.path_qs)
            if fault is not None:
                early = await self.apply_fault(request, fault, "other")
                if early is not None:
                    return early
            if path == SSR_PATH:
                return self.self_subject_review(user)
            return await self.self_subject_access_review(request, user, project, org, user_scope)
        target = self.parse_target(segments, project, org, user_scope)
        if target is None:
            sim.request_started("other")
            return status_response(404, "NotFound", "the server could not find the requested resource")
        try:
            return await self.resource(request, target, user)
        except BadRequest as exc:
            return status_response(400, "BadRequest", str(exc))

    def authenticate(self, request: web.Request) -> str | None:
        tokens = self.sim.tokens
        if tokens is None:
            return "system:anonymous"
        auth = request.headers.get("Authorization", "")
        scheme, _, token = auth.partition(" ")
        if scheme.lower() != "bearer":
            return None
        return tokens.get(token.strip())

    @staticmethod
    def parse_target(segments: list[str], project: str, org: str, user: str = "") -> Target | None:
        if not all(segments):
            return None
        if segments[0] == "api" and len(segments) >= 3:
            group, version, rest = "", segments[1], segments[2:]
        elif segments[0] == "apis" and len(segments) >= 4:
            group, version, rest = segments[1], segments[2], segments[3:]
        else:
            return None
        namespace = name = ""
        if rest[0] == "namespaces" and len(rest) >= 3:
            namespace, rest = rest[1], rest[2:]
        if len(rest) > 2:
            return None
        plural = rest[0]
        if len(rest) == 2:
            name = rest[1]
        return Target(project, org, group, version, plural, namespace, name, user)

    # ------------------------------------------------------------ discovery
    def public(self, path: str) -> web.Response:
        if path == STATS_PATH:
            sim = self.sim
            return json_response(
                {
                    "openWatches": sim.open_watches,
                    "peakOpenWatches": sim.peak_open_watches,
                    "watchRequests": sim.watch_requests,
                    "listRequests": sim.list_requests,
                    "resourceVersion": sim.resource_version,
                }
            )
        if path == "/version":
            return json_response(
                {
                    "major": "1",
                    "minor": "32",
                    "gitVersion": "v1.32.0-watchgw-sim",
                    "gitCommit": "0000000000000000000000000000000000000000",
                    "gitTreeState": "clean",
                    "buildDate": "2025-01-01T00:00:00Z",
                    "goVersion": "go1.23.0",
                    "compiler": "gc",
                    "platform": "linux/amd64",
                }
            )
        return web.Response(text="ok")

    def _group_versions(self) -> dict[str, set[str]]:
        """group/version -> plurals seen (plus defaults)."""
        gvs: dict[str, set[str]] = {"v1": set(CORE_DEFAULTS)}
        for gv in DEMO_GROUPS:
            gvs.setdefault(gv, set())
        for coll in self.sim.collections():
            gvs.setdefault(coll.api_version, set()).add(coll.plural)
        return gvs

    def discovery(self, segments: list[str], request: web.Request) -> web.Response | None:
        if segments == ["api"]:
            host = request.host
            return json_response(
                {
                    "kind": "APIVersions",
                    "versions": ["v1"],
                    "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": host}],
                }
            )
        if segments == ["apis"]:
            groups: dict[str, list[str]] = {}
            for gv in self._group_versions():
                if "/" in gv:
                    g, v = gv.split("/", 1)
                    groups.setdefault(g, []).append(v)
            items = []
            for g in sorted(groups):
                versions = [{"groupVersion": f"{g}/{v}", "version": v} for v in sorted(groups[g])]
                items.append({"name": g, "versions": versions, "preferredVersion": versions[0]})
            return json_response({"kind": "APIGroupList", "apiVersion": "v1", "groups": items})
        if (len(segments) == 2 and segments[0] == "api") or (len(segments) == 3 and segments[0] == "apis"):
            gv = "/".join(segments[1:])
            plurals = self._group_versions().get(gv)
            if plurals is None:
                if segments[0] == "api":
                    return status_response(
                        404, "NotFound", "the server could not find the requested resource"
                    )
                plurals = set()
            resources = [
                {
                    "name": p,
                    "singularName": kind_of(p).lower(),
                    "namespaced": p not in CLUSTER_SCOPED,
                    "kind": kind_of(p),
                    "verbs": VERBS,
                }
                for p in sorted(plurals)
            ]
            return json_response(
                {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": resources}
            )
        return None

    def self_subject_review(self, user: str) -> web.Response:
        anonymous = user == "system:anonymous"
        groups = ["system:unauthenticated"] if anonymous else ["system:authenticated"]
        user_info: dict[str, Any] = {"username": user, "groups": groups}
        if not anonymous:
            user_info["uid"] = uid_of(user)  # as an API server: anonymous users have no uid
        return json_response(
            {
                "kind": "SelfSubjectReview",
                "apiVersion": "authentication.k8s.io/v1",
                "metadata": {"creationTimestamp": None},
                "status": {"userInfo": user_info},
            },
            status=201,
        )

    def _allowed(self, user: str, attrs: dict[str, str]) -> bool:
        """The decision for a request or an access review: a user control plane (with tokens)
        answers only its own user; elsewhere the authorizer decides (None allows everything)."""
        user_scope = attrs.get("user_scope", "")
        if user_scope and self.sim.tokens is not None:
            return owns_user_scope(user, user_scope)
        authorizer = self.sim.authorizer
        return True if authorizer is None else bool(authorizer(user, attrs))

    async def self_subject_access_review(
        self, request: web.Request, user: str, project: str, org: str, user_scope: str = ""
    ) -> web.Response:
        body = await self._read_json(request)
        attrs = (body.get("spec") or {}).get("resourceAttributes") or {}
        if not isinstance(attrs, dict):
            attrs = {}
        decision = {str(k): str(v) for k, v in attrs.items()}
        decision.update(project=project, org=org, user_scope=user_scope)
        allowed = self._allowed(user, decision)
        status: dict[str, Any] = {"allowed": allowed}
        if not allowed:
            status["denied"] = True
        return json_response(
            {
                "kind": "SelfSubjectAccessReview",
                "apiVersion": "authorization.k8s.io/v1",
                "metadata": {"creationTimestamp": None},
                "spec": body.get("spec") or {},
                "status": status,
            },
            status=201,
        )

    # ------------------------------------------------------------ resources
    async def resource(self, request: web.Request, t: Target, user: str) -> web.StreamResponse:
        sim = self.sim
        q = request.query
        method = request.method
        verb: str
        watch = False
        if method == "GET":
            watch = parse_bool(q["watch"]) if "watch" in q else False
            verb = "watch" if watch else ("get" if t.name else "list")
        else:
            verb = {"POST": "create", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}.get(method, "")
        kind: Literal["list", "watch", "other"] = (
            "watch" if watch else ("list" if verb == "list" else "other")
        )
        sim.request_started(kind)
        if not verb:
            return status_response(
                405, "MethodNotAllowed", "the server does not allow this method on the requested resource"
            )
        if (verb == "create" and t.name) or (verb in ("update", "patch", "delete") and not t.name):
            return status_response(
                405, "MethodNotAllowed", "the server does not allow this method on the requested resource"
            )
        fault = sim.take_fault(kind, request.path_qs)
        if fault is not None:
            early = await self.apply_fault(request, fault, kind)
            if early is not None:
                return early
        if sim.authorizer is not None or (t.user and sim.tokens is not None):
            attrs = {
                "verb": verb,
                "group": t.group,
                "version": t.version,
                "resource": t.plural,
                "namespace": t.namespace,
                "name": t.name,
                "project": t.project,
                "org": t.org,
                "user_scope": t.user,
            }
            if not self._allowed(user, attrs):
                where = f' in the namespace "{t.namespace}"' if t.namespace else " at the cluster scope"
                return status_response(
                    403,
                    "Forbidden",
                    f'{t.plural}{"." + t.group if t.group else ""} is forbidden: User "{user}" cannot {verb} '
                    f'resource "{t.plural}" in API group "{t.group}"{where}',
                    details={"kind": t.plural, "group": t.group, **({"name": t.name} if t.name else {})},
                )
        try:
            coll = sim.collection(t.resource_type, project=t.project, org=t.org, user=t.user)
        except ValueError:
            return status_response(404, "NotFound", "the server could not find the requested resource")
        cut = fault is not None and fault.kind == "cut"
        if watch:
            return await self.watch(request, coll, t, cut=cut)
        if verb == "list":
            return await self.list(request, coll, t, cut=cut)
        resp = await self.single(request, coll, t, verb)
        if cut and isinstance(resp, web.Response) and resp.body is not None:
            assert isinstance(resp.body, bytes)
            return await self.cut_body(request, resp.status, resp.body)
        return resp

    async def apply_fault(
        self, request: web.Request, fault: Fault, kind: Literal["list", "watch", "other"]
    ) -> web.StreamResponse | None:
        k = fault.kind
        if k == "unauthorized":
            return status_response(401, "Unauthorized", "Unauthorized")
        if k == "error500":
            return status_response(500, "InternalError", "Internal error occurred: injected fault")
        if k == "not_found":
            # What a real API server answers for a resource type it does not serve (a CRD removed).
            return status_response(404, "NotFound", "the server could not find the requested resource")
        if k == "too_many":
            return status_response(
                429,
                "TooManyRequests",
                "Too many requests, please try again later.",
                details={"retryAfterSeconds": fault.retry_after_s},
                headers={"Retry-After": str(fault.retry_after_s)},
            )
        if k == "gone_http" or (k == "gone" and kind != "watch"):
            rv = request.query.get("resourceVersion", "")
            return status_response(410, "Expired", f"too old resource version: {rv or 0} ({self.sim.rv})")
        if k == "gone":
            rv = request.query.get("resourceVersion", "") or "0"
            return await self.error_stream(request, f"too old resource version: {rv} ({self.sim.rv})")
        if k == "stall":
            limit_s = self._timeout(request) if kind == "watch" else None
            return await self.stall(request, watch=kind == "watch", limit_s=limit_s)
        return None  # "cut" is applied by the handler once it has something to send

    # ----------------------------------------------------------------- LIST
    @staticmethod
    def _selectors(request: web.Request, t: Target) -> tuple[LabelSelector | None, FieldSelector | None]:
        q = request.query
        try:
            lsel = parse_label_selector(q["labelSelector"]) if q.get("labelSelector") else None
            fsel = parse_field_selector(q["fieldSelector"]) if q.get("fieldSelector") else None
        except SelectorError as exc:
            raise BadRequest(str(exc)) from None
        if t.name:
            extra = parse_field_selector("metadata.name=" + t.name.replace("\\", "\\\\").replace(",", "\\,"))
            fsel = FieldSelector((fsel.requirements if fsel else ()) + extra.requirements)
        return lsel, fsel

    @staticmethod
    def _matcher(namespace: str, lsel: LabelSelector | None, fsel: FieldSelector | None) -> Any:
        def match(s: StoredObject) -> bool:
            if namespace and s.namespace != namespace:
                return False
            if lsel is not None and not lsel.matches(s.labels):
                return False
            return fsel is None or fsel.matches(s.name, s.namespace)

        return match

    @staticmethod
    def _int_param(request: web.Request, name: str) -> int | None:
        value = request.query.get(name, "")
        if value == "":
            return None
        try:
            return int(value)
        except ValueError:
            raise BadRequest(f'invalid value for {name}: "{value}": must be an integer') from None

    async def list(
        self, request: web.Request, coll: Collection, t: Target, *, cut: bool
    ) -> web.StreamResponse:
        sim = self.sim
        q = request.query
        lsel, fsel = self._selectors(request, t)
        limit = self._int_param(request, "limit") or 0
        token = q.get("continue", "")
        rv_param = q.get("resourceVersion", "")
        if token:
            if rv_param:
                return status_response(
                    400, "BadRequest", "specifying resource version is not allowed when using continue"
                )
            try:
                decoded = ujson.loads(base64.urlsafe_b64decode(token.encode() + b"=" * (-len(token) % 4)))
                sid, offset = str(decoded["start"]).split(":")
                offset_i = int(offset)
            except (ValueError, KeyError, TypeError, binascii.Error):
                return status_response(400, "BadRequest", f"continue key is not valid: {token}")
            snap = sim.load_snapshot(sid)
            if snap is None:
                return status_response(410, "Expired", CONTINUE_TOO_OLD)
            rv, items = snap
        else:
            if rv_param not in ("", "0"):
                try:
                    want = int(rv_param)
                except ValueError:
                    return status_response(400, "BadRequest", f'invalid resource version "{rv_param}"')
                if want > sim.rv:
                    try:
                        await sim.wait_for(lambda: sim.rv >= want, timeout=3.0)
                    except TimeoutError:
                        return status_response(
                            504, "Timeout", f"Too large resource version: {want}, current: {sim.rv}"
                        )
            match = self._matcher(t.namespace, lsel, fsel)
            items = [s for s in coll.sorted_objects() if match(s)]
            rv, sid, offset_i = sim.rv, "", 0
        end = offset_i + limit if limit > 0 else len(items)
        page = items[offset_i:end]
        meta = b'{"resourceVersion":"' + str(rv).encode() + b'"'
        if end < len(items):
            if not sid:
                sid = sim.save_snapshot(rv, items)
            start = f"{sid}:{end}"
            next_token = base64.urlsafe_b64encode(
                dumps({"v": "meta.k8s.io/v1", "rv": rv, "start": start})
            ).rstrip(b"=")
            meta += b',"continue":"' + next_token + b'"'
            if lsel is None and fsel is None:
                meta += b',"remainingItemCount":' + str(len(items) - end).encode()
        meta += b"}"
        body = b"".join(
            (
                b'{"kind":"',
                coll.kind.encode(),
                b'List","apiVersion":"',
                coll.api_version.encode(),
                b'","metadata":',
                meta,
                b',"items":[',
                b",".join(s.raw for s in page),
                b"]}",
            )
        )
        if cut:
            return await self.cut_body(request, 200, body)
        return raw_response(body)

    # ------------------------------------------------------- single object
    @staticmethod
    async def _read_json(request: web.Request) -> dict[str, Any]:
        raw = await request.read()
        try:
            body = ujson.loads(raw)
        except ValueError:
            raise BadRequest("the request body is not valid JSON") from None
        if not isinstance(body, dict):
            raise BadRequest("the request body must be a JSON object")
        return body

    def _not_found(self, coll: Collection, name: str) -> web.Response:
        return status_response(
            404,
            "NotFound",
            f'{coll.qualified} "{name}" not found',
            details={"name": name, "group": coll.group, "kind": coll.plural},
        )

    async def single(self, request: web.Request, coll: Collection, t: Target, verb: str) -> web.Response:
        sim = self.sim
        scope = {"project": t.project, "org": t.org, "user": t.user, "namespace": t.namespace}
        if verb == "get":
            ns = "" if coll.plural in CLUSTER_SCOPED else t.namespace
            stored = coll.objects.get((ns, t.name))
            return self._not_found(coll, t.name) if stored is None else raw_response(stored.raw)
        if verb == "delete":
            try:
                return json_response(sim.delete(coll.resource_type, t.name, **scope))
            except SimNotFound:
                return self._not_found(coll, t.name)
        body = await self._read_json(request)
        meta = body.get("metadata")
        if not isinstance(meta, dict):
            meta = body["metadata"] = {}
        body_ns = meta.get("namespace")
        if t.namespace and body_ns and body_ns != t.namespace:
            return status_response(
                400,
                "BadRequest",
                "the namespace of the provided object does not match the namespace sent on the request",
            )
        if verb == "create":
            if not meta.get("name"):
                gen = meta.get("generateName")
                if not gen:
                    return status_response(
                        422,
                        "Invalid",
                        f'{coll.kind} "" is invalid: metadata.name: Required value: '
                        "name or generateName is required",
                    )
                meta["name"] = gen + uuid.uuid4().hex[:5]
            try:
                return json_response(sim.create(coll.resource_type, body, **scope), status=201)
            except SimConflict as exc:
                return status_response(
                    409,
                    "AlreadyExists",
                    str(exc),
                    details={"name": meta["name"], "group": coll.group, "kind": coll.plural},
                )
        ns = "" if coll.plural in CLUSTER_SCOPED else t.namespace
        current = coll.objects.get((ns, t.name))
        if current is None:
            return self._not_found(coll, t.name)
        if verb == "patch":
            ctype = request.content_type
            if ctype not in ("application/merge-patch+json", "application/strategic-merge-patch+json"):
                return status_response(
                    415,
                    "UnsupportedMediaType",
                    "the body of the request was in an unknown format - accepted media types include: "
                    "application/merge-patch+json, application/strategic-merge-patch+json",
                )
            body = _merge_patch(ujson.loads(current.raw), body)
            meta = body.setdefault("metadata", {})
        if meta.get("name", t.name) != t.name:
            return status_response(
                400,
                "BadRequest",
                f"the name of the object ({meta.get('name')}) does not match the name on the URL ({t.name})",
            )
        meta["name"] = t.name
        want_rv = meta.get("resourceVersion")
        if want_rv and str(want_rv) != str(current.rv):
            return status_response(
                409,
                "Conflict",
                f'Operation cannot be fulfilled on {coll.qualified} "{t.name}": the object has been '
                "modified; please apply your changes to the latest version and try again",
                details={"name": t.name, "group": coll.group, "kind": coll.plural},
            )
        return json_response(sim.update(coll.resource_type, body, **scope))

    # --------------------------------------------------------------- WATCH
    def _timeout(self, request: web.Request) -> float:
        value = self._int_param(request, "timeoutSeconds")
        if value is None or value <= 0:
            return self.sim.default_watch_timeout_s
        return float(value)

    async def _start_stream(self, request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(status=200, headers={"Cache-Control": "no-cache, private"})
        resp.content_type = JSON
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        return resp

    async def error_stream(self, request: web.Request, message: str) -> web.StreamResponse:
        self.sim.watch_opened()
        try:
            resp = await self._start_stream(request)
            line = _PREFIX["ERROR"] + dumps(status_body(410, "Expired", message)) + b"}\n"
            with contextlib.suppress(ConnectionError):
                await resp.write(line)
                await resp.write_eof()
            return resp
        finally:
            self.sim.watch_closed()

    async def stall(self, request: web.Request, *, watch: bool, limit_s: float | None) -> web.StreamResponse:
        sim = self.sim
        state = _StreamState()
        token = object()
        loop = asyncio.get_running_loop()

        def cut() -> None:
            state.cut = True
            transport = request.transport
            if transport is not None:
                transport.abort()
            state.wake()

        def close() -> None:
            state.closing = True
            state.wake()

        if watch:
            sim.watch_opened()
        sim.register_stream(token, cut=cut, close=close, watch=watch)
        try:
            if watch:
                resp = await self._start_stream(request)
            else:
                resp = web.StreamResponse(status=200)
                resp.content_type = JSON
                resp.content_length = 1 << 20
                await resp.prepare(request)
            deadline = math.inf if limit_s is None else loop.time() + limit_s
            while not (state.closing or state.cut or sim.closing):
                now = loop.time()
                if now >= deadline or _gone(request):
                    break
                state.waiter = loop.create_future()
                handle = loop.call_later(min(deadline - now, 1.0), _resolve, state.waiter)
                try:
                    await state.waiter
                finally:
                    handle.cancel()
                    state.waiter = None
            if watch and not state.cut:
                with contextlib.suppress(ConnectionError):
                    await resp.write_eof()
            elif not state.cut and request.transport is not None:
                request.transport.abort()  # a list cannot end early without breaking its framing
            return resp
        finally:
            sim.unregister_stream(token)
            if watch:
                sim.watch_closed()

    async def cut_body(self, request: web.Request, status: int, body: bytes) -> web.StreamResponse:
        resp = web.StreamResponse(status=status)
        resp.content_type = JSON
        resp.content_length = len(body)
        await resp.prepare(request)
        with contextlib.suppress(ConnectionError):
            await resp.write(body[: max(1, len(body) // 2)])
            await _flush(request)
        if request.transport is not None:
            request.transport.abort()
        return resp

    async def watch(
        self, request: web.Request, coll: Collection, t: Target, *, cut: bool
    ) -> web.StreamResponse:
        sim = self.sim
        q = request.query
        lsel, fsel = self._selectors(request, t)
        bookmarks = parse_bool(q["allowWatchBookmarks"]) if "allowWatchBookmarks" in q else False
        timeout = self._timeout(request)
        rv_param = q.get("resourceVersion", "")
        rv: int | None = None
        if rv_param not in ("", "0"):
            try:
                rv = int(rv_param)
            except ValueError:
                raise BadRequest(f'invalid resource version "{rv_param}"') from None
            if rv < 0:
                raise BadRequest(f'invalid resource version "{rv_param}"')
        if rv is not None and rv < coll.floor_rv:
            return await self.error_stream(request, f"too old resource version: {rv} ({coll.floor_rv})")
        loop = asyncio.get_running_loop()
        watcher = sim.add_watcher(
            coll,
            namespace="" if coll.plural in CLUSTER_SCOPED else t.namespace,
            label_selector=lsel,
            field_selector=fsel,
            resource_version=rv,
        )
        state = _StreamState()
        token = object()

        def do_cut() -> None:
            if state.cut:
                return
            state.cut = True
            transport = request.transport
            if transport is not None and not transport.is_closing():
                lines = watcher.pending
                partial = lines[0][: len(lines[0]) // 2] if lines else CUT_FRAGMENT
                if prepared:
                    with contextlib.suppress(Exception):
                        transport.write(f"{len(partial):x}\r\n".encode() + partial + b"\r\n")
                transport.abort()
            watcher.pending = []
            watcher.close()

        def close() -> None:
            state.closing = True
            watcher.wake()

        prepared = False
        sim.watch_opened()
        sim.register_stream(token, cut=do_cut, close=close, watch=True)
        try:
            resp = await self._start_stream(request)
            prepared = True
            if cut:
                lines, watcher.pending = watcher.pending, []
                if len(lines) >= 2:
                    data = b"".join(lines[:-1]) + lines[-1][: len(lines[-1]) // 2]
                elif lines:
                    data = lines[0][: len(lines[0]) // 2]
                else:
                    data = CUT_FRAGMENT
                with contextlib.suppress(ConnectionError):
                    await resp.write(data)
                    await _flush(request)
                state.cut = True
                if request.transport is not None:
                    request.transport.abort()
                return resp
            now = loop.time()
            deadline = now + timeout
            interval = sim.bookmark_interval_s
            next_bookmark = now + interval if bookmarks and interval > 0 else math.inf
            while True:
                if state.cut:
                    return resp
                lines = watcher.pending
                if lines:
                    watcher.pending = []
                    await resp.write(lines[0] if len(lines) == 1 else b"".join(lines))
                    continue
                if watcher.closed or state.closing or sim.closing:
                    break
                now = loop.time()
                if now >= deadline or _gone(request):
                    break
                if now >= next_bookmark:
                    watcher.pending.append(sim.bookmark_line(coll))
                    next_bookmark = now + interval
                    continue
                await watcher.wait(min(deadline, next_bookmark, now + 1.0) - now)
            with contextlib.suppress(ConnectionError):
                await resp.write_eof()
            return resp
        except ConnectionError:
            return resp
        finally:
            watcher.close()
            sim.unregister_stream(token)
            sim.watch_closed()


def _merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch."""
    if not isinstance(patch, dict):
        return patch
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = _merge_patch(result.get(key), value)
    return result


def _resolve(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


def _gone(request: web.Request) -> bool:
    transport = request.transport
    return transport is None or transport.is_closing()


async def _flush(request: web.Request) -> None:
    """Wait (bounded) until the transport has handed everything to the kernel."""
    transport = request.transport
    for _ in range(200):
        if transport is None or transport.is_closing() or transport.get_write_buffer_size() == 0:
            return
        await asyncio.sleep(0.005)


def make_sim_app(sim: Simulator) -> web.Application:
    """The simulator's aiohttp application. Open streams are ended when the app shuts down."""
    app = web.Application(client_max_size=8 * 1024 * 1024)
    app[SIM_KEY] = sim
    server = SimServer(sim)
    app.router.add_route("*", "/{tail:.*}", server.handle)

    async def on_shutdown(_: web.Application) -> None:
        await sim.end_streams()

    app.on_shutdown.append(on_shutdown)
    return app


async def serve_sim(
    *,
    host: str,
    port: int,
    demo_churn: bool = False,
    sim: Simulator | None = None,
    rbac: SimRbac | None = None,
) -> None:
    """Serve a simulator until cancelled (``watchgw sim --port P``); ``rbac``: require tokens and
    answer from these grants (``--rbac FILE``)."""
    from .demo import run_demo_churn

    sim = sim or Simulator()
    if rbac is not None:
        rbac.apply(sim)
    runner = web.AppRunner(make_sim_app(sim), handler_cancellation=True, shutdown_timeout=5.0)
    await runner.setup()
    churn: asyncio.Task[None] | None = None
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        bound = runner.addresses[0][1] if runner.addresses else port
        structlog.get_logger("watchgw.sim").info(
            "sim.listening",
            url=f"http://{host}:{bound}",
            # "rbac": a token is required and the file's grants decide; "none": anyone may do anything.
            auth="rbac" if rbac is not None else "none",
        )
        if demo_churn:
            churn = asyncio.create_task(run_demo_churn(sim))
        started = time.monotonic()
        while True:
            await asyncio.sleep(3600)
            log.debug("sim.alive uptime_s=%.0f", time.monotonic() - started)
    finally:
        if churn is not None:
            churn.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await churn
        await runner.cleanup()
