"""Registry calls that do not grow with the number of ModelDeployments.

A local HTTP server speaks the few MLflow REST routes the operator uses and counts every
request it gets (and on which TCP connection), so the tests can say exactly how many
calls N ModelDeployments cost: one check per pinned version, one poll per alias and
interval, nothing shared across credentials, and fewer calls, not more, while MLflow
fails. Times are passed to the resolver as numbers: no test waits on a clock.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from mlflow_standin import Mlflow, serving
from modelship_operator import api, metrics
from modelship_operator.lru import LRU
from modelship_operator.registry import POOL_SIZE, Clients, Credentials, Registry, RegistryError
from modelship_operator.resolve import Resolver

POLL = 30.0


@pytest.fixture(scope="module")
def served() -> Iterator[tuple[str, Mlflow]]:
    state = Mlflow()
    with serving(state) as uri:
        yield uri, state


@pytest.fixture()
def mlflow(served: tuple[str, Mlflow]) -> tuple[str, Mlflow]:
    served[1].reset()
    return served


def md(name: str, namespace: str = "ml", **model: str) -> api.ModelDeployment:
    return api.ModelDeployment.model_validate(
        {"metadata": {"name": name, "namespace": namespace},
         "spec": {"model": {"name": "fraud", **model}}}
    )


def registry_of(
    resolver: Resolver, uri: str, credentials: Credentials | None = None
) -> Callable[[], Registry]:
    """What Reconciler.registry_for hands the resolver: a shared client from the pool."""
    return lambda: resolver.clients.get(uri, credentials, 5.0)


def resolve_all(
    resolver: Resolver,
    mds: list[api.ModelDeployment],
    registry: Callable[[], Registry],
    now: float,
    current: dict[str, Any] | None = None,
    force: bool = False,
) -> list[Any]:
    """One pass of every ModelDeployment, in parallel, as the operator's workers run them."""
    with ThreadPoolExecutor(max_workers=16) as pool:
        return list(pool.map(
            lambda m: resolver.resolve(m, current or {}, registry, now, force=force), mds
        ))


def sample(name: str, **labels: str) -> float:
    return metrics.METRICS.registry.get_sample_value(name, labels) or 0.0


def test_a_pinned_version_is_checked_once_for_every_model_deployment(
    mlflow: tuple[str, Mlflow],
) -> None:
    uri, state = mlflow
    state.versions.add(("fraud", "3"))
    state.delay = 0.05  # slow enough that the passes overlap
    resolver = Resolver(POLL, verify=True)
    mds = [md(f"pinned-{i}", version="3") for i in range(60)]
    before = sample("modelship_operator_registry_requests_total",
                    operation="getVersion", outcome="Ok")
    first = resolve_all(resolver, mds, registry_of(resolver, uri), now=0.0, force=True)
    assert {r.target for r in first} == {"3"} and all(r.problem is None for r in first)
    # One check: the version's record and its download URI, for all sixty.
    assert (state.count("model-versions/get"), state.count("model-versions/get-download-uri")) \
        == (1, 1)
    assert sample("modelship_operator_registry_requests_total",
                  operation="getVersion", outcome="Ok") == before + 1
    # Later passes (even a change of another part of the spec) ask nothing.
    for now in (1.0, 100.0, 10_000.0):
        again = resolve_all(resolver, mds, registry_of(resolver, uri), now=now, force=True)
        assert {r.target for r in again} == {"3"}
    assert len(state.seen) == 2
    assert resolver.next_due("ml", "pinned-0") is None  # nothing to poll


def test_a_failed_check_is_not_remembered_as_a_success(mlflow: tuple[str, Mlflow]) -> None:
    uri, state = mlflow
    resolver = Resolver(POLL, verify=True, rng=lambda: 0.5)
    mds = [md(f"early-{i}", version="4") for i in range(20)]
    serving = {"stable": {"version": "3"}}
    early = resolve_all(resolver, mds, registry_of(resolver, uri), now=0.0, current=serving)
    # Not there yet: serving stays on 3, and the twenty asked once between them.
    assert {(r.target, r.problem.reason) for r in early} == {("3", "ModelVersionNotFound")}
    assert state.count("model-versions/get") == 1
    retry = resolve_all(resolver, mds, registry_of(resolver, uri), now=0.5, current=serving)
    assert {r.target for r in retry} == {"3"} and state.count("model-versions/get") == 1
    state.versions.add(("fraud", "4"))
    later = resolve_all(resolver, mds, registry_of(resolver, uri), now=1.0, current=serving)
    assert {(r.target, r.problem) for r in later} == {("4", None)}
    assert state.count("model-versions/get") == 2


