"""Which model version a ModelDeployment should run, as the MLflow registry says.

`Resolver.resolve()` turns `spec.model` (a fixed version, or an alias to follow) into a
target version, and checks a version before any rollout to it (it exists, is READY,
its artifacts can be listed). A registry that is down, refuses the credentials or has
no such version never touches serving: the target falls back to what serves now and
the conditions `ModelResolved` and `RegistryAvailable` say why nothing moves.

Registry answers are shared by every ModelDeployment of the process, keyed by what they
depend on: the tracking URI, a digest of the credentials (`Registry.key`; two namespaces
with different credentials never share an answer), the model name, and the alias or
version asked about.

- A verified version stays verified (at most `VERIFIED_MAX` of them, least recently used
  forgotten): a pinned `spec.model.version` costs no registry call after its first pass.
  A failed check is never remembered as a success; it is asked again on the schedule of
  a failed poll below.
- An alias is polled once per `alias_poll_seconds` (±10% jitter) however many
  ModelDeployments follow it; the first that finds the answer due asks MLflow, the others
  wait for that call and take its answer. After a failure the next try waits 1, 2, 4,
  ... seconds (±10%) up to the poll interval, still once for all followers.
- A change of the spec (`force`) asks at once, unless another ModelDeployment got the
  same answer less than `FORCE_FRESH_SECONDS` ago: a thousand ModelDeployments created
  together on one alias make one call.

`Resolver.next_due()` is when an object's alias is next due, for a loop to sleep on: the
shared answer's next poll, or at once when another follower took a newer answer than
this object has seen (a pass then takes it without a call).
"""

from __future__ import annotations

import math
import random
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from modelship_operator import api, status
from modelship_operator.lru import LRU
from modelship_operator.registry import Clients, Registry, RegistryError

MODEL_RESOLVED = "ModelResolved"
REGISTRY_AVAILABLE = "RegistryAvailable"
_REGISTRY_DOWN = ("RegistryUnavailable", "Unauthorized")

VERIFIED_MAX = 50_000
"""Version checks (passed or failed) remembered, across all ModelDeployments."""
POLLS_MAX = 50_000
"""Alias answers remembered (one per tracking URI x credentials x model x alias)."""
FOLLOWERS_MAX = 200_000
"""Alias-following ModelDeployments whose schedule is remembered."""
FORCE_FRESH_SECONDS = 5.0
"""A change of the spec takes a shared answer younger than this (or the poll interval)."""

_Key = tuple[str, str, str, str]  # tracking URI, credentials digest, model, alias|version
_Spec = tuple[str | None, str | None, str, str]  # trackingUri, credentialsSecret, model, alias


@dataclass
class _Answer:
    """One registry answer, shared by every ModelDeployment that asks the same question."""

    value: str | None = None
    problem: RegistryError | None = None
    asked_at: float | None = None
    next_at: float = 0.0
    failures: int = 0
    serial: int = 0  # how many times it was asked
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)


@dataclass
class _Follower:
    """An alias-following ModelDeployment: the answer it follows, or why it has none."""

    spec: _Spec
    key: _Key | None = None
    version: str | None = None
    serial: int = 0  # the serial of the answer it last took
    # Making the client failed (its Secret unreadable): this object's own retry schedule.
    problem: RegistryError | None = None
    failures: int = 0
    next_at: float = 0.0


@dataclass
class Resolution:
    """The outcome of one resolution."""

    target: str | None
    wanted: str | None
    problem: RegistryError | None = None
    conditions: list[dict[str, Any]] = field(default_factory=list)


def serving_version(current: Mapping[str, Any]) -> str | None:
    """What serves now (the canary under test counts: a rollout in flight keeps going)."""
    canary = (current.get("canary") or {}).get("version")
    stable = (current.get("stable") or {}).get("version")
    return str(canary or stable) if (canary or stable) else None


