"""Configuration: one TOML file (PROTOCOL.md section 6) loaded into frozen dataclasses.

Every key is optional except ``upstream.url``. An unknown key, a wrong type or an impossible value
raises :class:`ConfigError` naming the key (``limits.max_clients``) and the file, so an operator
never has to guess which line is wrong. Each field documents its unit and why its default.

:func:`load_config` (``check-config``, ``serve``, SIGHUP) also checks that the files named by
``upstream.ca_file``, ``client_cert``, ``client_key`` and ``token_file`` exist and can be read, so
a typo fails at start rather than as a ``watch-error`` on every channel. :func:`config_from_mapping`
does not: configs built in code (tests, the demo) may name files that are written later.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
import stat
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args, get_origin, get_type_hints

#: Environment variables that override secrets, so a token never has to sit in the TOML file.
ENV_UPSTREAM_TOKEN = "WATCHGW_UPSTREAM_TOKEN"


class ConfigError(ValueError):
    """The configuration cannot be used; the message names the key and the file."""


@dataclass(frozen=True, slots=True)
class ServerConfig:
    host: str = "127.0.0.1"
    """Listen address. Loopback by default: put a TLS-terminating proxy in front for the public."""
    port: int = 8080
    base_path: str = "/api/watch"
    stats: bool = False
    """Serve ``GET <base_path>/stats``. It lists channel keys, so it is off unless asked for."""
    metrics: bool = False
    """Serve ``GET /metrics``. Channel keys appear in labels, so it is off unless asked for."""
    shutdown_timeout_s: float = 10.0
    """Seconds a SIGTERM drain may take before remaining streams and upstreams are cancelled."""
    cors_origins: tuple[str, ...] = ()
    """Browser origins on another host that may use the API (exact ``scheme://host[:port]``).
    Empty: no CORS headers, so only same-origin pages (behind the same proxy) can call it."""
    key_segments: int = 8
    """Channel key format: 8 segments (the portal's client: ``...:<fieldSelector>:<user|>``) or 7
    (the original protocol document's, for clients built on it; no user-scoped channels)."""
    header_timeout_s: float = 10.0
    """Seconds a connection has to deliver a complete request head (request line and headers):
    from its accept, or from the first byte of a request on a kept-alive connection. Past it the
    connection is closed (with a 408 when part of a head arrived). A browser sends its head in
    one packet; 10 s covers a slow mobile link and stops slowloris-style half-sent heads."""
    body_timeout_s: float = 10.0
    """Seconds a subscribe/unsubscribe body (at most ``limits.max_body_bytes``) may take to
    arrive once its head has: 408 and the connection is closed. Streams have no body."""
    keepalive_timeout_s: float = 75.0
    """Seconds an idle kept-alive connection waits for its next request. Above the 60 s that
    reverse proxies (nginx ``keepalive_timeout`` upstream) keep idle upstream connections, so
    the proxy, not watchgw, closes them and never reuses one watchgw is closing."""
    max_pending_connections: int = 1000
    """Connections open at once that are not SSE streams (being read, answering a request, idle
    between requests). Beyond it a new connection is closed at once, so a flood of half-open
    connections cannot use up file descriptors; an EventSource simply retries. Streams are not
    counted: ``limits.max_clients`` bounds them."""
    backlog: int = 1024
    """Listen backlog: connections the kernel queues before watchgw accepts them (capped by
    ``net.core.somaxconn``). It is also how many accepts asyncio tries per loop iteration."""
    trusted_proxies: tuple[str, ...] = ()
    """Reverse proxies (IP addresses or CIDRs) whose ``X-Forwarded-For`` (its last hop that is not
    itself a trusted proxy) or ``X-Real-IP`` names the client's address. The address is what
    per-address limits count: failed authentications, and, without authentication, every
    per-identity limit and the subscribe rate limit. Empty: the connection's peer is the client,
    and those headers are ignored (anyone can send them)."""
    replica: str = ""
    """This process's name among the replicas behind a load balancer, sent to clients in
    ``connected``, in every subscribe answer and in ``stats``: a client compares them to notice
    that its requests reach another replica than its stream. Empty: ``<hostname>:<port>`` of the
    listener, computed at start, which is unique per process on a host."""
    live_page: bool = False
    """Serve the live demo page at ``/`` and the browser client at ``/watch-client.js``
    (``watchgw demo`` always does): replicas behind a load balancer then serve the page too."""


@dataclass(frozen=True, slots=True)
class UpstreamConfig:
    url: str = ""
    """Base URL of the control plane, e.g. ``https://control-plane.example``. Required."""
    token: str | None = None
    """Bearer token for the control plane. Prefer ``token_file`` or the environment variable."""
    token_file: str | None = None
    """File holding the bearer token; re-read when it changes (rotated service-account tokens)."""
    ca_file: str | None = None
    client_cert: str | None = None
    client_key: str | None = None
    insecure_skip_tls_verify: bool = False
    credential: Literal["gateway", "subscriber"] = "gateway"
    """``gateway``: the token above; ``subscriber``: an authorized subscriber's own token."""
    project_prefix: str = "/apis/resourcemanager.miloapis.com/v1alpha1/projects/{project}/control-plane"
    org_prefix: str = "/apis/resourcemanager.miloapis.com/v1alpha1/organizations/{org}/control-plane"
    user_prefix: str = "/apis/iam.miloapis.com/v1alpha1/users/{user}/control-plane"
    """Where a user-scoped channel (``userScoped: true``) is watched: ``{user}`` is the caller's
    user id (``auth.user_field`` of its SelfSubjectReview, or the forward-auth user header)."""
    project_default_namespace: str = "default"
    """Namespace watched by a project-scoped subscription that names none (the portal's
    behaviour); ``""`` watches all namespaces of the project. The channel key keeps the namespace
    as the client sent it."""
    watch_timeout_s: float = 300.0
    """Minimum server-side watch duration; each watch asks for a random value in [t, 2t] like
    client-go, so many channels do not all reconnect in the same second."""
    inactivity_timeout_s: float = 70.0
    """A watch that sends no complete event or BOOKMARK (servers send one every ~60 s) for this
    long is resumed; bytes that never finish a line do not count. Twice in a row is a watch-error."""
    list_page_size: int = 500
    """``limit`` of each LIST page: bounds the memory of one response on large collections."""
    max_list_bytes: int = 67108864
    """Bytes of response bodies one LIST may read, over all its pages (64 MiB). Each page is read
    in chunks and the read stops past what is left, so a bigger collection never sits in memory:
    the channel's subscribers get ``watch-error`` 413 ``ListTooLarge`` naming this key, and the
    LIST is retried with backoff. Why 64 MiB: a collection is held parsed (about 3 times its JSON)
    for as long as its channel is open, so this is ~200 MB of RSS for one channel, what an edge
    box can spare; it is ~13,000 objects of 5 KB, far more than a console lists on one page."""
    backoff_initial_s: float = 0.8
    backoff_max_s: float = 30.0
    backoff_reset_s: float = 60.0
    """Watches healthy for this long end a failure streak: the backoff starts again from
    ``backoff_initial_s`` and the next single cut is retried without a watch-error."""
    connect_timeout_s: float = 10.0
    request_timeout_s: float = 30.0
    """Total timeout of a non-streaming request (LIST page, access review)."""


@dataclass(frozen=True, slots=True)
class AuthConfig:
    mode: Literal["none", "bearer", "forward"] = "none"
    """``none``: one anonymous identity; ``bearer``: a token from ``Authorization`` or ``cookie``;
    ``forward``: the client's cookies go to ``forward_url``, which answers with its token."""
    cookie: str = "watchgw_token"
    """Cookie carrying the bearer token for ``EventSource``, which cannot set headers."""
    cache_ttl_s: float = 30.0
    """Seconds an identity or an access decision is reused (0: ask the control plane every time)."""
    recheck_s: float = 60.0
    user_field: Literal["uid", "username"] = "uid"
    """Field of the SelfSubjectReview's ``status.userInfo`` that is the user id filled into
    ``upstream.user_prefix`` for user-scoped channels (``uid``: stable, not an email address)."""
    forward_url: str = ""
    """``mode = "forward"``: URL asked with the client's ``Cookie`` and ``Authorization`` headers
    (as nginx ``auth_request`` and Traefik ForwardAuth do); 200 means authenticated."""
    forward_token_header: str = "X-Auth-Request-Access-Token"
    """Response header of ``forward_url`` carrying the bearer token (oauth2-proxy's name)."""
    forward_user_header: str = ""
    """Response header of ``forward_url`` carrying the user id, if it sends one; otherwise the
    identity comes from a SelfSubjectReview with the token, as in bearer mode."""
    forward_cache_ttl_s: float = 5.0
    """Seconds a ``forward_url`` answer is reused for the same credentials (hashed, never kept)."""
    forward_timeout_s: float = 5.0
    failures_per_minute: int = 30
    """Failed authentications (no or a malformed credential, a token or session the control plane
    or ``forward_url`` rejects) per client address per minute, counting reviews still in flight
    (a token bucket of this size, refilled over a minute). Beyond it the address gets 429
    ``rate_limited`` with ``Retry-After`` and nothing is asked upstream; a client whose identity
    is cached is not affected. Each failure is logged as ``auth.failed`` (reason, address)."""


@dataclass(frozen=True, slots=True)
class LimitsConfig:
    """Bounds on what clients can make the gateway hold. The global ones protect the process; the
    ``_per_identity`` ones keep one identity (a user; without authentication a client address,
    see ``server.trusted_proxies``, IPv6 by /64) from using them up for everyone else."""

    max_clients: int = 10000
    """Sessions in all (a stream, and ``session_ttl_s`` after it); beyond: 503 ``too_many_clients``."""
    max_subscriptions_per_client: int = 100
    """Subscriptions of one session; beyond: 429 ``too_many_subscriptions``."""
    max_channels: int = 5000
    """Distinct upstream watches; a subscribe that would open one more: 429 ``too_many_channels``."""
    max_clients_per_identity: int = 100
    """Sessions of one identity (a browser tab holds one; a closed tab's lasts ``session_ttl_s``);
    beyond: the stream gets 429 ``too_many_clients_for_identity``."""
    max_subscriptions_per_identity: int = 1000
    """Subscriptions of one identity across its sessions (parked ones count until they are taken
    up again or their session ends); beyond: 429 ``too_many_subscriptions_for_identity``."""
    max_channels_per_identity: int = 200
    """Distinct channels one identity holds subscriptions to; a subscribe beyond it that would
    open a new upstream watch gets 429 ``too_many_channels_for_identity`` (joining a channel that
    is already open is allowed: it costs no watch)."""
    max_body_bytes: int = 16384
    client_buffer_bytes: int = 1048576
    """Bytes of recent frames kept per client for slow readers and ``Last-Event-ID`` resume."""
    session_ttl_s: float = 30.0
    """How long a session outlives its stream, waiting for a reconnect with ``Last-Event-ID``."""
    grace_period_s: float = 10.0
    """How long a channel with no subscribers keeps its upstream watch (tab switches, reloads)."""
    heartbeat_s: float = 15.0
    """``: ping`` interval; below the 30-60 s idle timeouts of common proxies."""
    retry_ms: int = 2000
    """``retry:`` sent to clients: how long an ``EventSource`` waits before reconnecting."""
    channel_history: int = 1000
    """Events kept per channel so a subscriber with a ``resourceVersion`` can catch up."""
    channel_history_bytes: int = 8388608
    """Bytes of those events kept per channel (8 MiB, ~1,000 events of 8 KB), and as many bytes of
    the recently deleted objects a channel keeps for clients that never clear their state. Whatever
    of ``channel_history`` and this is hit first trims the oldest; a client whose
    ``resourceVersion`` is older than what is kept gets ``resync`` + snapshot instead of a catch-up."""
    stalled_client_timeout_s: float = 60.0
    """A client whose socket accepts nothing for this long is disconnected (it may resume)."""
    subscribe_rate_per_s: float = 20.0
    """Sustained subscribe/unsubscribe requests per identity per second (token bucket)."""
    subscribe_burst: int = 100
    """Requests an identity may make at once before the rate applies (a page opening many lists)."""
    watch_error_after_s: float = 10.0
    """A channel reports ``watch-error`` only once its upstream has been failing this long: a
    blip (a restarting API server, a proxy reload) stays invisible to clients that give up on
    the first error, as the portal's ``waitFor`` does. 0 reports every failure at once."""


@dataclass(frozen=True, slots=True)
class LogConfig:
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["auto", "json", "console"] = "auto"


@dataclass(frozen=True, slots=True)
class Config:
    server: ServerConfig = field(default_factory=ServerConfig)
    upstream: UpstreamConfig = field(default_factory=UpstreamConfig)
    auth: AuthConfig = field(default_factory=AuthConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    log: LogConfig = field(default_factory=LogConfig)


def load_config(path: str | os.PathLike[str]) -> Config:
    """Read and validate a TOML file; :class:`ConfigError` names the key and the file."""
    path = Path(path)
    try:
        with path.open("rb") as fh:
            raw = tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    try:
        config = config_from_mapping(raw, env=os.environ)
        check_files(config)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    return config


#: Upstream settings that name a file the gateway reads.
UPSTREAM_FILE_KEYS = ("ca_file", "client_cert", "client_key", "token_file")


def file_problem(path: str) -> str | None:
    """Why ``path`` cannot be read as a file (``"file not found"``, ``"cannot be read: ..."``),
    or ``None`` when it can. Opens it (and reads nothing): only that answers for permissions,
    ACLs and mandatory access control alike."""
    try:
        st = os.stat(path)
        if stat.S_ISDIR(st.st_mode):
            return "cannot be read: it is a directory"
        if not stat.S_ISREG(st.st_mode):
            return "cannot be read: not a regular file"  # a FIFO would block the open below
        with open(path, "rb"):
            return None
    except FileNotFoundError:
        return "file not found"
    except OSError as exc:
        return f"cannot be read: {exc.strerror or type(exc).__name__}"


def check_files(config: Config) -> None:
    """Each file named by the upstream settings exists and can be read; :class:`ConfigError`
    naming the key and the path otherwise."""
    for key in UPSTREAM_FILE_KEYS:
        path = getattr(config.upstream, key)
        if path:
            problem = file_problem(path)
            if problem is not None:
                raise ConfigError(f"upstream.{key} {path}: {problem}")


def config_from_mapping(raw: Mapping[str, Any], *, env: Mapping[str, str] | None = None) -> Config:
    """Build a :class:`Config` from parsed TOML (also used by tests and the demo)."""
    sections: dict[str, Any] = {}
    hints = get_type_hints(Config)
    for key, value in raw.items():
        if key not in hints:
            raise ConfigError(f"unknown section [{key}]")
        if not isinstance(value, Mapping):
            raise ConfigError(f"[{key}] must be a table")
        sections[key] = _build_section(hints[key], value, key)
    config = Config(**sections)
    config = _with_credentials_directory(config, env or {})
    if env and env.get(ENV_UPSTREAM_TOKEN):
        config = dataclasses.replace(
            config, upstream=dataclasses.replace(config.upstream, token=env[ENV_UPSTREAM_TOKEN])
        )
    _validate(config)
    return config


#: In a file setting, what systemd's ``$CREDENTIALS_DIRECTORY`` (``LoadCredential=``) stands for.
#: The directory is named after the unit, so one config serves ``watchgw.service`` and every
#: ``watchgw@PORT.service`` instance only through this variable.
CREDENTIALS_DIRECTORY = "${CREDENTIALS_DIRECTORY}"


def _with_credentials_directory(config: Config, env: Mapping[str, str]) -> Config:
    """File settings with ``${CREDENTIALS_DIRECTORY}`` expanded from the environment."""
    upstream = config.upstream
    for key in UPSTREAM_FILE_KEYS:
        path = getattr(upstream, key)
        if path and CREDENTIALS_DIRECTORY in path:
            directory = env.get("CREDENTIALS_DIRECTORY")
            if not directory:
                raise ConfigError(
                    f"upstream.{key} {path}: ${{CREDENTIALS_DIRECTORY}} is set only when systemd runs"
                    " the gateway with LoadCredential=; outside systemd, name the file itself"
                )
            expanded = path.replace(CREDENTIALS_DIRECTORY, directory.rstrip("/"))
            upstream = dataclasses.replace(upstream, **{key: expanded})
    return config if upstream is config.upstream else dataclasses.replace(config, upstream=upstream)


def _build_section(cls: type[Any], values: Mapping[str, Any], section: str) -> Any:
    hints = get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    for key, value in values.items():
        name = f"{section}.{key}"
        if key not in hints:
            raise ConfigError(f"unknown key {name}")
        kwargs[key] = _coerce(hints[key], value, name)
    return cls(**kwargs)


def _coerce(hint: Any, value: Any, name: str) -> Any:
    origin = get_origin(hint)
    if origin is typing.Union or origin is types.UnionType:
        options = [a for a in get_args(hint) if a is not type(None)]
        return _coerce(options[0], value, name)
    if origin is Literal:
        allowed = get_args(hint)
        if value not in allowed:
            choices = ", ".join(repr(a) for a in allowed)
            raise ConfigError(f"{name} must be one of {choices}, not {value!r}")
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{name} must be true or false, not {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{name} must be an integer, not {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{name} must be a number, not {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{name} must be a string, not {value!r}")
        return value
    if origin is tuple:
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{name} must be a list of strings, not {value!r}")
        return tuple(value)
    raise ConfigError(f"{name}: unsupported type")  # pragma: no cover - a bug in this module


def _validate(config: Config) -> None:
    """Impossible values: each check names its key."""
    up = config.upstream
    if not up.url:
        raise ConfigError("upstream.url is required")
    if not up.url.startswith(("http://", "https://")):
        raise ConfigError(f"upstream.url must start with http:// or https://, not {up.url!r}")
    if up.token and up.token_file:
        raise ConfigError("upstream.token and upstream.token_file are exclusive: set one")
    if bool(up.client_cert) != bool(up.client_key):
        raise ConfigError("upstream.client_cert and upstream.client_key go together")
    if "{project}" not in up.project_prefix:
        raise ConfigError("upstream.project_prefix must contain {project}")
    if "{org}" not in up.org_prefix:
        raise ConfigError("upstream.org_prefix must contain {org}")
    if "{user}" not in up.user_prefix:
        raise ConfigError("upstream.user_prefix must contain {user}")
    ns = up.project_default_namespace
    if ns and not re.fullmatch(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?", ns):
        raise ConfigError(f'upstream.project_default_namespace must be a namespace name or "", not {ns!r}')
    if len(config.server.replica) > 128 or not config.server.replica.isprintable():
        # It travels in SSE frames and JSON answers: one printable line, short.
        raise ConfigError("server.replica must be at most 128 printable characters")
    if config.server.key_segments not in (7, 8):
        raise ConfigError(f"server.key_segments must be 7 or 8, not {config.server.key_segments!r}")
    auth = config.auth
    if auth.mode == "forward":
        if not auth.forward_url.startswith(("http://", "https://")):
            raise ConfigError(
                'auth.forward_url must be an http:// or https:// URL when auth.mode = "forward"'
            )
        if not auth.forward_token_header:
            raise ConfigError("auth.forward_token_header must name a response header")
    if auth.forward_cache_ttl_s < 0 or auth.forward_timeout_s <= 0:
        raise ConfigError("auth.forward_cache_ttl_s must be 0 or more and auth.forward_timeout_s more than 0")
    if config.limits.watch_error_after_s < 0:
        raise ConfigError(
            f"limits.watch_error_after_s must be 0 or more, not {config.limits.watch_error_after_s!r}"
        )
    for prefix_key in ("project_prefix", "org_prefix", "user_prefix"):
        if not getattr(up, prefix_key).startswith("/"):
            raise ConfigError(f"upstream.{prefix_key} must start with /")
    positive = {
        "server.shutdown_timeout_s": config.server.shutdown_timeout_s,
        "server.header_timeout_s": config.server.header_timeout_s,
        "server.body_timeout_s": config.server.body_timeout_s,
        "server.keepalive_timeout_s": config.server.keepalive_timeout_s,
        "server.max_pending_connections": config.server.max_pending_connections,
        "server.backlog": config.server.backlog,
        "upstream.watch_timeout_s": up.watch_timeout_s,
        "upstream.inactivity_timeout_s": up.inactivity_timeout_s,
        "upstream.list_page_size": up.list_page_size,
        "upstream.max_list_bytes": up.max_list_bytes,
        "upstream.backoff_initial_s": up.backoff_initial_s,
        "upstream.backoff_max_s": up.backoff_max_s,
        "upstream.connect_timeout_s": up.connect_timeout_s,
        "upstream.request_timeout_s": up.request_timeout_s,
        "auth.recheck_s": config.auth.recheck_s,
        "auth.failures_per_minute": config.auth.failures_per_minute,
    }
    limits = config.limits
    for key_name in (
        "max_clients",
        "max_subscriptions_per_client",
        "max_channels",
        "max_clients_per_identity",
        "max_subscriptions_per_identity",
        "max_channels_per_identity",
        "max_body_bytes",
        "client_buffer_bytes",
        "session_ttl_s",
        "heartbeat_s",
        "retry_ms",
        "channel_history",
        "channel_history_bytes",
        "stalled_client_timeout_s",
        "subscribe_rate_per_s",
        "subscribe_burst",
    ):
        positive[f"limits.{key_name}"] = getattr(limits, key_name)
    for name, number in positive.items():
        if number <= 0:
            raise ConfigError(f"{name} must be greater than 0, not {number!r}")
    if config.auth.cache_ttl_s < 0:
        raise ConfigError(f"auth.cache_ttl_s must be 0 (no caching) or more, not {config.auth.cache_ttl_s!r}")
    if limits.grace_period_s < 0:
        raise ConfigError(f"limits.grace_period_s must be 0 or more, not {limits.grace_period_s!r}")
    if not 0 <= config.server.port <= 65535:
        # 0 asks the kernel for a free port; the bound address is logged as server.listening.
        raise ConfigError(f"server.port must be from 0 to 65535, not {config.server.port}")
    if up.backoff_max_s < up.backoff_initial_s:
        raise ConfigError("upstream.backoff_max_s must be at least upstream.backoff_initial_s")
    for origin_value in config.server.cors_origins:
        if not origin_value.startswith(("http://", "https://")) or origin_value.rstrip("/") != origin_value:
            raise ConfigError(
                f"server.cors_origins entries must be scheme://host[:port], not {origin_value!r}"
            )
    for proxy in config.server.trusted_proxies:
        try:
            ipaddress.ip_network(proxy, strict=False)
        except ValueError:
            raise ConfigError(
                f"server.trusted_proxies entries must be IP addresses or CIDRs, not {proxy!r}"
            ) from None
    bp = config.server.base_path
    if not bp.startswith("/") or bp.endswith("/") or "//" in bp:
        raise ConfigError(f"server.base_path must start with / and not end with /, not {bp!r}")
    if limits.max_body_bytes > 1048576:
        raise ConfigError("limits.max_body_bytes must be at most 1048576")
    if not config.auth.cookie or not config.auth.cookie.replace("_", "").replace("-", "").isalnum():
        raise ConfigError(f"auth.cookie must be a cookie name of [A-Za-z0-9_-], not {config.auth.cookie!r}")