def test_followers_of_an_alias_share_one_poll_per_interval(mlflow: tuple[str, Mlflow]) -> None:
    uri, state = mlflow
    state.aliases[("", "fraud", "champion")] = "1"
    state.versions.update({("fraud", "1"), ("fraud", "2"), ("fraud", "3")})
    state.delay = 0.05
    resolver = Resolver(POLL, verify=True, rng=lambda: 0.5)  # no jitter: due every 30 s
    mds = [md(f"follower-{i}", alias="champion") for i in range(100)]
    made = [0]

    def registry() -> Registry:  # what reads the credentials Secret, in the operator
        made[0] += 1
        return resolver.clients.get(uri, None, 5.0)

    first = resolve_all(resolver, mds, registry, now=0.0, force=True)
    assert {r.wanted for r in first} == {"1"}
    assert state.count("registered-models/alias") == 1
    assert {resolver.next_due("ml", m.metadata.name) for m in mds} == {POLL}

    # Ten minutes of a tick every 5 s; a follower has a pass only when it is due.
    state.delay = 0.0
    seen = {m.metadata.name: "1" for m in mds}
    passes = 0
    for step in range(1, 121):
        now = step * 5.0
        if now == 300.0:
            state.aliases[("", "fraud", "champion")] = "2"  # the alias moves
        if now == 310.0:
            # And again; one follower's spec changes, which asks at once.
            state.aliases[("", "fraud", "champion")] = "3"
            forced = resolver.resolve(mds[0], {}, registry, now, force=True)
            assert forced.wanted == "3"
            seen[mds[0].metadata.name] = "3"
        due = [m for m in mds if resolver.due("ml", m.metadata.name, now)]
        passes += len(due)
        for m, r in zip(due, resolve_all(resolver, due, registry, now=now), strict=True):
            seen[m.metadata.name] = str(r.wanted)
        if now == 300.0:
            assert set(seen.values()) == {"2"}  # every follower saw the move at once
        if now == 310.0:
            assert set(seen.values()) == {"3"}  # and the others took it without asking
            clients_made = made[0]
    # Polls at 0, 30, ..., 300; the forced one at 310; then 340, 370, ..., 580.
    assert state.count("registered-models/alias") == 11 + 1 + 9
    # Once all know the versions, only the follower that asks makes a client (in the
    # operator: reads the credentials Secret): at 340, 370, ..., 580.
    assert made[0] - clients_made == 9
    # A pass per follower per poll (19 of them after the first), and one to catch up.
    assert passes == 100 * 19 + 99
    # Each version was checked once for all, when the alias moved to it.
    assert state.count("model-versions/get") == 3
    assert resolver.due("ml", "follower-7", 609.0) is False
    assert resolver.due("ml", "follower-7", 610.0) is True


def test_different_credentials_never_share_an_answer(mlflow: tuple[str, Mlflow]) -> None:
    uri, state = mlflow
    state.tokens = {"team-a-token", "team-b-token"}
    state.aliases[("team-a-token", "fraud", "champion")] = "5"
    state.aliases[("team-b-token", "fraud", "champion")] = "7"
    resolver = Resolver(POLL, verify=False)
    team_a = Credentials(token="team-a-token")
    team_b = Credentials(token="team-b-token")
    a = [md(f"a-{i}", "team-a", alias="champion") for i in range(10)]
    b = [md(f"b-{i}", "team-b", alias="champion") for i in range(10)]
    anonymous = md("nobody", "team-c", alias="champion")
    got_a = resolve_all(resolver, a, registry_of(resolver, uri, team_a), now=0.0)
    got_b = resolve_all(resolver, b, registry_of(resolver, uri, team_b), now=0.0)
    refused = resolver.resolve(anonymous, {}, registry_of(resolver, uri), now=0.0)
    assert {r.wanted for r in got_a} == {"5"} and {r.wanted for r in got_b} == {"7"}
    assert refused.problem is not None and refused.problem.reason == "Unauthorized"
    assert state.count("registered-models/alias", "team-a-token") == 1
    assert state.count("registered-models/alias", "team-b-token") == 1
    assert state.count("registered-models/alias", "") == 1
    # Same URI, same credentials, equal but distinct objects: one shared client.
    assert resolver.clients.get(uri, Credentials(token="team-a-token"), 5.0) is \
        resolver.clients.get(uri, team_a, 5.0)
    keys = {resolver.clients.get(uri, c, 5.0).key for c in (team_a, team_b, None)}
    assert len(keys) == 3
    assert not any("team-" in part for key in keys for part in key)  # a digest, not the token