class Resolver:
    """Alias answers, verified versions and each follower's schedule, shared by all passes
    of the operator (thread-safe: passes of different ModelDeployments run in parallel)."""

    def __init__(
        self, poll_seconds: float, verify: bool, rng: Callable[[], float] = random.random
    ) -> None:
        self.poll_seconds = poll_seconds
        self.verify = verify
        self._rng = rng
        self._polls: LRU[_Key, _Answer] = LRU(POLLS_MAX)
        self._checks: LRU[_Key, _Answer] = LRU(VERIFIED_MAX)
        self._followers: LRU[tuple[str, str], _Follower] = LRU(FOLLOWERS_MAX)
        self.clients = Clients()
        """The shared MLflow clients (one session per tracking URI and credentials)."""

    def _jitter(self, seconds: float) -> float:
        return seconds * (0.9 + 0.2 * self._rng())

    def _retry_in(self, failures: int) -> float:
        """The wait after the `failures`-th failure in a row: 1, 2, 4, ... s, jittered,
        at most the poll interval (a registry back up is seen within one interval)."""
        return self._jitter(min(self.poll_seconds, 2.0 ** min(failures - 1, 62)))

    def _fresh(self, answer: _Answer, now: float, force: bool) -> bool:
        """Whether a shared answer stands for this pass: until it is due, or, on a change
        of the spec (`force`), while younger than FORCE_FRESH_SECONDS (or the interval)."""
        if answer.asked_at is None:
            return False
        if force:
            return now - answer.asked_at < min(self.poll_seconds, FORCE_FRESH_SECONDS)
        return now < answer.next_at

    # -- schedule ---------------------------------------------------------------------

    def next_due(self, namespace: str, name: str) -> float | None:
        """The time (as `now` is given to resolve) the alias of this ModelDeployment is next
        due to be resolved; None when it follows no alias that can be polled (a pinned
        version, no tracking URI, or not resolved yet: its first pass decides)."""
        follower = self._followers.peek((namespace, name))
        if follower is None:
            return None
        if follower.problem is not None:
            return follower.next_at
        if follower.key is None:
            return None
        answer = self._polls.peek(follower.key)
        if answer is None:
            return 0.0
        if answer.serial != follower.serial and answer.asked_at is not None:
            return answer.asked_at  # another follower got a newer answer: take it now
        return answer.next_at

    def due(self, namespace: str, name: str, now: float) -> bool:
        """True when the alias of this ModelDeployment should be resolved again now."""
        if self._followers.peek((namespace, name)) is None:
            return True
        at = self.next_due(namespace, name)
        return at is not None and now >= at

    def forget(self, namespace: str, name: str) -> None:
        """Drop the schedule of a deleted ModelDeployment (shared answers stay)."""
        self._followers.pop((namespace, name))

    # -- resolution -------------------------------------------------------------------

    def resolve(
        self,
        md: api.ModelDeployment,
        current: Mapping[str, Any],
        registry: Callable[[], Registry] | None,
        now: float,
        force: bool = False,
    ) -> Resolution:
        """The target version for this pass; `registry` is None when no URI is known.

        `registry()` is called (which may read a Secret) only when the registry must be
        asked: never for an alias answer that is not due, nor for a verified version.
        """
        model = md.spec.model
        generation = md.metadata.generation
        fallback = serving_version(current)
        problem: RegistryError | None = None
        consulted = False
        wanted: str | None
        obj = (md.metadata.namespace, md.metadata.name)
        if model.alias is not None:
            if registry is None:
                self._follower(obj, md)
                wanted = (current.get("model") or {}).get("resolvedVersion")
            else:
                wanted, problem, consulted = self._follow(obj, md, registry, now, force)
        else:
            self._followers.pop(obj)
            wanted = model.version

        target = wanted
        stable = (current.get("stable") or {}).get("version")
        canary = (current.get("canary") or {}).get("version")
        if (
            target is not None
            and problem is None
            and self.verify
            and registry is not None
            and target not in (stable, canary)
        ):
            follower = self._followers.peek(obj) if model.alias is not None else None
            known = follower.key[:2] if follower is not None and follower.key else None
            problem, asked = self._check(model.name, target, registry, now, force, known)
            consulted = consulted or asked
            if problem is not None:
                target = None
        if target is None:
            target = fallback

        conditions: list[dict[str, Any]] = []
        if problem is not None:
            conditions.append(
                status.condition(MODEL_RESOLVED, False, problem.reason, problem.message, generation)
            )
            if problem.reason in _REGISTRY_DOWN:
                conditions.append(
                    status.condition(
                        REGISTRY_AVAILABLE, False, problem.reason, problem.message, generation
                    )
                )
            elif consulted:
                conditions.append(
                    status.condition(REGISTRY_AVAILABLE, True, "Reachable", "", generation)
                )
        elif wanted is not None:
            how = f"alias {model.alias} -> version {wanted}" if model.alias else f"version {wanted}"
            conditions.append(status.condition(MODEL_RESOLVED, True, "Resolved", how, generation))
            if consulted or (model.alias is not None and registry is not None):
                conditions.append(
                    status.condition(REGISTRY_AVAILABLE, True, "Reachable", "", generation)
                )
        return Resolution(target=target, wanted=wanted, problem=problem, conditions=conditions)

    def _follower(self, obj: tuple[str, str], md: api.ModelDeployment) -> _Follower:
        model = md.spec.model
        spec: _Spec = (
            model.registry.tracking_uri, model.registry.credentials_secret,
            model.name, str(model.alias),
        )
        follower = self._followers.get(obj)
        if follower is None or follower.spec != spec:
            follower = _Follower(spec)
            self._followers.put(obj, follower)
        return follower

    def _follow(
        self,
        obj: tuple[str, str],
        md: api.ModelDeployment,
        registry: Callable[[], Registry],
        now: float,
        force: bool,
    ) -> tuple[str | None, RegistryError | None, bool]:
        """(version, problem, whether MLflow was asked) for an alias follower.

        One follower asks; the others wait on the answer's lock and take what it got. The
        client (which reads the credentials Secret) is made only by the one that asks.
        """
        follower = self._follower(obj, md)
        name, alias = md.spec.model.name, str(md.spec.model.alias)
        if follower.problem is not None and not force and now < follower.next_at:
            return follower.version, follower.problem, False
        client: Registry | None = None
        known = self._polls.get(follower.key) if follower.key is not None else None
        if known is not None and follower.problem is None:
            with known.lock:
                if self._fresh(known, now, force):
                    return self._take(follower, known, asked=False)
                client = self._client(follower, registry, now)
                if client is None:
                    return follower.version, follower.problem, False
                if (*client.key, name, alias) == follower.key:
                    self._ask(known, client, name, alias, now)
                    return self._take(follower, known, asked=True)
        # First pass, or its credentials changed: find (or start) the answer of its key.
        if client is None:
            client = self._client(follower, registry, now)
            if client is None:
                return follower.version, follower.problem, False
        follower.key = (*client.key, name, alias)
        answer = self._polls.setdefault(follower.key, _Answer)
        with answer.lock:
            asked = not self._fresh(answer, now, force)
            if asked:
                self._ask(answer, client, name, alias, now)
            return self._take(follower, answer, asked)

    def _client(
        self, follower: _Follower, registry: Callable[[], Registry], now: float
    ) -> Registry | None:
        """The follower's client; None (the follower's retry scheduled) when it cannot be
        made: its Secret cannot be read, ..."""
        try:
            client = registry()
        except RegistryError as exc:
            follower.failures += 1
            follower.problem = exc
            follower.next_at = now + self._retry_in(follower.failures)
            return None
        follower.problem, follower.failures = None, 0
        return client

    def _ask(self, answer: _Answer, client: Registry, name: str, alias: str, now: float) -> None:
        """Poll the alias into `answer` (its lock held)."""
        try:
            answer.value = client.resolve_alias(name, alias)
            answer.problem, answer.failures = None, 0
            answer.next_at = now + self._jitter(self.poll_seconds)
        except RegistryError as exc:
            answer.failures += 1
            answer.problem = exc
            if exc.reason == "ModelVersionNotFound":
                answer.value = None
            answer.next_at = now + self._retry_in(answer.failures)
        answer.asked_at = now
        answer.serial += 1

    @staticmethod
    def _take(
        follower: _Follower, answer: _Answer, asked: bool
    ) -> tuple[str | None, RegistryError | None, bool]:
        """The follower takes the answer (its lock held)."""
        follower.version, follower.serial = answer.value, answer.serial
        return answer.value, answer.problem, asked

    def _check(
        self,
        name: str,
        version: str,
        registry: Callable[[], Registry],
        now: float,
        force: bool,
        known: tuple[str, str] | None = None,
    ) -> tuple[RegistryError | None, bool]:
        """(problem, whether MLflow was asked) of the check of a version before a rollout.

        `known` is the client's key when the caller knows it (an alias follower's): a
        version verified under it needs no client, so no Secret is read.
        """
        if known is not None:
            done = self._checks.get((*known, name, version))
            if done is not None and done.asked_at is not None and done.problem is None:
                return None, False
        try:
            client = registry()
        except RegistryError as exc:
            return exc, False
        key: _Key = (*client.key, name, version)
        answer = self._checks.setdefault(key, _Answer)
        with answer.lock:
            if answer.asked_at is not None and answer.problem is None:
                return None, False  # verified once, verified for good
            if self._fresh(answer, now, force):
                return answer.problem, False
            try:
                answer.value = client.check_version(name, version)
                answer.problem, answer.failures, answer.next_at = None, 0, math.inf
            except RegistryError as exc:
                answer.failures += 1
                answer.problem = exc
                answer.next_at = now + self._retry_in(answer.failures)
            answer.asked_at = now
            return answer.problem, True
