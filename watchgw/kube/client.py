"""LIST (paginated) and WATCH (streaming) requests to the control plane, with typed errors.

The watch stream is the hot path (tens of thousands of events per second on one core). Each line
is parsed once with ``ujson.loads``. The object's JSON for :attr:`WatchEvent.object_json` is cut
from the line instead of being encoded again: the API server writes every line as exactly
``{"type":"<T>","object":<obj>}``, so when the line starts with that prefix and the parsed dict
has exactly those two keys, ``<obj>`` is ``line[len(prefix):-1]``. Anything else falls back to
``ujson.dumps``. Events are yielded in batches (one list per received chunk) because an async
generator step per event would cost as much as parsing it.

What reaches a frame is valid JSON for a browser, whatever the upstream sent:

- ujson accepts ``NaN``, ``Infinity``, ``1e999`` (a float ``inf``), ``01``, ``1.`` and ``-``;
  a browser's ``JSON.parse`` refuses most of them and reads ``1e999`` and integers beyond ~1.8e308
  as ``Infinity``. :func:`may_hold_bad_number` looks for such tokens in the raw line (a few
  literal-prefixed regex scans; the rules and their limits are next to it); a line it flags is
  encoded again by :func:`encode_object`, which writes canonical numbers, replaces those that are
  not finite doubles with ``null`` and logs ``upstream.number_out_of_range`` once per object.
- A string holding a lone surrogate (``"\\ud800"`` is valid JSON, not valid UTF-8) is written
  with ``\\u`` escapes; object keys holding one are escaped the same way before they reach a log.
- Every ``resourceVersion`` (LIST, event, bookmark) must pass
  :func:`~watchgw.kube.types.is_valid_resource_version`, else the response is malformed.

Transport failures aiohttp does not wrap (a bare ``OSError``, ``ssl.SSLError``) become
:class:`UpstreamConnectionError` like those it does; every error leaves here with the tokens the
request used redacted from its text.
"""

from __future__ import annotations

import contextlib
import math
import re
import ssl
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
from watchgw.kube.types import (
    MAX_RESOURCE_VERSION_CHARS,
    EventType,
    ObjectKey,
    WatchEvent,
    WatchTarget,
    is_valid_resource_version,
)
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


# -- numbers a browser cannot take as they are -------------------------------------------------
#
# ujson accepts NaN, Infinity, 1e999 (a float inf), 01, 1. and a lone "-"; a browser's JSON.parse
# refuses all of them but 1e999, which it reads (like integers of 309 digits or more) as Infinity.
# Encoding an object again costs about as much as parsing it, so a watch line is spliced into the
# frame as it is unless the scans below flag it. Each pattern starts with a literal, so the regex
# engine jumps between candidates (a character class first is 5-10 times slower). They look at
# member values (after '":', with or without whitespace) and, when there is an array that starts
# with a number, at array elements. Not looked at: a value after whitespace *before* a colon, and
# an element of an array that starts with something else (mixed arrays); neither is what an API
# server writes (Go's encoder is compact, Python's puts the space after the colon). A flag only
# means "encode again": a false alarm costs that encoding and nothing else.
_AFTER_FIRST_DIGIT = rb"(?:(?<=0)\d|\d{308}|\d*+(?:[eE]|\.(?:\d*+[eE]|(?!\d))))"
_NUMBER = rb"\d" + _AFTER_FIRST_DIGIT
#: A value whose first byte may start a number (or NaN, Infinity, whitespace) and that is not a
#: plain, finite, canonical number.
_BAD_VALUE: Final = (
    rb"[-\dIN\s](?:(?<=\d)"
    + _AFTER_FIRST_DIGIT
    + rb"|(?<=[IN])|(?<=-)(?:\D|"
    + _NUMBER
    + rb")|(?<=\s)\s*+(?:NaN|-?Infinity|-?"
    + _NUMBER
    + rb"))"
)
_BAD_MEMBER: Final = re.compile(rb'":' + _BAD_VALUE).search
_NUMBER_ARRAY: Final = re.compile(rb"\[\s*+[-\dIN]").search
_BAD_FIRST_ELEMENT: Final = re.compile(rb"\[" + _BAD_VALUE).search
_BAD_NEXT_ELEMENT: Final = re.compile(rb"," + _BAD_VALUE).search
#: Integers from this magnitude on round to Infinity as a double (what a browser parses them to).
_DOUBLE_OVERFLOW: Final = 2**1024 - 2**970


