"""Channel fields -> upstream URL and query (PROTOCOL.md section 2).

``<url><scope prefix>/<api | apis/<group>>/<version>[/namespaces/<ns>]/<plural>``, where the scope
prefix is ``user_prefix`` (``{user}``: the caller's user id) for a user-scoped channel, else
``project_prefix`` (``{project}`` filled in) when the channel has a project, else ``org_prefix``
(``{org}``) when it has an organization, else empty: a plain Kubernetes API server. A project
channel without a namespace watches ``project_default_namespace`` (see :func:`upstream_target`).

Every query parameter appears exactly once (the seed sent ``watch`` and ``timeoutSeconds`` twice)
and every value is percent-encoded with :func:`urllib.parse.quote` (``safe=""``), so selectors
holding ``=``, ``,``, ``!``, ``&`` or spaces reach the API server intact. The URL returned is fully
encoded: hand it to aiohttp as ``yarl.URL(url, encoded=True)`` so it is not encoded twice.
"""

from __future__ import annotations

import dataclasses
from urllib.parse import quote

from watchgw.config import UpstreamConfig
from watchgw.kube.types import WatchTarget


def _segment(value: str) -> str:
    return quote(value, safe="")


def upstream_target(config: UpstreamConfig, target: WatchTarget) -> WatchTarget:
    """What is watched for a channel: a project channel without a namespace watches
    ``project_default_namespace`` (the channel key keeps the namespace as the client sent it)."""
    if (
        target.project_id
        and not target.namespace
        and not target.user_scoped
        and config.project_default_namespace
    ):
        return dataclasses.replace(target, namespace=config.project_default_namespace)
    return target


def scope_prefix(config: UpstreamConfig, *, project_id: str = "", org_id: str = "", user: str = "") -> str:
    """The path between ``config.url`` and ``/api...``: a user's, project's or org's control plane, or ""."""
    if user:
        return config.user_prefix.replace("{user}", _segment(user))
    if project_id:
        return config.project_prefix.replace("{project}", _segment(project_id))
    if org_id:
        return config.org_prefix.replace("{org}", _segment(org_id))
    return ""


def scope_base_url(config: UpstreamConfig, *, project_id: str = "", org_id: str = "", user: str = "") -> str:
    """``config.url`` plus the scope prefix: where a channel's control plane answers (access reviews)."""
    return config.url.rstrip("/") + scope_prefix(config, project_id=project_id, org_id=org_id, user=user)


def target_base_url(config: UpstreamConfig, target: WatchTarget) -> str:
    """The control plane of ``target``'s scope (a user-scoped target without a user is refused)."""
    if target.user_scoped and not target.user:
        raise ValueError("a user-scoped target needs a user id")
    return scope_base_url(
        config,
        project_id=target.project_id,
        org_id=target.org_id,
        user=target.user if target.user_scoped else "",
    )


def collection_path(target: WatchTarget) -> str:
    """``/api/v1[/namespaces/<ns>]/<plural>`` or ``/apis/<group>/<version>[/namespaces/<ns>]/<plural>``."""
    segments = [s for s in target.resource_type.strip("/").split("/") if s]
    if len(segments) < 2:
        raise ValueError(f"resource type {target.resource_type!r} is not a collection path")
    *group_version, plural = segments
    path = "/" + "/".join(_segment(s) for s in group_version)
    if target.namespace:
        path += "/namespaces/" + _segment(target.namespace)
    return path + "/" + _segment(plural)


def build_collection_url(config: UpstreamConfig, target: WatchTarget) -> str:
    """The collection URL of ``target`` (no query)."""
    return target_base_url(config, target) + collection_path(target)


def field_selector(target: WatchTarget) -> str:
    """The channel's ``fieldSelector``, with ``metadata.name=<name>`` first when ``name`` is set."""
    parts = []
    if target.name:
        parts.append(f"metadata.name={target.name}")
    if target.field_selector:
        parts.append(target.field_selector)
    return ",".join(parts)


def build_query(
    target: WatchTarget,
    *,
    watch: bool = False,
    resource_version: str | None = None,
    timeout_s: int | None = None,
    allow_bookmarks: bool = False,
    limit: int | None = None,
    continue_token: str | None = None,
) -> list[tuple[str, str]]:
    """Query parameters of a LIST (``watch=False``) or WATCH request, each at most once, in order."""
    params: list[tuple[str, str]] = []
    if target.label_selector:
        params.append(("labelSelector", target.label_selector))
    selector = field_selector(target)
    if selector:
        params.append(("fieldSelector", selector))
    if watch:
        params.append(("watch", "true"))
        if allow_bookmarks:
            params.append(("allowWatchBookmarks", "true"))
    else:
        if limit is not None:
            params.append(("limit", str(limit)))
        if continue_token:
            params.append(("continue", continue_token))
    if resource_version:
        params.append(("resourceVersion", resource_version))
    if timeout_s is not None:
        params.append(("timeoutSeconds", str(timeout_s)))
    return params


def encode_query(params: list[tuple[str, str]]) -> str:
    """``k=v&k=v`` with keys and values percent-encoded (``%20`` for spaces, never ``+``)."""
    return "&".join(_segment(k) + "=" + _segment(v) for k, v in params)


def build_url(config: UpstreamConfig, target: WatchTarget, params: list[tuple[str, str]]) -> str:
    """Collection URL plus encoded query: ready for ``yarl.URL(url, encoded=True)``."""
    url = build_collection_url(config, target)
    return url + "?" + encode_query(params) if params else url