def test_errors_back_off_for_all_followers_and_serving_stays(mlflow: tuple[str, Mlflow]) -> None:
    uri, state = mlflow
    state.aliases[("", "fraud", "champion")] = "1"
    resolver = Resolver(POLL, verify=True, rng=lambda: 0.5)
    mds = [md(f"out-{i}", alias="champion") for i in range(50)]
    serving = {"stable": {"version": "1"}, "model": {"resolvedVersion": "1"}}
    registry = registry_of(resolver, uri)
    resolve_all(resolver, mds, registry, now=0.0, current=serving)
    state.down = True
    before = sample("modelship_operator_registry_requests_total",
                    operation="resolveAlias", outcome="RegistryUnavailable")
    asked_at: list[float] = []
    for step in range(361):  # ten followers every 0.25 s, from 30 s to 2 min
        now = 30.0 + step * 0.25
        calls = state.count("registered-models/alias")
        results = resolve_all(resolver, mds[:10], registry, now=now, current=serving)
        if state.count("registered-models/alias") > calls:
            asked_at.append(now)
        assert {r.target for r in results} == {"1"}  # the outage moves nothing
        assert {r.problem.reason for r in results if r.problem} <= {"RegistryUnavailable"}
    gaps = [b - a for a, b in itertools.pairwise(asked_at)]
    assert gaps[:5] == [1.0, 2.0, 4.0, 8.0, 16.0]  # exponential (no jitter at rng 0.5)
    assert max(gaps) == POLL  # capped at the poll interval
    assert sample("modelship_operator_registry_requests_total", operation="resolveAlias",
                  outcome="RegistryUnavailable") == before + len(asked_at)
    assert resolver.next_due("ml", "out-0") == asked_at[-1] + POLL
    # Back up: the first due poll succeeds and the schedule is the interval again.
    state.down = False
    now = asked_at[-1] + POLL
    back = resolve_all(resolver, mds, registry, now=now, current=serving)
    assert {(r.target, r.problem) for r in back} == {("1", None)}
    assert resolver.next_due("ml", "out-0") == now + POLL


def test_a_client_reuses_its_connections_from_many_threads(mlflow: tuple[str, Mlflow]) -> None:
    uri, state = mlflow
    state.versions.add(("fraud", "1"))
    state.delay = 0.01
    clients = Clients(maxsize=2)
    client = clients.get(uri, None, 5.0)
    with ThreadPoolExecutor(max_workers=32) as pool:
        records = list(pool.map(lambda _: client.get_version("fraud", "1"), range(200)))
    assert all(r["status"] == "READY" for r in records)
    ports = {port for _, _, port in state.seen}
    assert len(state.seen) == 200 and 1 <= len(ports) <= POOL_SIZE
    assert clients.get(uri + "/", None, 5.0) is client  # same server, same client
    clients.get(uri, Credentials(token="x"), 5.0)
    clients.get(uri, Credentials(token="y"), 5.0)
    assert len(clients) == 2 and clients.get(uri, None, 5.0) is not client  # bounded


def test_the_lru_forgets_the_least_recently_used() -> None:
    cache: LRU[str, int] = LRU(2)
    cache.put("a", 1)
    cache.put("b", 2)
    assert cache.get("a") == 1  # a is now the most recent
    cache.put("c", 3)
    assert ("a" in cache, "b" in cache, "c" in cache, len(cache)) == (True, False, True, 2)
    assert cache.setdefault("a", lambda: 9) == 1 and cache.pop("a") == 1 and cache.pop("a") is None
    with pytest.raises(ValueError, match="at least 1"):
        LRU(0)


@pytest.mark.parametrize(("operation", "outcome"), [("ResolveAlias", "Ok"), ("resolveAlias", "ok"),
                                                    ("get version", "Ok")])
def test_a_registry_request_label_out_of_its_words_is_refused(operation: str, outcome: str) -> None:
    with pytest.raises(ValueError, match="registry"):
        metrics.record_registry_request(operation, outcome)


def test_a_follower_without_a_client_retries_on_its_own(mlflow: tuple[str, Mlflow]) -> None:
    uri, state = mlflow
    state.aliases[("", "fraud", "champion")] = "1"
    resolver = Resolver(POLL, verify=False, rng=lambda: 0.5)
    secret_readable = [False]

    def registry() -> Registry:  # Reconciler.registry_for: the Secret first
        if not secret_readable[0]:
            raise RegistryError("Unauthorized", "Secret mlflow-auth not found")
        return resolver.clients.get(uri, None, 5.0)

    ok, locked_out = md("ok", alias="champion"), md("locked-out", alias="champion")
    serving = {"stable": {"version": "1"}, "model": {"resolvedVersion": "1"}}
    assert resolver.resolve(ok, serving, registry_of(resolver, uri), now=0.0).wanted == "1"
    first = resolver.resolve(locked_out, serving, registry, now=0.0)
    assert (first.target, first.problem and first.problem.reason) == ("1", "Unauthorized")
    assert resolver.next_due("ml", "locked-out") == 1.0  # its own backoff: 1, 2, 4, ... s
    assert resolver.next_due("ml", "ok") == POLL  # the other follower's schedule is its own
    again = resolver.resolve(locked_out, serving, registry, now=1.0)
    assert again.problem is not None and resolver.next_due("ml", "locked-out") == 3.0
    secret_readable[0] = True
    fixed = resolver.resolve(locked_out, serving, registry, now=3.0)
    # The Secret readable again, it takes the answer the other follower got: no call.
    assert (fixed.wanted, fixed.problem) == ("1", None)
    assert state.count("registered-models/alias") == 1
    assert resolver.next_due("ml", "locked-out") == POLL
    # Pinned now, or deleted: nothing to poll for it.
    resolver.resolve(md("locked-out", version="1"), serving, registry, now=4.0)
    assert resolver.next_due("ml", "locked-out") is None
    resolver.forget("ml", "ok")
    assert resolver.next_due("ml", "ok") is None and resolver.due("ml", "ok", 5.0)
