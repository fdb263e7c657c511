"""plan.py: a pass decided from an observation alone (no cluster, no registry, no clock)."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import pytest
from modelship_operator import plan
from modelship_operator.api import ModelDeployment
from modelship_operator.settings import OperatorSettings
from pydantic import ValidationError

SETTINGS = OperatorSettings(default_tracking_uri="http://mlflow.mlflow:5000")
NOW = 1_800_000_000.0


def make(version: str = "3", generation: int = 1, **spec: Any) -> ModelDeployment:
    return ModelDeployment.model_validate({
        "apiVersion": "modelship.io/v1alpha1", "kind": "ModelDeployment",
        "metadata": {"name": "iris", "namespace": "ml", "uid": "u-1",
                     "generation": generation},
        "spec": {"model": {"name": "iris-classifier", "version": version}, **spec},
    })


def live_of(desired: list[dict[str, Any]], ready: int) -> dict[plan.Key, dict[str, Any]]:
    """The children as the cluster would hold them: every desired one, Deployments with
    `ready` pods."""
    live = {}
    for obj in copy.deepcopy(desired):
        if obj["kind"] == "Deployment":
            obj["status"] = {"replicas": ready, "readyReplicas": ready}
        live[(obj["apiVersion"], obj["kind"], obj["metadata"]["name"])] = obj
    return live


def observe(md: ModelDeployment, current: dict[str, Any],
            live: Mapping[plan.Key, dict[str, Any]]) -> plan.Observation:
    return plan.Observation(md=md, current=current, live=live, target=md.spec.model.version
                            or "", now=NOW)


def test_a_first_pass_deploys_the_version_and_reports_it_pending() -> None:
    md = make()
    seen = observe(md, {}, {})
    planned = plan.plan(seen, SETTINGS)
    assert planned.stall is None
    kinds = {(o["kind"], o["metadata"]["name"]) for o in planned.desired}
    assert ("Deployment", "iris-v3") in kinds and ("Service", "iris") in kinds
    desired, events = plan.report(seen, planned, plan.Acted(changed="created Deployment/iris-v3"))
    assert desired["stable"] == {"version": "3", "replicas": 0, "readyReplicas": 0}
    assert desired["phase"] != "Ready" and desired["observedGeneration"] == 1
    assert ("Reconciled", "created Deployment/iris-v3", False) in events
    assert not any(reason == "Ready" for reason, _, _ in events)


def test_the_same_observation_gives_the_same_plan() -> None:
    md = make()
    seen = observe(md, {}, {})
    first, second = plan.plan(seen, SETTINGS), plan.plan(seen, SETTINGS)
    assert first.desired == second.desired and first.step == second.step


def test_ready_pods_make_it_ready_once_with_one_event() -> None:
    md = make()
    first = observe(md, {}, {})
    planned = plan.plan(first, SETTINGS)
    before, _ = plan.report(first, planned, plan.Acted())
    seen = observe(md, before, live_of(planned.desired, ready=md.spec.replicas))
    desired, events = plan.report(seen, plan.plan(seen, SETTINGS), plan.Acted())
    assert desired["phase"] == "Ready"
    assert [e for e in events if e[0] == "Ready"] == [("Ready", "serving version 3", False)]
    # Once reported, the same observation plans no change and no Event.
    again = observe(md, desired, seen.live)
    after, events = plan.report(again, plan.plan(again, SETTINGS), plan.Acted())
    assert {k: v for k, v in after.items() if v != desired.get(k)} == {}
    assert events == []


def test_a_new_version_starts_a_canary_beside_the_stable() -> None:
    md = make()
    seen = observe(md, {}, {})
    planned = plan.plan(seen, SETTINGS)
    serving, _ = plan.report(seen, planned, plan.Acted())
    live = live_of(planned.desired, ready=md.spec.replicas)
    serving, _ = plan.report(observe(md, serving, live),
                             plan.plan(observe(md, serving, live), SETTINGS), plan.Acted())
    newer = make(version="4", generation=2)
    seen = observe(newer, serving, live)
    planned = plan.plan(seen, SETTINGS)
    names = {o["metadata"]["name"] for o in planned.desired if o["kind"] == "Deployment"}
    assert names == {"iris-v3", "iris-v4"}
    desired, events = plan.report(seen, planned, plan.Acted())
    assert desired["stable"]["version"] == "3"
    assert desired["canary"]["version"] == "4" and desired["canary"]["weight"] == 0
    assert any(reason == "CanaryStarted" for reason, _, _ in events)


def test_status_goes_through_the_typed_model() -> None:
    # What the CRD (generated from the same model) would prune is never written, so a
    # pass does not write it again and again; a value of the wrong type or outside an
    # enum is refused before it is sent.
    assert plan.typed({"phase": "Ready", "canary": None}) == {
        "phase": "Ready", "canary": None, "conditions": []}
    assert plan.typed({"stable": {"version": "3", "replicaCount": 2}})["stable"] == {
        "version": "3", "replicas": 0, "readyReplicas": 0}
    with pytest.raises(ValidationError):
        plan.typed({"phase": "Sleeping"})
    with pytest.raises(ValidationError):
        plan.typed({"stable": {"version": "3", "replicas": "2"}})