def may_hold_bad_number(json_text: bytes) -> bool:
    """Whether ``json_text`` may hold a number a browser cannot take as it is (see above):
    two scans for a line without an array of numbers, four with one."""
    if _BAD_MEMBER(json_text) is not None:
        return True
    if _NUMBER_ARRAY(json_text) is not None:
        return _BAD_FIRST_ELEMENT(json_text) is not None or _BAD_NEXT_ELEMENT(json_text) is not None
    return False


def encode_object(obj: dict[str, Any], key: str | None = None) -> bytes:
    """Compact JSON of ``obj`` for :attr:`WatchEvent.object_json`: UTF-8, no ``\\n`` (SSE-safe),
    and valid for a browser's ``JSON.parse``.

    Numbers that are not finite doubles are replaced by ``null`` in ``obj`` itself (so the cache
    and the bytes agree) and logged once, with ``key`` (``object_key(obj)`` when not given).
    """
    try:
        data = _dumps(obj)
    except OverflowError:  # NaN or +-Infinity
        data = None
    if data is None or may_hold_bad_number(data):
        replaced = replace_non_finite_numbers(obj)
        if replaced:
            log.warning(
                "upstream.number_out_of_range",
                key=object_key(obj) if key is None else key,
                replaced=replaced,
                note="not a finite number: sent as null",
            )
            data = _dumps(obj)
        elif data is None:  # pragma: no cover - ujson raised for a number the walk accepts
            raise MalformedResponseError("object has a number that cannot be encoded")
    return data


def _dumps(obj: dict[str, Any]) -> bytes:
    try:
        text: str = ujson.dumps(obj, ensure_ascii=False, escape_forward_slashes=False, allow_nan=False)
        return text.encode()
    except UnicodeEncodeError:
        # A lone surrogate: valid in JSON as an escape, not in UTF-8. Escape all non-ASCII.
        text = ujson.dumps(obj, ensure_ascii=True, escape_forward_slashes=False, allow_nan=False)
        return text.encode()


def replace_non_finite_numbers(root: dict[str, Any] | list[Any]) -> int:
    """Replace, in place, every number in ``root`` a browser cannot hold as a finite double (NaN,
    +-Infinity, integers of magnitude >= ~1.8e308) with ``None``; how many were replaced.

    Iterative, so a deeply nested object cannot exhaust the recursion limit.
    """
    replaced = 0
    stack: list[dict[str, Any] | list[Any]] = [root]
    while stack:
        node = stack.pop()
        pairs = node.items() if type(node) is dict else enumerate(node)
        for k, v in pairs:  # assigning to existing keys while iterating is fine: no resize
            t = type(v)
            if t is dict or t is list:
                stack.append(v)
            elif (t is float and not math.isfinite(v)) or (t is int and abs(v) >= _DOUBLE_OVERFLOW):
                node[k] = None  # type: ignore[index]
                replaced += 1
    return replaced


def object_key(obj: dict[str, Any]) -> ObjectKey:
    """``namespace/name``, or ``name`` for a cluster-scoped object (always a loggable ``str``)."""
    meta = obj.get("metadata")
    if type(meta) is not dict:
        return ObjectKey("")
    name = meta.get("name") or ""
    ns = meta.get("namespace")
    key = f"{ns}/{name}" if ns else f"{name}"
    return ObjectKey(key if key.isascii() else loggable(key))


