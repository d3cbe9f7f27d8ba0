"""The upstream credential: bearer token (static or from a rotating file) and TLS settings.

``token_file`` is checked on every request with one ``os.stat`` (mtime, size, inode, device); the
file is read again only when one of them changed, so a rotated service-account token (kubelet
swaps a symlink) is used on the next request without a restart. :meth:`Credentials.force_reload`
re-reads unconditionally (the client calls it after a 401). A file that disappears or cannot be
read keeps the last good token and logs once per failure, never the token itself.

The TLS context is built on first use; a ``ca_file``, ``client_cert`` or ``client_key`` that is
missing, unreadable or invalid raises :class:`~watchgw.kube.errors.CredentialError` naming the
setting and the path (the informer reports it as a ``watch-error`` and tries again later).
"""

from __future__ import annotations

import os
import ssl
from collections.abc import Callable
from typing import TypeVar

import structlog

from watchgw.config import UpstreamConfig, file_problem
from watchgw.kube.errors import CredentialError

log = structlog.get_logger("watchgw.kube")

_FileStamp = tuple[int, int, int, int]
_T = TypeVar("_T")


class Credentials:
    """Authorization headers and the TLS context for requests to the control plane."""

    __slots__ = ("_config", "_file_error", "_ssl", "_stamp", "_token")

    def __init__(self, config: UpstreamConfig) -> None:
        self._config = config
        self._token: str | None = config.token or None
        self._stamp: _FileStamp | None = None
        self._file_error: str | None = None
        self._ssl: ssl.SSLContext | None = None
        if config.token_file:
            self._refresh(force=True)

    def __repr__(self) -> str:
        source = "token_file" if self._config.token_file else ("token" if self._config.token else "none")
        return f"Credentials(source={source}, has_token={self._token is not None})"

    # -- token -------------------------------------------------------------------------------

    def token(self) -> str | None:
        """The current gateway token (re-read from ``token_file`` when the file changed)."""
        if self._config.token_file:
            self._refresh(force=False)
        return self._token

    def headers(self, token_override: str | None = None) -> dict[str, str]:
        """Request headers: ``Authorization: Bearer`` with ``token_override`` when given (a
        subscriber's own token in ``credential = "subscriber"`` mode), else the gateway token."""
        token = token_override if token_override else self.token()
        if not token:
            return {}
        return {"Authorization": "Bearer " + token}

    def tokens_in_use(self, token_override: str | None = None) -> tuple[str | None, ...]:
        """The tokens a request may have carried: what upstream error text must never repeat."""
        return (token_override, self._token)

    def force_reload(self) -> None:
        """Re-read ``token_file`` now, whatever its stat says (after a 401)."""
        if self._config.token_file:
            self._refresh(force=True)

    def _refresh(self, *, force: bool) -> None:
        path = self._config.token_file
        assert path is not None
        try:
            st = os.stat(path)
            stamp = (st.st_mtime_ns, st.st_size, st.st_ino, st.st_dev)
            if not force and stamp == self._stamp:
                return
            with open(path, encoding="utf-8") as fh:
                token = fh.read().strip()
        except (OSError, UnicodeDecodeError) as exc:
            error = type(exc).__name__ + (f": {exc.strerror}" if isinstance(exc, OSError) else "")
            if error != self._file_error:
                self._file_error = error
                log.warning("upstream.token_file_unreadable", path=path, error=error)
            return
        if self._file_error is not None:
            log.info("upstream.token_file_readable", path=path)
            self._file_error = None
        if not token:
            if self._stamp != stamp:
                log.warning("upstream.token_file_empty", path=path)
            self._stamp = stamp
            return
        if self._stamp is not None and token != self._token:
            log.info("upstream.token_reloaded", path=path)
        self._stamp = stamp
        self._token = token

    # -- TLS ---------------------------------------------------------------------------------

    @property
    def ssl(self) -> ssl.SSLContext:
        """The TLS context for ``https://`` upstreams (built once it succeeds; raises
        :class:`CredentialError` while a file cannot be used)."""
        if self._ssl is None:
            self._ssl = build_ssl_context(self._config)
        return self._ssl


def build_ssl_context(config: UpstreamConfig) -> ssl.SSLContext:
    """Default verification (system CAs, or ``ca_file`` only), optional client certificate,
    or no verification at all with ``insecure_skip_tls_verify``.

    Raises :class:`CredentialError` (reason ``TLSConfigError``) naming the setting and the path.
    """
    ca_file = config.ca_file
    if ca_file:
        ctx = _with_tls_files(lambda: ssl.create_default_context(cafile=ca_file), ("ca_file", ca_file))
    else:
        ctx = ssl.create_default_context()
    if config.insecure_skip_tls_verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if config.client_cert:
        cert, key = config.client_cert, config.client_key
        _with_tls_files(
            lambda: ctx.load_cert_chain(cert, key),
            ("client_cert", cert),
            ("client_key", key),
        )
    return ctx


def _with_tls_files(load: Callable[[], _T], *files: tuple[str, str | None]) -> _T:
    """``load()``, with its failure turned into a :class:`CredentialError` that names the file."""
    try:
        return load()
    except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
        for key, path in files:
            problem = file_problem(path) if path else None
            if problem is not None:
                message = f"upstream.{key} {path}: {problem}"
                break
        else:
            # Every file can be read, so one of them is not what it should be (PEM, matching key).
            names = " and ".join(f"upstream.{key} {path}" for key, path in files if path)
            detail = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            message = f"{names}: cannot be loaded: {type(exc).__name__}: {detail}"
        raise CredentialError(message, reason="TLSConfigError") from exc
