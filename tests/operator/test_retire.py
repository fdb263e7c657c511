"""Zero-loss termination as rendered and planned: the pods' preStop pause, drain setting
and grace period; which versions retire and for how long (status.retiring); and what
render keeps of them (valid objects, kubernetes-validate --strict, every routing)."""

from __future__ import annotations

import shlex
import subprocess
import time
from typing import Any

import pytest
from modelship_operator import retire
from modelship_operator.reconcilers import deployment
from modelship_operator.render import Retiring, RolloutState, render
from modelship_operator.retire import Entry
from modelship_operator.settings import OperatorSettings
from test_render_validate import (  # the strict checks and their schema cache
    SETTINGS,
    _cached_schemas,  # noqa: F401  (an autouse fixture, imported to apply here too)
    check_object,
    make,
)

MODEL = {"name": "iris-classifier", "version": "3"}
ROUTING: dict[str, dict[str, Any]] = {
    "ingress": {"ingress": {"host": "iris.example.com", "className": "nginx"}},
    "gateway": {"gateway": {"parentRefs": [{"name": "public", "namespace": "gateway"}]}},
    "neither": {},
}


def container(settings: OperatorSettings) -> tuple[dict[str, Any], dict[str, Any]]:
    (dep,) = [o for o in render(make({"model": MODEL}), RolloutState("3"), settings)
              if o["kind"] == "Deployment"]
    pod = dep["spec"]["template"]["spec"]
    return pod, pod["containers"][0]


# --- pods: preStop, drain, grace period ---------------------------------------------------


def test_pods_pause_before_sigterm_drain_and_get_the_time_for_both() -> None:
    pod, main = container(SETTINGS)
    env = {e["name"]: e["value"] for e in main["env"]}
    assert env["MODELSHIP_DRAIN_SECONDS"] == "5"
    assert env["MODELSHIP_SHUTDOWN_TIMEOUT_SECONDS"] == "30"
    assert main["lifecycle"] == {"preStop": {"exec": {"command": [
        "python3", "-c", "import time; time.sleep(5)"]}}}
    assert pod["terminationGracePeriodSeconds"] == 5 + 5 + 30 + 5


@pytest.mark.parametrize(
    ("prestop", "drain", "timeout", "grace"), [(0, 0, 1, 6), (2, 7, 60, 74), (30, 0, 30, 65)]
)
def test_termination_follows_the_settings(prestop: int, drain: int, timeout: int,
                                          grace: int) -> None:
    settings = OperatorSettings(
        default_tracking_uri="http://mlflow.mlflow:5000", runtime_prestop_seconds=prestop,
        runtime_drain_seconds=drain, runtime_shutdown_timeout_seconds=timeout,
    )
    pod, main = container(settings)
    check_object(render(make({"model": MODEL}), RolloutState("3"), settings)[1])
    env = {e["name"]: e["value"] for e in main["env"]}
    assert (env["MODELSHIP_DRAIN_SECONDS"], env["MODELSHIP_SHUTDOWN_TIMEOUT_SECONDS"]) == (
        str(drain), str(timeout))
    assert pod["terminationGracePeriodSeconds"] == grace
    assert ("lifecycle" in main) == (prestop > 0)


def test_the_prestop_command_runs_and_pauses() -> None:
    """The hook is a command a Python image runs as is, with no shell and no write."""
    command = deployment.prestop(1)["exec"]["command"]
    started = time.monotonic()
    done = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert time.monotonic() - started >= 1
    assert command[0] == "python3" and "sleep(1)" in shlex.join(command)


# --- which versions retire, and until when -----------------------------------------------


def plan(previous: list[Entry], before: set[str], after: set[str], now: float,
         alive: set[str] | None = None, keep: float = 10) -> list[Entry]:
    live = alive if alive is not None else before | {e.version for e in previous}
    return retire.plan(previous, before, after, live.__contains__, now, keep)


def test_promotion_retires_the_old_stable_until_the_period_is_over() -> None:
    now = 1000.4
    kept = plan([], {"1", "2"}, {"2"}, now)
    assert kept == [Entry("1", 1001.0)]  # rounded up: never kept less than the period
    assert plan(kept, {"2"}, {"2"}, now + 5) == kept
    assert plan(kept, {"2"}, {"2"}, 1010.9) == kept
    assert plan(kept, {"2"}, {"2"}, 1011.0) == []


def test_rollback_and_replacement_retire_the_canary() -> None:
    assert plan([], {"1", "3"}, {"1"}, 50) == [Entry("3", 50)]
    assert plan([], {"1", "3"}, {"1", "4"}, 50) == [Entry("3", 50)]  # canary 3 replaced by 4


def test_a_version_served_again_or_gone_is_not_kept() -> None:
    kept = [Entry("1", 100)]
    assert plan(kept, {"2"}, {"2", "1"}, 101) == []  # version 1 is the canary again
    assert plan(kept, {"2"}, {"2"}, 101, alive={"2"}) == []  # its Deployment was deleted
    # A version whose Deployment never existed is not created to be retired.
    assert plan([], {"1", "2"}, {"2"}, 101, alive={"2"}) == []


def test_entries_keep_their_start_and_add_up() -> None:
    kept = plan([Entry("1", 100)], {"2", "3"}, {"2"}, 104)
    assert kept == [Entry("1", 100), Entry("3", 104)]
    assert plan(kept, {"2"}, {"2"}, 110.5) == [Entry("3", 104)]