def loggable(text: str) -> str:
    """``text`` with lone surrogates (which cannot be encoded) written as ``\\udxxx`` escapes."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def describe_bad_resource_version(value: object) -> str:
    """What is wrong with a resourceVersion that :func:`is_valid_resource_version` refused,
    without echoing a long one."""
    if type(value) is not str:
        return f"is a JSON {type(value).__name__}, not a string"
    if not value:
        return "is empty"
    if len(value) > MAX_RESOURCE_VERSION_CHARS:
        return f"is {len(value)} characters long (at most {MAX_RESOURCE_VERSION_CHARS} digits)"
    return f"{loggable(value)!r} is not ASCII digits"


@dataclass(slots=True)
class ListResult:
    items: list[dict[str, Any]]
    resource_version: str
    api_version: str = ""
    kind: str = ""
    """Kind of the items (the list's kind without ``List``)."""
    pages: int = 1


class ListTooLargeError(APIError):
    """A LIST whose pages add up to more than ``upstream.max_list_bytes``: not read further (413)."""

    default_status = 413
    default_reason = "ListTooLarge"


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
        The bodies of all pages together may have at most ``config.max_list_bytes``: each page is
        read in chunks up to what is left, and past it :class:`ListTooLargeError` is raised.
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
        api_version = kind = ""
        rv: object = ""
        left = self.config.max_list_bytes
        while True:
            params = build_query(target, limit=self.config.list_page_size, continue_token=continue_token)
            url = build_url(self.config, target, params)
            try:
                body, size = await self._get_list_page(url, token=token, max_bytes=left)
                left -= size
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
                _check_item_resource_version(item)
                if api_version and "apiVersion" not in item:
                    item["apiVersion"] = api_version
                if kind and "kind" not in item:
                    item["kind"] = kind
                items.append(item)
            rv = meta.get("resourceVersion") or rv
            continue_token = meta.get("continue") or None
            if continue_token is not None and type(continue_token) is not str:
                raise MalformedResponseError("LIST response metadata.continue is not a string")
            if not continue_token:
                break
        if not rv:
            raise MalformedResponseError("LIST response has no metadata.resourceVersion")
        if not is_valid_resource_version(rv):
            raise MalformedResponseError(
                f"LIST response metadata.resourceVersion {describe_bad_resource_version(rv)}"
            )
        return ListResult(
            items=items, resource_version=rv, api_version=str(api_version), kind=kind, pages=pages
        )

    async def post_json(self, url: str, body: Any, *, token: str | None = None) -> Any:
        """POST ``body`` as JSON to a full ``url`` (e.g. an access review under
        :func:`~watchgw.kube.urls.scope_base_url`); the parsed answer, or a typed error."""
        return await self._request_json("POST", url, token=token, body=body)

    async def _get_list_page(self, url: str, *, token: str | None, max_bytes: int) -> tuple[Any, int]:
        """One LIST page, parsed, and the bytes of its body (at most ``max_bytes``)."""
        try:
            return await self._request_json_unredacted("GET", url, token=token, max_bytes=max_bytes)
        except APIError as exc:
            exc.redact(self.credentials.tokens_in_use(token))
            raise

    async def _request_json(self, method: str, url: str, *, token: str | None, body: Any = None) -> Any:
        try:
            answer, _size = await self._request_json_unredacted(method, url, token=token, body=body)
            return answer
        except APIError as exc:
            exc.redact(self.credentials.tokens_in_use(token))
            raise

    async def _request_json_unredacted(
        self, method: str, url: str, *, token: str | None, body: Any = None, max_bytes: int | None = None
    ) -> tuple[Any, int]:
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
                if max_bytes is None:
                    raw = await resp.read()
                else:
                    raw = await self._read_list_body(resp, max_bytes)
        except aiohttp.ClientError as exc:
            raise _connection_error(exc) from exc
        except TimeoutError as exc:
            raise UpstreamConnectionError("request timed out", reason="Timeout") from exc
        except OSError as exc:  # after TimeoutError, which is one; ssl.SSLError is one too
            raise _connection_error(exc) from exc
        try:
            return ujson.loads(raw), len(raw)
        except ValueError as exc:  # UnicodeDecodeError (invalid UTF-8) is one
            raise MalformedResponseError(f"response is not JSON: {exc}") from exc

    async def _read_list_body(self, resp: aiohttp.ClientResponse, max_bytes: int) -> bytes:
        """The body, read in chunks; :class:`ListTooLargeError` as soon as it passes ``max_bytes``
        (or at once when its ``Content-Length`` says it will): never more is held."""
        limit = self.config.max_list_bytes
        too_large = ListTooLargeError(
            f"the collection is larger than upstream.max_list_bytes ({limit} bytes): not listed"
        )
        length = resp.content_length
        if length is not None and length > max_bytes:
            raise too_large
        parts: list[bytes] = []
        size = 0
        async for part in resp.content.iter_chunked(64 * 1024):
            size += len(part)
            if size > max_bytes:
                raise too_large
            parts.append(part)
        return b"".join(parts)

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
        on_progress: Callable[[], None] | None = None,
    ) -> AsyncGenerator[list[WatchEvent], None]:
        """Batches of events of one watch request, in stream order, until the server ends it.

        An in-stream ERROR raises the :class:`APIError` of its Status code (410 -> GoneError) after
        the events before it were yielded; an unknown event type is logged and skipped; a line
        that is not an event raises :class:`MalformedResponseError`. ``on_open`` is called once
        the response headers are accepted, ``on_progress`` whenever a chunk completes at least
        one line (bytes that never complete a line are not a sign of life). Use it with
        ``contextlib.aclosing`` so an abandoned stream closes its response at once.
        """
        stream = self._watch_unredacted(
            target,
            resource_version=resource_version,
            timeout_s=timeout_s,
            allow_bookmarks=allow_bookmarks,
            token=token,
            on_open=on_open,
            on_progress=on_progress,
        )
        try:
            async with contextlib.aclosing(stream):  # closed with us: the response too, at once
                async for events in stream:
                    yield events
        except APIError as exc:
            exc.redact(self.credentials.tokens_in_use(token))
            raise

    async def _watch_unredacted(
        self,
        target: WatchTarget,
        *,
        resource_version: str,
        timeout_s: int | None,
        allow_bookmarks: bool,
        token: str | None,
        on_open: Callable[[], None] | None,
        on_progress: Callable[[], None] | None,
    ) -> AsyncGenerator[list[WatchEvent], None]:
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
                async for lines in iter_lines(resp.content.iter_any(), max_line_bytes=self._max_line_bytes):
                    if on_progress is not None:
                        on_progress()
                    events, error = parse_watch_lines(lines)
                    if events:
                        yield events
                    if error is not None:
                        raise error
        except aiohttp.ClientError as exc:
            raise _connection_error(exc) from exc
        except TimeoutError as exc:
            raise UpstreamConnectionError("watch request timed out", reason="Timeout") from exc
        except OSError as exc:  # after TimeoutError, which is one; ssl.SSLError is one too
            raise _connection_error(exc) from exc


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
    bad_number = may_hold_bad_number
    valid_rv = is_valid_resource_version
    append = events.append
    for line in lines:
        try:
            d = loads(line)
        except ValueError as exc:  # UnicodeDecodeError (invalid UTF-8) is one
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
        if not valid_rv(rv):
            if rv is None:
                return events, MalformedResponseError(f"{event_type} event object without resourceVersion")
            problem = describe_bad_resource_version(rv)
            return events, MalformedResponseError(f"{event_type} event resourceVersion {problem}")
        if event_type == "BOOKMARK":
            key = ObjectKey("")
        else:
            ns = meta.get("namespace")
            name = meta.get("name") or ""
            key = ObjectKey(f"{ns}/{name}" if ns else f"{name}")
            if not key.isascii():
                key = ObjectKey(loggable(key))
        # The object's bytes, cut from the line: exactly '{"type":"<T>","object":{...}}'.
        if (
            len(d) == 2
            and line.startswith(prefix)
            and line.endswith(b"}}")
            and line[plen] == 123
            and not bad_number(line)
        ):
            object_json = line[plen:-1]
            if b"\r" in object_json:
                object_json = encode_object(obj, key)
        else:
            object_json = encode_object(obj, key)
        append(WatchEvent(event_type, key, obj, object_json, rv))
    return events, None


