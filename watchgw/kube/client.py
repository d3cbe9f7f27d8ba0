"""LIST (paginated) and WATCH (streaming) requests to the control plane, with typed errors.

The watch stream is the hot path (tens of thousands of events per second on one core). Each line
is parsed once with ``ujson.loads``. The object's JSON for :attr:`WatchEvent.object_json` is cut
from the line instead of being encoded again: the API server writes every line as exactly
``{"type":"<T>","object":<obj>}``, so when the line starts with that prefix and the parsed dict
has exactly those two keys, ``<obj>`` is ``line[len(prefix):-1]``. Anything else falls back to
``ujson.dumps``. Events are yielded in batches (one list per received chunk) because an async
generator step per event would cost as much as parsing it.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass
from typing import Any, Final

import aiohttp
import structlog
import ujson
from yarl import URL

from watchgw.config import UpstreamConfig
from watchgw.kube.credentials import Credentials
from watchgw.kube.errors import (
    APIError,
    GoneError,
    MalformedResponseError,
    UpstreamConnectionError,
    error_for_status,
    error_from_status_object,
    is_status_object,
    parse_retry_after,
    truncate,
)
from watchgw.kube.ndjson import DEFAULT_MAX_LINE_BYTES, iter_lines
from watchgw.kube.types import EventType, ObjectKey, WatchEvent, WatchTarget
from watchgw.kube.urls import build_query, build_url

log = structlog.get_logger("watchgw.kube")

#: Bytes of an error body read to find a ``Status``; the rest is not worth reading.
MAX_ERROR_BODY_BYTES = 64 * 1024
#: Times a paginated LIST starts over when its ``continue`` token expires (410) mid-way.
MAX_LIST_RESTARTS = 3

_DATA_TYPES: Final[dict[str, EventType]] = {
    "ADDED": "ADDED",
    "MODIFIED": "MODIFIED",
    "DELETED": "DELETED",
    "BOOKMARK": "BOOKMARK",
}
_PREFIXES: Final[dict[str, bytes]] = {t: b'{"type":"' + t.encode() + b'","object":' for t in _DATA_TYPES}
_PREFIX_LENGTHS: Final[dict[str, tuple[EventType, bytes, int]]] = {
    t: (_DATA_TYPES[t], p, len(p)) for t, p in _PREFIXES.items()
}


def encode_object(obj: dict[str, Any]) -> bytes:
    """Compact JSON of ``obj`` for :attr:`WatchEvent.object_json` (no ``\\n``: SSE-safe)."""
    data: str = ujson.dumps(obj, ensure_ascii=False, escape_forward_slashes=False)
    return data.encode()


def object_key(obj: dict[str, Any]) -> ObjectKey:
    """``namespace/name``, or ``name`` for a cluster-scoped object."""
    meta = obj.get("metadata")
    if type(meta) is not dict:
        return ObjectKey("")
    name = meta.get("name") or ""
    ns = meta.get("namespace")
    return ObjectKey(f"{ns}/{name}" if ns else str(name))


@dataclass(slots=True)
class ListResult:
    items: list[dict[str, Any]]
    resource_version: str
    api_version: str = ""
    kind: str = ""
    """Kind of the items (the list's kind without ``List``)."""
    pages: int = 1


class KubeClient:
    """One control plane (``config.url``): LIST and WATCH of collections.

    Creates and owns an :class:`aiohttp.ClientSession` (no connection limit: every channel holds
    one watch) unless ``session`` is given; :meth:`close` closes only an owned session.
    """

    def __init__(
        self,
        config: UpstreamConfig,
        session: aiohttp.ClientSession | None = None,
        *,
        credentials: Credentials | None = None,
        max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
        read_bufsize: int = 256 * 1024,
    ) -> None:
        self.config = config
        self.credentials = credentials if credentials is not None else Credentials(config)
        self._session = session
        self._owns_session = session is None
        self._max_line_bytes = max_line_bytes
        self._read_bufsize = read_bufsize
        self._https = config.url.startswith("https://")
        self._list_timeout = aiohttp.ClientTimeout(
            total=config.request_timeout_s,
            connect=config.connect_timeout_s,
            sock_connect=config.connect_timeout_s,
        )
        # No total timeout on a watch: the informer restarts a stream that stays silent.
        self._watch_timeout = aiohttp.ClientTimeout(
            total=None, connect=config.connect_timeout_s, sock_connect=config.connect_timeout_s
        )

    async def __aenter__(self) -> KubeClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._owns_session and self._session is not None:
            await self._session.close()
            self._session = None

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None:
            connector = aiohttp.TCPConnector(
                limit=0,
                limit_per_host=0,
                ssl=self.credentials.ssl if self._https else True,
            )
            self._session = aiohttp.ClientSession(
                connector=connector,
                timeout=self._watch_timeout,
                headers={"Accept": "application/json", "User-Agent": "watchgw"},
            )
        return self._session

    def _ssl(self) -> Any:
        # An owned session already carries the context in its connector.
        return self.credentials.ssl if self._https and not self._owns_session else True

    # -- LIST --------------------------------------------------------------------------------

    async def list_all(self, target: WatchTarget, *, token: str | None = None) -> ListResult:
        """Every object of the collection, paginated by ``config.list_page_size``.

        Items get the list's ``apiVersion`` and ``kind`` (without ``List``) when they lack them,
        as watch events carry them. A ``continue`` token that expires mid-way restarts the LIST.
        """
        restarts = 0
        while True:
            try:
                return await self._list_pages(target, token=token)
            except _ContinueExpired as exc:
                restarts += 1
                if restarts > MAX_LIST_RESTARTS:
                    raise exc.error from exc
                log.info(
                    "upstream.list_restarted", resource_type=target.resource_type, reason="continue expired"
                )

    async def _list_pages(self, target: WatchTarget, *, token: str | None) -> ListResult:
        items: list[dict[str, Any]] = []
        continue_token: str | None = None
        pages = 0
        api_version = kind = rv = ""
        while True:
            params = build_query(target, limit=self.config.list_page_size, continue_token=continue_token)
            url = build_url(self.config, target, params)
            try:
                body = await self._get_json(url, token=token)
            except GoneError as exc:
                if continue_token:
                    raise _ContinueExpired(exc) from exc
                raise
            pages += 1
            if type(body) is not dict or type(body.get("items", [])) is not list:
                raise MalformedResponseError("LIST response is not a list object")
            meta = body.get("metadata") or {}
            if type(meta) is not dict:
                raise MalformedResponseError("LIST response metadata is not an object")
            api_version = body.get("apiVersion") or api_version
            list_kind = body.get("kind") or ""
            if isinstance(list_kind, str) and list_kind.endswith("List"):
                kind = list_kind[:-4]
            for item in body.get("items") or ():
                if type(item) is not dict:
                    raise MalformedResponseError("LIST item is not an object")
                if api_version and "apiVersion" not in item:
                    item["apiVersion"] = api_version
                if kind and "kind" not in item:
                    item["kind"] = kind
                items.append(item)
            rv = meta.get("resourceVersion") or rv
            continue_token = meta.get("continue") or None
            if not continue_token:
                break
        if not isinstance(rv, str) or not rv:
            raise MalformedResponseError("LIST response has no metadata.resourceVersion")
        return ListResult(
            items=items, resource_version=rv, api_version=str(api_version), kind=kind, pages=pages
        )

    async def post_json(self, url: str, body: Any, *, token: str | None = None) -> Any:
        """POST ``body`` as JSON to a full ``url`` (e.g. an access review under
        :func:`~watchgw.kube.urls.scope_base_url`); the parsed answer, or a typed error."""
        return await self._request_json("POST", url, token=token, body=body)

    async def _get_json(self, url: str, *, token: str | None) -> Any:
        return await self._request_json("GET", url, token=token)

    async def _request_json(self, method: str, url: str, *, token: str | None, body: Any = None) -> Any:
        session = self._get_session()
        headers = self.credentials.headers(token)
        data: bytes | None = None
        if body is not None:
            data = ujson.dumps(body, ensure_ascii=False, escape_forward_slashes=False).encode()
            headers["Content-Type"] = "application/json"
        try:
            async with session.request(
                method,
                URL(url, encoded=True),
                headers=headers,
                data=data,
                timeout=self._list_timeout,
                ssl=self._ssl(),
            ) as resp:
                if resp.status >= 400:
                    raise await _error_from_response(resp)
                raw = await resp.read()
        except aiohttp.ClientError as exc:
            raise _connection_error(exc) from exc
        except TimeoutError as exc:
            raise UpstreamConnectionError("request timed out", reason="Timeout") from exc
        try:
            return ujson.loads(raw)
        except ValueError as exc:
            raise MalformedResponseError(f"response is not JSON: {exc}") from exc

    # -- WATCH -------------------------------------------------------------------------------

    async def watch(
        self,
        target: WatchTarget,
        *,
        resource_version: str,
        timeout_s: int | None,
        allow_bookmarks: bool = True,
        token: str | None = None,
        on_open: Callable[[], None] | None = None,
        on_chunk: Callable[[], None] | None = None,
    ) -> AsyncGenerator[list[WatchEvent], None]:
        """Batches of events of one watch request, in stream order, until the server ends it.

        An in-stream ERROR raises the :class:`APIError` of its Status code (410 -> GoneError) after
        the events before it were yielded; an unknown event type is logged and skipped; a line
        that is not an event raises :class:`MalformedResponseError`. ``on_open`` is called once
        the response headers are accepted, ``on_chunk`` for every chunk received. Use it with
        ``contextlib.aclosing`` so an abandoned stream closes its response at once.
        """
        params = build_query(
            target,
            watch=True,
            resource_version=resource_version,
            timeout_s=timeout_s,
            allow_bookmarks=allow_bookmarks,
        )
        url = build_url(self.config, target, params)
        session = self._get_session()
        try:
            async with session.get(
                URL(url, encoded=True),
                headers=self.credentials.headers(token),
                timeout=self._watch_timeout,
                ssl=self._ssl(),
                read_bufsize=self._read_bufsize,
            ) as resp:
                if resp.status >= 400:
                    raise await _error_from_response(resp)
                if on_open is not None:
                    on_open()
                async for lines in iter_lines(
                    resp.content.iter_any(), max_line_bytes=self._max_line_bytes, on_chunk=on_chunk
                ):
                    events, error = parse_watch_lines(lines)
                    if events:
                        yield events
                    if error is not None:
                        raise error
        except aiohttp.ClientError as exc:
            raise _connection_error(exc) from exc
        except TimeoutError as exc:
            raise UpstreamConnectionError("watch request timed out", reason="Timeout") from exc


class _ContinueExpired(Exception):
    def __init__(self, error: GoneError) -> None:
        super().__init__(str(error))
        self.error = error


def parse_watch_lines(lines: list[bytes]) -> tuple[list[WatchEvent], APIError | None]:
    """Events of complete NDJSON lines, and the error that ends the stream (if any).

    The events before an error line are returned with it, so none is lost.
    """
    events: list[WatchEvent] = []
    loads = ujson.loads
    prefixes = _PREFIX_LENGTHS
    append = events.append
    for line in lines:
        try:
            d = loads(line)
        except ValueError as exc:
            err = MalformedResponseError(f"watch line is not JSON ({len(line)} bytes): {exc}")
            err.__cause__ = exc
            return events, err
        if type(d) is not dict:
            return events, MalformedResponseError("watch line is not a JSON object")
        t = d.get("type")
        obj = d.get("object")
        found = prefixes.get(t) if type(t) is str else None
        if found is None:
            if t == "ERROR":
                return events, error_from_status_object(obj)
            log.warning("upstream.unknown_event", event_type=truncate(str(t), 64))
            continue
        event_type, prefix, plen = found
        if type(obj) is not dict:
            return events, MalformedResponseError(f"{event_type} event without an object")
        meta = obj.get("metadata")
        if type(meta) is not dict:
            return events, MalformedResponseError(f"{event_type} event object without metadata")
        rv = meta.get("resourceVersion")
        if type(rv) is not str:
            return events, MalformedResponseError(f"{event_type} event object without resourceVersion")
        # The object's bytes, cut from the line: exactly '{"type":"<T>","object":{...}}'.
        if len(d) == 2 and line.startswith(prefix) and line.endswith(b"}}") and line[plen] == 123:
            object_json = line[plen:-1]
            if b"\r" in object_json:
                object_json = encode_object(obj)
        else:
            object_json = encode_object(obj)
        if event_type == "BOOKMARK":
            key = ObjectKey("")
        else:
            ns = meta.get("namespace")
            name = meta.get("name") or ""
            key = ObjectKey(f"{ns}/{name}" if ns else name)
        append(WatchEvent(event_type, key, obj, object_json, rv))
    return events, None


async def _read_bounded(resp: aiohttp.ClientResponse, limit: int) -> bytes:
    parts: list[bytes] = []
    size = 0
    async for chunk in resp.content.iter_any():
        parts.append(chunk)
        size += len(chunk)
        if size >= limit:
            break
    return b"".join(parts)[:limit]


async def _error_from_response(resp: aiohttp.ClientResponse) -> APIError:
    """The typed error of a >= 400 response, from its ``Status`` body when it has one."""
    retry_after = parse_retry_after(resp.headers.get("Retry-After"))
    try:
        raw = await _read_bounded(resp, MAX_ERROR_BODY_BYTES)
    except (aiohttp.ClientError, TimeoutError):
        raw = b""
    obj: Any = None
    if raw[:1] == b"{":
        try:
            obj = ujson.loads(raw)
        except ValueError:
            obj = None
    if is_status_object(obj):
        err = error_from_status_object(obj, http_status=resp.status, retry_after_s=retry_after)
        if err.status != resp.status:
            # The HTTP status is authoritative; keep the Status's words.
            err = error_for_status(
                resp.status, reason=err.reason, message=err.message, retry_after_s=retry_after
            )
        return err
    text = raw.decode("utf-8", "replace").strip()
    return error_for_status(
        resp.status,
        reason=(resp.reason or "").replace(" ", ""),
        message=text or f"HTTP {resp.status} {resp.reason or ''}".strip(),
        retry_after_s=retry_after,
    )


def _connection_error(exc: BaseException) -> UpstreamConnectionError:
    if isinstance(exc, aiohttp.ClientPayloadError):
        reason = "StreamCut"
    elif isinstance(exc, aiohttp.ServerDisconnectedError):
        reason = "ServerDisconnected"
    elif isinstance(exc, aiohttp.ClientConnectorError):
        reason = "ConnectionFailed"
    else:
        reason = "ConnectionFailed"
    # str(exc) of aiohttp errors names host and port, never headers.
    return UpstreamConnectionError(f"{type(exc).__name__}: {exc}", reason=reason)


__all__ = [
    "KubeClient",
    "ListResult",
    "encode_object",
    "object_key",
    "parse_watch_lines",
]