def test_zero_seconds_deletes_in_the_same_pass() -> None:
    assert plan([], {"1", "2"}, {"2"}, 100.5, keep=0) == []
    assert plan([Entry("1", 100)], {"2"}, {"2"}, 100.5, keep=0) == []


def test_status_round_trip_and_unreadable_entries() -> None:
    entries = [Entry("1", 1700000000.0), Entry("3", 1700000007.0)]
    raw = retire.to_status(entries)
    assert raw == [{"version": "1", "since": "2023-11-14T22:13:20Z"},
                   {"version": "3", "since": "2023-11-14T22:13:27Z"}]
    assert retire.read(raw) == entries
    assert retire.to_status([]) is None
    assert retire.read(None) == [] and retire.read("junk") == []
    assert retire.read([{"version": "1"}, {"since": "x"}, {"version": "2", "since": "yesterday"},
                        7, {"version": "4", "since": "2023-11-14T22:13:20Z"}]) == [
        Entry("4", 1700000000.0)]


# --- what render keeps while versions retire ---------------------------------------------


def rendered(routing: str, state: RolloutState, *, autoscaling: bool = False
             ) -> dict[tuple[str, str], dict[str, Any]]:
    spec: dict[str, Any] = {"model": MODEL, "replicas": 4, **ROUTING[routing]}
    if autoscaling:
        spec["autoscaling"] = {"minReplicas": 2, "maxReplicas": 6}
    out = render(make(spec), state, SETTINGS)
    for obj in out:
        check_object(obj)
    return {(o["kind"], o["metadata"]["name"]): o for o in out}


PROMOTED = RolloutState("4", retiring=(Retiring("3", 1),), former_canary="4")
ROLLED_BACK = RolloutState("3", retiring=(Retiring("4", 2),), former_canary="4")


@pytest.mark.parametrize("autoscaling", [False, True], ids=["replicas", "hpa"])
@pytest.mark.parametrize("routing", list(ROUTING))
@pytest.mark.parametrize(("state", "old"), [(PROMOTED, "3"), (ROLLED_BACK, "4")],
                         ids=["promoted", "rolled-back"])
def test_retiring_deployment_stays_as_it_is_and_traffic_stays_off_it(
    routing: str, autoscaling: bool, state: RolloutState, old: str
) -> None:
    objs = rendered(routing, state, autoscaling=autoscaling)
    stable = state.stable_version
    kept = objs[("Deployment", f"iris-v{old}")]
    assert {k[1] for k in objs if k[0] == "Deployment"} == {f"iris-v{stable}", f"iris-v{old}"}
    # Kept at the replicas it has (none started, none stopped), without an HPA.
    if autoscaling:
        assert "replicas" not in kept["spec"]
        assert {k[1] for k in objs if k[0] == "HorizontalPodAutoscaler"} == {f"iris-v{stable}"}
    else:
        assert kept["spec"]["replicas"] == state.retiring[0].replicas
        assert objs[("Deployment", f"iris-v{stable}")]["spec"]["replicas"] == 4
    # Service NAME selects the serving version only, whatever the routing.
    iris = objs[("Service", "iris")]["spec"]["selector"]
    assert iris["modelship.io/model-version"] == stable
    # The former canary's routing stays, at weight 0, selecting what it selected.
    canary = objs[("Service", "iris--canary")]["spec"]["selector"]
    assert canary["modelship.io/model-version"] == "4"
    if routing == "ingress":
        annotations = objs[("Ingress", "iris--canary")]["metadata"]["annotations"]
        assert annotations["nginx.ingress.kubernetes.io/canary-weight"] == "0"
        assert objs[("Ingress", "iris")]["spec"] == rendered(routing, RolloutState(stable))[
            ("Ingress", "iris")]["spec"]
    if routing == "gateway":
        refs = objs[("HTTPRoute", "iris")]["spec"]["rules"][0]["backendRefs"]
        assert [(r["name"], r["weight"]) for r in refs] == [("iris", 100), ("iris--canary", 0)]


@pytest.mark.parametrize("routing", list(ROUTING))
def test_once_retired_nothing_of_it_is_left(routing: str) -> None:
    final = rendered(routing, RolloutState("4"))
    assert set(final) == set(rendered(routing, PROMOTED)) - {
        ("Deployment", "iris-v3"), ("Service", "iris--canary"), ("Ingress", "iris--canary")}
    if routing == "gateway":
        assert [r["name"] for r in final[("HTTPRoute", "iris")]["spec"]["rules"][0][
            "backendRefs"]] == ["iris"]


def test_a_new_canary_during_retirement_owns_the_canary_routing() -> None:
    state = RolloutState("4", canary_version="5", canary_weight=0,
                         retiring=(Retiring("3", 1),), former_canary="4")
    objs = rendered("ingress", state)
    assert {k[1] for k in objs if k[0] == "Deployment"} == {"iris-v3", "iris-v4", "iris-v5"}
    services = [k for k in objs if k[0] == "Service"]
    assert sorted(services) == [("Service", "iris"), ("Service", "iris--canary")]
    assert objs[("Service", "iris--canary")]["spec"]["selector"][
        "modelship.io/model-version"] == "5"
    # A retiring entry naming a served version renders it once, as served.
    again = RolloutState("4", retiring=(Retiring("4", 1),))
    assert [k for k in rendered("neither", again) if k[0] == "Deployment"] == [
        ("Deployment", "iris-v4")]
