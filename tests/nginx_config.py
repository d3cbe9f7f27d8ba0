"""The shipped nginx snippet (deploy/nginx/watchgw.conf) made runnable on loopback, for tests.

The snippet is what an operator installs; tests run it as it is, changing only what cannot be the
same on a test machine:

``render_nginx(snippet_text, *, listen_port, replicas, cert, key, prefix) -> str``
    A complete nginx.conf (``daemon off``, pid, error log and temporary files in ``prefix``)
    whose ``http {}`` holds the snippet with: the ``server HOST:PORT <params>;`` lines of its
    ``upstream`` block replaced by one line per port of ``replicas`` on 127.0.0.1 (keeping the
    first line's parameters), the ``listen ... ssl http2;`` line listening on
    ``127.0.0.1:<listen_port>`` (still ``ssl http2``), and ``ssl_certificate`` /
    ``ssl_certificate_key`` naming ``cert`` / ``key``. Raises ``ValueError`` when the snippet
    no longer has exactly one of each of those, so a changed snippet fails loudly. Run it with
    ``nginx -p <prefix> -e <prefix>/error.log -c <file>`` (add ``-t`` to only check it).

``self_signed_cert(directory, *, name="localhost") -> tuple[Path, Path]``
    Writes ``cert.pem`` and ``key.pem`` (``openssl req -x509``, valid for ``name``, ``localhost``
    and 127.0.0.1) into ``directory`` and returns their paths.

``find_binary(name) -> str | None``
    ``nginx``, ``haproxy``, ``openssl``: on ``PATH`` or in the sbin directories, where Debian
    installs the servers (not on a non-root user's ``PATH``).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

#: Where Debian puts nginx and haproxy; not on a non-root user's PATH.
SBIN_DIRS = ("/usr/sbin", "/usr/local/sbin", "/sbin")

_UPSTREAM_RE = re.compile(r"^(?P<head>\s*upstream\s+\S+\s*\{)(?P<body>[^}]*)\}", re.MULTILINE)
_SERVER_RE = re.compile(r"^(?P<indent>[ \t]*)server[ \t]+\S+:\d+(?P<params>[^;\n]*);[ \t]*\n", re.MULTILINE)
_LISTEN_RE = re.compile(
    r"^(?P<indent>[ \t]*)listen[ \t]+\S+(?P<rest>[ \t]+ssl[ \t]+http2[ \t]*;)", re.MULTILINE
)
_CERT_RE = re.compile(r"^(?P<indent>[ \t]*)ssl_certificate[ \t]+\S+;", re.MULTILINE)
_KEY_RE = re.compile(r"^(?P<indent>[ \t]*)ssl_certificate_key[ \t]+\S+;", re.MULTILINE)


def find_binary(name: str) -> str | None:
    found = shutil.which(name)
    if found is not None:
        return found
    for directory in SBIN_DIRS:
        candidate = Path(directory) / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return None


def self_signed_cert(directory: Path, *, name: str = "localhost") -> tuple[Path, Path]:
    openssl = find_binary("openssl")
    if openssl is None:
        raise FileNotFoundError("openssl is not installed")
    directory.mkdir(parents=True, exist_ok=True)
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-days", "2", "-subj", f"/CN={name}",
         "-addext", f"subjectAltName=DNS:{name},DNS:localhost,IP:127.0.0.1",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    return cert, key


def _one(pattern: re.Pattern[str], text: str, what: str) -> re.Match[str]:
    matches = list(pattern.finditer(text))
    if len(matches) != 1:
        raise ValueError(f"the nginx snippet must have exactly one {what}, found {len(matches)}")
    return matches[0]


def _replace(text: str, match: re.Match[str], new: str) -> str:
    return text[: match.start()] + new + text[match.end() :]


def render_nginx(
    snippet_text: str,
    *,
    listen_port: int,
    replicas: Sequence[int],
    cert: Path | str,
    key: Path | str,
    prefix: Path | str,
) -> str:
    if not replicas:
        raise ValueError("at least one replica port is needed")
    prefix = Path(prefix)
    text = snippet_text

    upstream = _one(_UPSTREAM_RE, text, "upstream block")
    body = upstream["body"]
    servers = list(_SERVER_RE.finditer(body))
    if not servers:
        raise ValueError("the nginx snippet's upstream block has no 'server HOST:PORT ...;' line")
    indent, params = servers[0]["indent"], servers[0]["params"]
    lines = "".join(f"{indent}server 127.0.0.1:{port}{params};\n" for port in replicas)
    body = body[: servers[0].start()] + lines + _SERVER_RE.sub("", body[servers[0].start() :])
    text = _replace(text, upstream, f"{upstream['head']}{body}}}")

    listen = _one(_LISTEN_RE, text, "'listen ... ssl http2;' line")
    text = _replace(text, listen, f"{listen['indent']}listen 127.0.0.1:{listen_port}{listen['rest']}")
    match = _one(_CERT_RE, text, "ssl_certificate line")
    text = _replace(text, match, f"{match['indent']}ssl_certificate {cert};")
    match = _one(_KEY_RE, text, "ssl_certificate_key line")
    text = _replace(text, match, f"{match['indent']}ssl_certificate_key {key};")

    # As root, nginx runs its workers as "nobody", who cannot enter pytest's 0700 temporary
    # directories (where the temporary files below live).
    user = "user root;\n" if os.geteuid() == 0 else ""
    temp = "\n".join(
        f"    {kind}_temp_path {prefix / kind};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    return (
        f"{user}daemon off;\n"
        "worker_processes 1;\n"
        f"pid {prefix / 'nginx.pid'};\n"
        f"error_log {prefix / 'error.log'} warn;\n"
        "events {\n    worker_connections 1024;\n}\n"
        "http {\n"
        f"    access_log {prefix / 'access.log'};\n"
        f"{temp}\n"
        f"{text}\n"
        "}\n"
    )
