"""Every pod we ship meets the Pod Security Standard "restricted": the operator pod of
the Helm chart (every value set) and of every kustomize build, and every runtime pod
`modelship render` produces for the examples (the pods the operator creates)."""

from __future__ import annotations

from typing import Any

from artifacts import EXAMPLES
from k8scheck import pod_specs, restricted_violations


def test_the_check_finds_what_restricted_forbids() -> None:
    bad = {
        "hostNetwork": True,
        "volumes": [{"name": "h", "hostPath": {"path": "/"}}],
        "containers": [{"name": "c", "securityContext": {
            "privileged": True, "capabilities": {"add": ["SYS_ADMIN"]}},
            "ports": [{"containerPort": 80, "hostPort": 80}]}],
    }
    problems = " ".join(restricted_violations(bad))
    for expected in ("hostNetwork", "hostPath", "privileged", "allowPrivilegeEscalation",
                     "drop ALL", "SYS_ADMIN", "runAsNonRoot", "seccompProfile", "hostPort"):
        assert expected in problems


def test_chart_pods_are_restricted(rendered: dict[str, list[dict[str, Any]]]) -> None:
    checked = 0
    deployments = 0
    for value_set, objects in rendered.items():
        deployments += sum(1 for o in objects if o["kind"] == "Deployment")
        for where, spec in pod_specs(objects):
            assert not restricted_violations(spec), (value_set, where,
                                                     restricted_violations(spec))
            checked += 1
    assert checked == deployments >= len(rendered)  # one operator per shard


def test_kustomize_pods_are_restricted(built: dict[str, list[dict[str, Any]]]) -> None:
    checked = 0
    for name, objects in built.items():
        for where, spec in pod_specs(objects):
            assert not restricted_violations(spec), (name, where, restricted_violations(spec))
            checked += 1
    assert checked == len(built)


def test_runtime_pods_are_restricted(examples_rendered: list[dict[str, Any]]) -> None:
    specs = list(pod_specs(examples_rendered))
    assert len(specs) >= len(EXAMPLES), "a pod template per example at least"
    for where, spec in specs:
        assert not restricted_violations(spec), (where, restricted_violations(spec))
        # The runtime writes only to its emptyDirs: a read-only root filesystem works.
        for container in spec["containers"] + spec.get("initContainers", []):
            assert container["securityContext"]["readOnlyRootFilesystem"] is True
            assert container["securityContext"]["runAsUser"] == 10001
        assert spec["automountServiceAccountToken"] is False, where
        volumes = {v["name"]: (set(v) - {"name"}).pop() for v in spec["volumes"]}
        assert volumes["models"] == volumes["tmp"] == "emptyDir", where
        others = {kind for name, kind in volumes.items() if name not in ("models", "tmp")}
        assert others <= {"secret", "configMap", "projected"}, (where, volumes)
