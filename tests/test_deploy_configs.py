"""The shipped load-balancer and Kubernetes configurations (deploy/): their own tools accept them,
they agree with the gateway's settings, and nginx and HAProxy keep each client on one replica.

nginx and haproxy tests skip where the binary is missing, except under CI (which installs both:
.ci/run), where a missing binary fails them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import ssl
import subprocess
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from aiohttp import web

from tests.nginx_config import find_binary, render_nginx, self_signed_cert
from tests.processes import free_port
from watchgw.config import Config, load_config
from watchgw.web.server import running_app

ROOT = Path(__file__).resolve().parent.parent
NGINX_SNIPPET = ROOT / "deploy" / "nginx" / "watchgw.conf"
HAPROXY_CFG = ROOT / "deploy" / "haproxy" / "haproxy.cfg"
KUBERNETES = ROOT / "deploy" / "kubernetes" / "watchgw.yaml"
SERVICE_ACCOUNT = "/var/run/secrets/kubernetes.io/serviceaccount"
ANNOTATION = "nginx.ingress.kubernetes.io/"


def require(name: str) -> str:
    path = find_binary(name)
    if path is None:
        if os.environ.get("CI"):
            pytest.fail(f"{name} is not installed (.ci/run installs it; under CI this test must run)")
        pytest.skip(f"{name} is not installed (CI installs it; there this test must run)")
    return path


def seconds(value: str) -> float:
    """An nginx/HAProxy duration (``3600s``, ``1h``, ``60``) in seconds."""
    match = re.fullmatch(r"(\d+)(ms|s|m|h|d)?", value)
    assert match, value
    scale = {"ms": 0.001, "s": 1, None: 1, "m": 60, "h": 3600, "d": 86400}[match[2]]
    return int(match[1]) * scale


def size(value: str) -> int:
    """An nginx size (``64k``, ``1m``, ``16384``) in bytes."""
    match = re.fullmatch(r"(\d+)([kKmM]?)", value)
    assert match, value
    return int(match[1]) * {"": 1, "k": 1024, "m": 1024 * 1024}[match[2].lower()]


def directive(text: str, name: str) -> str:
    """The value of the only ``name`` directive in an nginx or HAProxy file."""
    values = re.findall(rf"^\s*{re.escape(name)}\s+([^;\n]+?);?\s*$", text, re.MULTILINE)
    assert len(values) == 1, f"{name}: {values}"
    return str(values[0])


# ---------------------------------------------------------------------------- Kubernetes


def kubernetes_objects() -> dict[str, dict[str, Any]]:
    docs = [doc for doc in yaml.safe_load_all(KUBERNETES.read_text()) if doc]
    by_kind = {doc["kind"]: doc for doc in docs}
    assert len(by_kind) == len(docs), "one object of each kind"
    return by_kind


def configmap_config(tmp_path: Path) -> Config:
    """The ConfigMap's watchgw.toml through load_config (what check-config runs), with the
    service-account files it names present in tmp_path, as they are in a pod."""
    toml = kubernetes_objects()["ConfigMap"]["data"]["watchgw.toml"]
    account = tmp_path / "serviceaccount"
    account.mkdir()
    (account / "token").write_text("service-account-token")
    (account / "ca.crt").write_text("a CA certificate")
    assert SERVICE_ACCOUNT in toml
    path = tmp_path / "watchgw.toml"
    path.write_text(toml.replace(SERVICE_ACCOUNT, str(account)))
    return load_config(path)


def test_the_configmap_is_a_valid_gateway_config_for_a_pod(tmp_path: Path) -> None:
    config = configmap_config(tmp_path)
    assert config.server.host == "0.0.0.0"  # reachable from the Service, not only the pod
    assert config.auth.mode == "bearer"
    assert config.server.trusted_proxies, "client addresses come from the ingress's X-Forwarded-For"
    assert str(config.upstream.token_file).endswith("/serviceaccount/token")


def test_deployment_service_and_ingress_point_at_the_gateway(tmp_path: Path) -> None:
    config = configmap_config(tmp_path)
    objects = kubernetes_objects()
    deployment, service, ingress = objects["Deployment"], objects["Service"], objects["Ingress"]
    spec = deployment["spec"]
    assert spec["replicas"] == 3
    pod = spec["template"]["spec"]
    assert spec["selector"]["matchLabels"].items() <= spec["template"]["metadata"]["labels"].items()
    assert service["spec"]["selector"].items() <= spec["template"]["metadata"]["labels"].items()
    (container,) = pod["containers"]
    (port,) = container["ports"]
    assert port["containerPort"] == config.server.port
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": port["name"]}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": port["name"]}
    # The drain (shutdown_timeout_s, bounded at + 2 s) ends before the kubelet's SIGKILL.
    assert pod["terminationGracePeriodSeconds"] > config.server.shutdown_timeout_s + 2
    assert pod["securityContext"]["runAsNonRoot"] is True
    hardening = container["securityContext"]
    assert hardening["readOnlyRootFilesystem"] is True
    assert hardening["allowPrivilegeEscalation"] is False
    assert hardening["capabilities"]["drop"] == ["ALL"]
    assert {"cpu", "memory"} <= container["resources"]["limits"].keys()
    mount = next(m for m in container["volumeMounts"] if m["name"] == "config")
    assert container["command"][-1] == f"{mount['mountPath']}/watchgw.toml"
    (service_port,) = service["spec"]["ports"]
    assert service_port["targetPort"] == port["name"]
    (rule,) = ingress["spec"]["rules"]
    (path,) = rule["http"]["paths"]
    assert path["path"] == config.server.base_path
    assert path["backend"]["service"] == {
        "name": service["metadata"]["name"],
        "port": {"name": service_port["name"]},
    }


def test_ingress_hashes_on_the_cid_and_keeps_streams_open(tmp_path: Path) -> None:
    config = configmap_config(tmp_path)
    annotations = kubernetes_objects()["Ingress"]["metadata"]["annotations"]
    assert all(isinstance(value, str) for value in annotations.values()), "annotation values are strings"
    assert annotations[ANNOTATION + "upstream-hash-by"] == "$arg_cid"
    assert annotations[ANNOTATION + "proxy-buffering"] == "off"
    assert annotations[ANNOTATION + "proxy-http-version"] == "1.1"
    # At least 3 heartbeats (a healthy quiet stream is never cut), at most a few minutes (a
    # replica that stops writing has its streams cut and its clients move on).
    assert 3 * config.limits.heartbeat_s <= int(annotations[ANNOTATION + "proxy-read-timeout"]) <= 300
    assert int(annotations[ANNOTATION + "proxy-send-timeout"]) > config.limits.heartbeat_s
    assert "http_503" not in annotations[ANNOTATION + "proxy-next-upstream"]
    assert size(annotations[ANNOTATION + "proxy-body-size"]) >= config.limits.max_body_bytes
    assert ANNOTATION + "service-upstream" not in annotations  # it would bypass the hash


# ---------------------------------------------------------------------------- nginx and HAProxy


def test_nginx_snippet_agrees_with_the_gateway_defaults() -> None:
    text, defaults = NGINX_SNIPPET.read_text(), Config()
    assert directive(text, "hash") == "$arg_cid consistent"
    assert 3 * defaults.limits.heartbeat_s <= seconds(directive(text, "proxy_read_timeout")) <= 300
    # nginx, not watchgw, closes idle upstream connections: never a request on a closing one.
    assert seconds(directive(text, "keepalive_timeout")) < defaults.server.keepalive_timeout_s
    assert size(directive(text, "client_max_body_size")) >= defaults.limits.max_body_bytes
    assert "http_503" not in directive(text, "proxy_next_upstream")


def test_haproxy_config_agrees_with_the_gateway_defaults() -> None:
    text, defaults = HAPROXY_CFG.read_text(), Config()
    assert directive(text, "balance") == "url_param cid"
    assert directive(text, "hash-type") == "consistent"
    assert seconds(directive(text, "timeout client")) > defaults.limits.heartbeat_s
    assert 3 * defaults.limits.heartbeat_s <= seconds(directive(text, "timeout server")) <= 300
    assert "compression" not in re.sub(r"#.*", "", text)


def test_nginx_accepts_the_shipped_snippet(tmp_path: Path) -> None:
    nginx = require("nginx")
    cert, key = self_signed_cert(tmp_path / "tls")
    conf = tmp_path / "nginx.conf"
    conf.write_text(
        render_nginx(
            NGINX_SNIPPET.read_text(),
            listen_port=free_port(),
            replicas=[free_port(), free_port()],
            cert=cert,
            key=key,
            prefix=tmp_path,
        )
    )
    result = subprocess.run(
        [nginx, "-t", "-p", str(tmp_path), "-e", str(tmp_path / "error.log"), "-c", str(conf)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "[warn]" not in result.stderr, result.stderr


def render_haproxy(
    text: str, *, cert_pem: Path, bind_port: int | None = None, servers: list[int] | None = None
) -> str:
    """The shipped haproxy.cfg with ``cert_pem`` as its certificate; with ``bind_port`` and
    ``servers`` also runnable by an unprivileged test: loopback ports, and no chroot, user switch
    or admin socket. Frontend and backend rules stay as shipped."""
    text, count = re.subn(r"/etc/haproxy/certs/console\.example\.pem", str(cert_pem), text)
    assert count == 1
    if bind_port is not None:
        text, count = re.subn(r"(?m)^(\s*bind\s+):443\b", rf"\g<1>127.0.0.1:{bind_port}", text)
        assert count == 1
        text = re.sub(r"(?m)^\s*(chroot|user|group|stats socket|log /dev/log)\b.*\n", "", text)
    if servers is not None:
        # One line per test replica where the shipped ones were, with the first one's parameters.
        server = re.compile(r"(?m)^(\s*server\s+)\S+\s+\S+:\d+(.*)\n")
        first = server.search(text)
        assert first
        lines = "".join(f"{first[1]}replica-{port} 127.0.0.1:{port}{first[2]}\n" for port in servers)
        text = text[: first.start()] + lines + server.sub("", text[first.start() :])
    return text


def haproxy_pem(cert: Path, key: Path) -> Path:
    """The PEM HAProxy wants: certificate and key in one file."""
    pem = cert.with_name("haproxy.pem")
    pem.write_text(cert.read_text() + key.read_text())
    return pem


def test_haproxy_accepts_the_shipped_config(tmp_path: Path) -> None:
    haproxy = require("haproxy")
    pem = haproxy_pem(*self_signed_cert(tmp_path / "tls"))
    cfg = tmp_path / "haproxy.cfg"
    cfg.write_text(render_haproxy(HAPROXY_CFG.read_text(), cert_pem=pem))
    result = subprocess.run(
        [haproxy, "-c", "-f", str(cfg)], capture_output=True, text=True, timeout=60, check=False
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "[WARNING]" not in output, output


# A stand-in replica: answers every API request with its own name, so a test can see which
# replica the load balancer chose. Its stream sends one event and then stays open, as SSE does.
def replica_app(name: str) -> web.Application:
    def body(request: web.Request) -> dict[str, str]:
        return {"replica": name, "cid": request.query.get("cid", "")}

    async def answer(request: web.Request) -> web.Response:
        return web.json_response(body(request))

    async def stream(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        await response.prepare(request)
        await response.write(f"event: connected\ndata: {json.dumps(body(request))}\n\n".encode())
        await asyncio.Event().wait()  # until the client goes away (the handler is cancelled)
        return response

    app = web.Application()
    app.router.add_get("/api/watch/stream", stream)
    app.router.add_post("/api/watch/subscribe", answer)
    app.router.add_post("/api/watch/unsubscribe", answer)
    for path in ("/healthz", "/readyz", "/metrics"):
        app.router.add_get(path, answer)
    return app


@contextlib.asynccontextmanager
async def running_process(argv: list[str], port: int, log: Path) -> AsyncIterator[None]:
    """Run a load balancer until the block ends; ready once it accepts on ``port``."""
    with log.open("wb") as output:
        proc = await asyncio.create_subprocess_exec(*argv, stdout=output, stderr=output)
    try:
        async with asyncio.timeout(20):
            while True:
                if proc.returncode is not None:
                    pytest.fail(f"{argv[0]} exited: {await asyncio.to_thread(log.read_text)}")
                try:
                    _, writer = await asyncio.open_connection("127.0.0.1", port)
                except ConnectionRefusedError:
                    await asyncio.sleep(0.05)  # polling for the listening socket, not settling
                    continue
                writer.close()
                await writer.wait_closed()
                break
        yield
    finally:
        if proc.returncode is None:
            proc.terminate()
            try:
                async with asyncio.timeout(10):
                    await proc.wait()
            except TimeoutError:
                proc.kill()
                await proc.wait()


Balancer = Callable[[Path, int, list[int], Path, Path], contextlib.AbstractAsyncContextManager[None]]


def nginx_balancer(
    tmp_path: Path, port: int, replicas: list[int], cert: Path, key: Path
) -> contextlib.AbstractAsyncContextManager[None]:
    nginx = require("nginx")
    conf = tmp_path / "nginx.conf"
    snippet = NGINX_SNIPPET.read_text()
    conf.write_text(
        render_nginx(snippet, listen_port=port, replicas=replicas, cert=cert, key=key, prefix=tmp_path)
    )
    argv = [nginx, "-p", str(tmp_path), "-e", str(tmp_path / "error.log"), "-c", str(conf)]
    return running_process(argv, port, tmp_path / "nginx.out")


def haproxy_balancer(
    tmp_path: Path, port: int, replicas: list[int], cert: Path, key: Path
) -> contextlib.AbstractAsyncContextManager[None]:
    haproxy = require("haproxy")
    cfg = tmp_path / "haproxy.cfg"
    rendered = render_haproxy(
        HAPROXY_CFG.read_text(), cert_pem=haproxy_pem(cert, key), bind_port=port, servers=replicas
    )
    cfg.write_text(rendered)
    return running_process([haproxy, "-db", "-f", str(cfg)], port, tmp_path / "haproxy.out")


@pytest.mark.parametrize("balancer", [nginx_balancer, haproxy_balancer], ids=["nginx", "haproxy"])
async def test_each_client_stays_on_one_replica_and_clients_spread(
    tmp_path: Path, balancer: Balancer
) -> None:
    cert, key = self_signed_cert(tmp_path / "tls")
    tls = ssl.create_default_context(cafile=str(cert))  # the generated certificate, verified
    port = free_port()
    async with contextlib.AsyncExitStack() as stack:
        replicas: dict[int, str] = {}
        for name in ("a", "b"):
            url = await stack.enter_async_context(running_app(replica_app(name)))
            replicas[int(url.rsplit(":", 1)[1])] = name
        await stack.enter_async_context(balancer(tmp_path, port, list(replicas), cert, key))
        session = await stack.enter_async_context(
            aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=tls))
        )
        base = f"https://127.0.0.1:{port}/api/watch"

        chosen: dict[str, str] = {}
        for n in range(24):
            cid = f"client-{n:04d}-0123"
            async with session.get(f"{base}/stream", params={"cid": cid}) as stream:
                assert stream.status == 200
                assert stream.headers["Content-Type"].startswith("text/event-stream")
                # The first event arrives while the stream stays open: nothing buffers it.
                async with asyncio.timeout(5):
                    assert await stream.content.readline() == b"event: connected\n"
                    data = json.loads((await stream.content.readline()).removeprefix(b"data: "))
                assert data["cid"] == cid
                chosen[cid] = data["replica"]
                for path in ("subscribe", "unsubscribe", "subscribe"):
                    async with session.post(
                        f"{base}/{path}", params={"cid": cid}, json={"clientId": cid}
                    ) as r:
                        assert r.status == 200
                        assert (await r.json())["replica"] == chosen[cid], f"{path} of {cid} went elsewhere"
        assert set(chosen.values()) == {"a", "b"}, "different clients spread over the replicas"

        # Only the API is published, not a replica's /metrics.
        async with session.get(f"https://127.0.0.1:{port}/metrics") as response:
            assert response.status == 404
