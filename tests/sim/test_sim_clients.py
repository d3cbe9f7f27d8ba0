"""Real Kubernetes clients against the simulator: kubernetes_asyncio and kubectl."""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from kubernetes_asyncio import client, watch

from watchgw.sim import Simulator, running_simulator

from .helpers_sim import CM, ZONES, cm

KUBECTL = shutil.which("kubectl")


async def test_kubernetes_asyncio_core_list_and_watch() -> None:
    async with running_simulator() as (sim, url):
        sim.create(CM, cm("a"), namespace="default")
        async with client.ApiClient(client.Configuration(host=url)) as api:
            v1 = client.CoreV1Api(api)
            listed = await v1.list_namespaced_config_map("default")
            assert [i.metadata.name for i in listed.items] == ["a"]
            assert listed.metadata.resource_version == sim.resource_version
            seen: list[tuple[str, str]] = []
            async with watch.Watch().stream(
                v1.list_namespaced_config_map, "default", resource_version=listed.metadata.resource_version
            ) as stream:
                sim.create(CM, cm("b"), namespace="default")
                sim.delete(CM, "a", namespace="default")
                async for event in stream:
                    seen.append((event["type"], event["object"].metadata.name))
                    if len(seen) == 2:
                        break
            assert seen == [("ADDED", "b"), ("DELETED", "a")]


async def test_kubernetes_asyncio_custom_objects() -> None:
    async with running_simulator() as (sim, url):
        sim.create(ZONES, {"metadata": {"name": "z1"}, "spec": {"domainName": "a.test"}}, namespace="default")
        async with client.ApiClient(client.Configuration(host=url)) as api:
            custom = client.CustomObjectsApi(api)
            group, version, plural = "dns.networking.miloapis.com", "v1alpha1", "dnszones"
            listed: dict[str, Any] = await custom.list_namespaced_custom_object(
                group, version, "default", plural
            )
            assert [i["metadata"]["name"] for i in listed["items"]] == ["z1"]
            rv = listed["metadata"]["resourceVersion"]
            seen = []
            async with watch.Watch().stream(
                custom.list_namespaced_custom_object, group, version, "default", plural, resource_version=rv
            ) as stream:
                sim.update(
                    ZONES, {"metadata": {"name": "z1"}, "spec": {"domainName": "b.test"}}, namespace="default"
                )
                async for event in stream:
                    seen.append((event["type"], event["object"]["spec"]["domainName"]))
                    break
            assert seen == [("MODIFIED", "b.test")]


async def run_kubectl(tmp_path: Path, url: str, *args: str) -> str:
    assert KUBECTL is not None
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "sim", "cluster": {"server": url}}],
                "users": [{"name": "sim", "user": {}}],
                "contexts": [{"name": "sim", "context": {"cluster": "sim", "user": "sim"}}],
                "current-context": "sim",
            }
        )
    )
    proc = await asyncio.create_subprocess_exec(
        KUBECTL,
        f"--kubeconfig={kubeconfig}",
        f"--cache-dir={tmp_path / 'cache'}",
        "--request-timeout=10s",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={"HOME": str(tmp_path), "PATH": "/usr/bin:/bin"},
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout=30)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode == 0, err.decode()
    return out.decode()


@pytest.mark.skipif(KUBECTL is None, reason="kubectl is not installed")
async def test_kubectl_get_and_raw(tmp_path: Path) -> None:
    sim = Simulator()  # no tokens: client-go does not send bearer tokens over plain http
    sim.create(CM, cm("a"), namespace="default")
    sim.create(CM, cm("b"), namespace="default")
    async with running_simulator(sim) as (_, url):
        out = json.loads(await run_kubectl(tmp_path, url, "get", "configmaps", "-n", "default", "-o", "json"))
        assert [i["metadata"]["name"] for i in out["items"]] == ["a", "b"]
        raw = json.loads(
            await run_kubectl(tmp_path, url, "get", "--raw", "/api/v1/namespaces/default/configmaps/b")
        )
        assert raw["data"] == {"k": "b"}