def _check_item_resource_version(item: dict[str, Any]) -> None:
    meta = item.get("metadata")
    rv = meta.get("resourceVersion") if type(meta) is dict else None
    if rv is not None and not is_valid_resource_version(rv):
        problem = describe_bad_resource_version(rv)
        raise MalformedResponseError(f"LIST item metadata.resourceVersion {problem}")


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
    elif isinstance(exc, ssl.SSLError | aiohttp.ClientSSLError):
        reason = "TLSError"  # a handshake or certificate failure: say so, it is not the network
    else:
        reason = "ConnectionFailed"
    # str(exc) of aiohttp and OS errors names host, port or errno, never headers: the log gets it,
    # clients get a sentence that names no internal address.
    return UpstreamConnectionError(
        f"{_PUBLIC_CONNECTION_MESSAGES[reason]} ({type(exc).__name__})",
        reason=reason,
        detail=f"{type(exc).__name__}: {exc}",
    )


_PUBLIC_CONNECTION_MESSAGES: Final[dict[str, str]] = {
    "StreamCut": "the watch stream from the control plane was cut",
    "ServerDisconnected": "the control plane closed the connection",
    "TLSError": "the TLS connection to the control plane failed",
    "ConnectionFailed": "the control plane could not be reached",
}


__all__ = [
    "KubeClient",
    "ListResult",
    "ListTooLargeError",
    "describe_bad_resource_version",
    "encode_object",
    "loggable",
    "may_hold_bad_number",
    "object_key",
    "parse_watch_lines",
    "replace_non_finite_numbers",
]
