"""The two questions watchgw asks the control plane about a client, with the client's own token.

``SelfSubjectReview`` (authentication.k8s.io/v1): who is this token? ``SelfSubjectAccessReview``
(authorization.k8s.io/v1): may it ``watch`` this channel? The access review goes to the channel's
own control plane (its project or org prefix), where the channel's RBAC lives.
"""

from __future__ import annotations

from typing import Any

from watchgw.kube.client import KubeClient
from watchgw.kube.errors import MalformedResponseError
from watchgw.kube.types import WatchTarget
from watchgw.kube.urls import scope_base_url

SSR_PATH = "/apis/authentication.k8s.io/v1/selfsubjectreviews"
SSAR_PATH = "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews"


def resource_attributes(target: WatchTarget, verb: str = "watch") -> dict[str, str]:
    """``spec.resourceAttributes`` of the access review for a channel."""
    parts = target.resource_type.split("/")
    if parts[0] == "api":
        group, version, resource = "", parts[1], parts[2]
    else:
        group, version, resource = parts[1], parts[2], parts[3]
    attrs = {"verb": verb, "group": group, "version": version, "resource": resource}
    if target.namespace:
        attrs["namespace"] = target.namespace
    if target.name:
        attrs["name"] = target.name
    return attrs


class KubeReviews:
    def __init__(self, client: KubeClient) -> None:
        self._client = client

    async def who_am_i(self, token: str) -> str:
        body = {"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"}
        answer = await self._client.post_json(
            scope_base_url(self._client.config) + SSR_PATH, body, token=token
        )
        user = _dig(answer, "status", "userInfo", "username")
        if not isinstance(user, str) or not user:
            raise MalformedResponseError("SelfSubjectReview answer has no status.userInfo.username")
        return user

    async def may_watch(self, token: str, target: WatchTarget) -> bool:
        body = {
            "apiVersion": "authorization.k8s.io/v1",
            "kind": "SelfSubjectAccessReview",
            "spec": {"resourceAttributes": resource_attributes(target)},
        }
        base = scope_base_url(self._client.config, project_id=target.project_id, org_id=target.org_id)
        answer = await self._client.post_json(base + SSAR_PATH, body, token=token)
        allowed = _dig(answer, "status", "allowed")
        if not isinstance(allowed, bool):
            raise MalformedResponseError("SelfSubjectAccessReview answer has no status.allowed")
        return allowed and not _dig(answer, "status", "denied")


def _dig(value: Any, *path: str) -> Any:
    for key in path:
        if not isinstance(value, dict):
            return None
        value = value.get(key)
    return value
