"""Which model version a ModelDeployment should run, as the MLflow registry says.

`Resolver.resolve()` turns `spec.model` (a fixed version, or an alias to follow) into a
target version, and checks a version before any rollout to it (it exists, is READY,
its artifacts can be listed). A registry that is down, refuses the credentials or has
no such version never touches serving: the target falls back to what serves now and
the conditions `ModelResolved` and `RegistryAvailable` say why nothing moves.

Aliases are polled at most every `alias_poll_seconds` (with ±10% jitter, so many
ModelDeployments do not hit MLflow in step), and after a failure the next try waits
1, 2, 4, ... seconds up to the poll interval. A change of the spec polls at once.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from modelship_operator import api, status
from modelship_operator.registry import Registry, RegistryError

MODEL_RESOLVED = "ModelResolved"
REGISTRY_AVAILABLE = "RegistryAvailable"
_REGISTRY_DOWN = ("RegistryUnavailable", "Unauthorized")


@dataclass
class _AliasPoll:
    version: str | None = None
    next_at: float = 0.0
    failures: int = 0
    problem: RegistryError | None = None


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
    """Alias polling state and verified versions, shared by all passes of the operator."""

    def __init__(
        self, poll_seconds: float, verify: bool, rng: Callable[[], float] = random.random
    ) -> None:
        self.poll_seconds = poll_seconds
        self.verify = verify
        self._rng = rng
        self._polls: dict[tuple[str, str], _AliasPoll] = {}
        self._verified: set[tuple[str, str, str]] = set()
        self._guard = threading.Lock()

    def _jitter(self, seconds: float) -> float:
        return seconds * (0.9 + 0.2 * self._rng())

    def due(self, namespace: str, name: str, now: float) -> bool:
        """True when the alias of this ModelDeployment should be resolved again now."""
        with self._guard:
            poll = self._polls.get((namespace, name))
        return poll is None or now >= poll.next_at

    def next_due(self, namespace: str, name: str) -> float | None:
        """When the next alias poll for this ModelDeployment is due (None: none planned)."""
        with self._guard:
            poll = self._polls.get((namespace, name))
        return None if poll is None else poll.next_at

    def resolve(
        self,
        md: api.ModelDeployment,
        current: Mapping[str, Any],
        registry: Callable[[], Registry] | None,
        now: float,
        force: bool = False,
    ) -> Resolution:
        """The target version for this pass; `registry` is None when no URI is known."""
        model = md.spec.model
        generation = md.metadata.generation
        fallback = serving_version(current)
        problem: RegistryError | None = None
        consulted = False
        wanted: str | None
        if model.alias is not None:
            key = (md.metadata.namespace, md.metadata.name)
            with self._guard:
                poll = self._polls.setdefault(key, _AliasPoll())
            if registry is None:
                wanted = (current.get("model") or {}).get("resolvedVersion")
            elif force or now >= poll.next_at or (poll.version is None and poll.problem is None):
                consulted = True
                try:
                    poll.version = registry().resolve_alias(model.name, model.alias)
                    poll.failures, poll.problem = 0, None
                    poll.next_at = now + self._jitter(self.poll_seconds)
                except RegistryError as exc:
                    poll.failures += 1
                    poll.problem = exc
                    poll.version = None if exc.reason == "ModelVersionNotFound" else poll.version
                    delay = min(self.poll_seconds, 2.0 ** (poll.failures - 1))
                    poll.next_at = now + self._jitter(delay)
                wanted, problem = poll.version, poll.problem
            else:
                wanted, problem = poll.version, poll.problem
        else:
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
            try:
                client = registry()
                mark = (client.tracking_uri, model.name, target)
                if mark not in self._verified:
                    consulted = True
                    client.check_version(model.name, target)
                    self._verified.add(mark)
            except RegistryError as exc:
                consulted = True
                problem = exc
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
