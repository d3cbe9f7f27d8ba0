"""Authorization for the simulator: tokens -> users -> rules, editable at runtime.

    rules = Rules()
    sim.tokens = {"tok-alice": "alice", "tok-bob": "bob"}
    sim.authorizer = rules
    grant = rules.allow("alice", resource="secrets", project="proj-abc")
    rules.revoke(grant)            # alice's next SelfSubjectAccessReview, LIST or WATCH is denied

A rule matches a request when every field matches: ``"*"`` matches anything, ``names`` (empty =
all) limits it to named objects. The simulator asks the authorizer for every resource request and
every SelfSubjectAccessReview, so revocations take effect exactly as RBAC changes do in a cluster
(an open watch is not cut; the next request is refused).

Users have a ``uid`` besides their name (:func:`uid_of`, sent in the SelfSubjectReview's
``status.userInfo.uid``), and each user a control plane of their own under the simulator's
``user_prefix`` (``/apis/iam.miloapis.com/v1alpha1/users/{user}/control-plane``). With tokens
configured, a user control plane answers its own user (``{user}`` is the user's uid, or its name,
which names the same control plane) and refuses everyone else (403), whatever the rules say:
rules govern the root, project and org control planes. Its SelfSubjectAccessReview answers
``allowed`` for its own user.
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Iterable
from dataclasses import dataclass, field


def uid_of(username: str) -> str:
    """A user's stable uid: ``uid-`` and 16 hex digits of the SHA-256 of the name."""
    return "uid-" + hashlib.sha256(username.encode()).hexdigest()[:16]


def owns_user_scope(username: str, user_scope: str) -> bool:
    """Whether ``user_scope`` (the ``{user}`` of a user control plane) is ``username``'s own."""
    return bool(user_scope) and user_scope in (username, uid_of(username))


@dataclass(frozen=True, slots=True)
class Rule:
    id: int
    user: str
    verbs: frozenset[str]
    group: str = "*"
    resource: str = "*"
    namespace: str = "*"
    project: str = "*"
    org: str = "*"
    names: frozenset[str] = field(default_factory=frozenset)

    def matches(self, user: str, attrs: dict[str, str]) -> bool:
        if user != self.user:
            return False
        if "*" not in self.verbs and attrs.get("verb", "") not in self.verbs:
            return False
        for name in ("group", "resource", "namespace", "project", "org"):
            want = getattr(self, name)
            if want != "*" and attrs.get(name, "") != want:
                return False
        return not self.names or attrs.get("name", "") in self.names


class Rules:
    """A callable authorizer for ``Simulator.authorizer``."""

    def __init__(self) -> None:
        self._rules: dict[int, Rule] = {}
        self._ids = itertools.count(1)

    def allow(
        self,
        user: str,
        *,
        verbs: Iterable[str] = ("get", "list", "watch"),
        group: str = "*",
        resource: str = "*",
        namespace: str = "*",
        project: str = "*",
        org: str = "*",
        names: Iterable[str] = (),
    ) -> Rule:
        rule = Rule(
            next(self._ids),
            user,
            frozenset(verbs),
            group,
            resource,
            namespace,
            project,
            org,
            frozenset(names),
        )
        self._rules[rule.id] = rule
        return rule

    def revoke(self, rule: Rule) -> None:
        self._rules.pop(rule.id, None)

    def revoke_user(self, user: str) -> None:
        for rule in [r for r in self._rules.values() if r.user == user]:
            del self._rules[rule.id]

    def __call__(self, user: str, attrs: dict[str, str]) -> bool:
        return any(rule.matches(user, attrs) for rule in self._rules.values())
