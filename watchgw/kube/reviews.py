"""The two questions watchgw asks the control plane about a client, with the client's own token.

``SelfSubjectReview`` (authentication.k8s.io/v1): who is this token? Its answer's
``status.userInfo`` gives the username (the caller's identity) and the ``uid`` (the user id of
user-scoped channels, unless ``auth.user_field = "username"``). ``SelfSubjectAccessReview``
(authorization.k8s.io/v1): may it ``watch`` this channel? The access review goes to the channel's
own control plane (its project, org or, for a user-scoped channel, user prefix), where the
channel's RBAC lives.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from watchgw.kube.client import KubeClient
from watchgw.kube.errors import MalformedResponseError
from watchgw.kube.types import WatchTarget
from watchgw.kube.urls import scope_base_url, target_base_url

SSR_PATH = "/apis/authentication.k8s.io/v1/selfsubjectreviews"
SSAR_PATH = "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews"


@dataclass(frozen=True, slots=True)
class UserInfo:
    """Who a token is: ``status.userInfo`` of its SelfSubjectReview."""

    username: str
    uid: str = ""
    """"" when the control plane sends none (anonymous users, some authenticators)."""


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

    async def who_am_i(self, token: str) -> UserInfo:
        body = {"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"}
        answer = await self._client.post_json(
            scope_base_url(self._client.config) + SSR_PATH, body, token=token
        )
        user = _dig(answer, "status", "userInfo", "username")
        if not isinstance(user, str) or not user:
            raise MalformedResponseError("SelfSubjectReview answer has no status.userInfo.username")
        uid = _dig(answer, "status", "userInfo", "uid")
        return UserInfo(user, uid if isinstance(uid, str) else "")

    async def may_watch(self, token: str, target: WatchTarget) -> bool:
        """Whether ``token`` may ``list`` and ``watch`` the channel: a channel is a LIST then a
        WATCH, and with ``credential = "subscriber"`` either may run with this token. Both
        questions are asked at once; both must be allowed."""
        answers = await asyncio.gather(self._may(token, target, "list"), self._may(token, target, "watch"))
        return all(answers)

    async def _may(self, token: str, target: WatchTarget, verb: str) -> bool:
        body = {
            "apiVersion": "authorization.k8s.io/v1",
            "kind": "SelfSubjectAccessReview",
            "spec": {"resourceAttributes": resource_attributes(target, verb)},
        }
        answer = await self._client.post_json(
            target_base_url(self._client.config, target) + SSAR_PATH, body, token=token
        )
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
