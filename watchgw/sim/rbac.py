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

``watchgw sim --rbac FILE`` loads users, tokens and grants from a TOML file (:func:`load_rbac`,
example ``config/sim-rbac.toml``), so bearer mode can be tried by hand without writing code.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import tomllib
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # store.py imports uid_of from here
    from .store import Simulator


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


class RbacFileError(ValueError):
    """A ``--rbac`` file that cannot be used; the message names the file and the entry."""


_USER_KEYS = frozenset({"name", "token"})
_GRANT_KEYS = frozenset({"user", "verbs", "group", "resource", "namespace", "project", "org", "names"})
_SCOPE_KEYS = ("group", "resource", "namespace", "project", "org")


@dataclass(frozen=True, slots=True)
class SimRbac:
    """Users, their tokens and their grants, as ``watchgw sim --rbac FILE`` reads them."""

    tokens: dict[str, str]
    """token -> username (``Simulator.tokens``)."""
    rules: Rules

    def apply(self, sim: Simulator) -> None:
        """From now on ``sim`` requires a bearer token on every request (401 without one) and
        answers requests and access reviews from the grants (403 without one)."""
        sim.tokens = dict(self.tokens)
        sim.authorizer = self.rules


def load_rbac(path: str | os.PathLike[str]) -> SimRbac:
    """Read a TOML file of ``[[users]]`` (``name``, ``token``) and ``[[grants]]`` (``user``,
    ``verbs``, ``group``, ``resource``, ``namespace``, ``project``, ``org``, ``names``; what is
    left out matches anything, ``verbs`` defaults to get, list, watch). ``config/sim-rbac.toml``
    is the annotated example. Unknown keys and grants for undeclared users are errors: a typo
    must not silently grant or withhold access."""
    try:
        with open(path, "rb") as f:
            raw = tomllib.load(f)
    except OSError as exc:
        raise RbacFileError(f"{path}: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise RbacFileError(f"{path}: not valid TOML: {exc}") from None
    unknown = sorted(set(raw) - {"users", "grants"})
    if unknown:
        raise RbacFileError(f"{path}: unknown key {unknown[0]!r} (expected [[users]] and [[grants]])")
    tokens: dict[str, str] = {}
    for i, entry in enumerate(_tables(raw, "users", path)):
        where = f"{path}: users[{i}]"
        _no_unknown(entry, _USER_KEYS, where)
        name = _text(entry, "name", where)
        token = _text(entry, "token", where)
        if token in tokens:
            raise RbacFileError(f"{where}: token already belongs to user {tokens[token]!r}")
        tokens[token] = name
    if not tokens:
        raise RbacFileError(f"{path}: no [[users]]: nobody could authenticate")
    users = set(tokens.values())
    rules = Rules()
    for i, grant in enumerate(_tables(raw, "grants", path)):
        where = f"{path}: grants[{i}]"
        _no_unknown(grant, _GRANT_KEYS, where)
        user = _text(grant, "user", where)
        if user not in users:
            raise RbacFileError(f"{where}: user {user!r} is not among the [[users]]")
        scope = {key: _text(grant, key, where, default="*", empty=True) for key in _SCOPE_KEYS}
        rules.allow(
            user,
            verbs=_texts(grant, "verbs", where, default=("get", "list", "watch")),
            names=_texts(grant, "names", where, default=()),
            **scope,
        )
    return SimRbac(tokens, rules)


def _tables(raw: dict[str, Any], key: str, path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    value = raw.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        raise RbacFileError(f"{path}: {key} must be an array of tables ([[{key}]])")
    return value


def _no_unknown(table: dict[str, Any], allowed: frozenset[str], where: str) -> None:
    unknown = sorted(set(table) - allowed)
    if unknown:
        raise RbacFileError(f"{where}: unknown key {unknown[0]!r} (allowed: {', '.join(sorted(allowed))})")


def _text(
    table: dict[str, Any], key: str, where: str, *, default: str | None = None, empty: bool = False
) -> str:
    value = table.get(key, default)
    if value is None:
        raise RbacFileError(f"{where}: {key} is required")
    if not isinstance(value, str) or (not value and not empty):
        raise RbacFileError(f"{where}: {key} must be a non-empty string")
    return value


def _texts(table: dict[str, Any], key: str, where: str, *, default: tuple[str, ...]) -> tuple[str, ...]:
    value = table.get(key, list(default))
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise RbacFileError(f"{where}: {key} must be a list of non-empty strings")
    return tuple(value)
