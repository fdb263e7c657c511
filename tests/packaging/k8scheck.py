"""Shared checks for what we ship: strict schema validation, the CRD kinds that have no
schema in kubernetes-validate, and the Pod Security Standard "restricted".

kubernetes-validate only knows built-in kinds; for PodMonitor, ServiceMonitor,
PrometheusRule, ClusterKopfPeering and KopfPeering it raises SchemaNotFoundError. Those
are checked here structurally: metadata against Kubernetes' own strict ObjectMeta schema,
and the fields we set against a transcription (pydantic, extra fields forbidden) of the
prometheus-operator v1 CRDs' fields we use.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterator
from typing import Any, Literal

import jsonschema
import kubernetes_validate
import kubernetes_validate.utils
from pydantic import BaseModel, ConfigDict, Field
from referencing import Registry, Resource

K8S_VERSIONS = ("1.29", "1.37")

_schema_contents = functools.lru_cache(maxsize=None)(kubernetes_validate.utils.schema_contents)


def cache_schemas(monkeypatch: Any) -> None:
    """Parse each schema file once (kubernetes-validate re-reads 2 MB per call)."""
    monkeypatch.setattr(kubernetes_validate.utils, "schema_contents", _schema_contents)


@functools.cache
def _object_meta(version: str) -> jsonschema.Draft202012Validator:
    defs = _schema_contents(
        f"kubernetes-json-schema/v{version}.0-local-strict/_definitions.json", version
    )
    registry: Registry = Resource.from_contents(defs) @ Registry()
    schema = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$ref": "https://kubernetes.io/api/_definitions.json"
        "#/$defs/io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta",
    }
    return jsonschema.Draft202012Validator(schema, registry=registry)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, populate_by_name=True)


_DURATION = (
    r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$"
)
_LABEL_NAME = r"^[a-zA-Z_][a-zA-Z0-9_]*$"


class _Relabel(_Strict):
    sourceLabels: list[str] = Field(default_factory=list)
    targetLabel: str = Field(pattern=_LABEL_NAME)
    action: Literal["replace", "keep", "drop", "labelmap"] = "replace"


class _Endpoint(_Strict):
    port: str
    path: str = Field(default="/metrics", pattern="^/")
    interval: str = Field(default="30s", pattern=_DURATION)
    honorLabels: bool = False
    relabelings: list[_Relabel] = Field(default_factory=list)


class _NamespaceSelector(_Strict):
    any: bool | None = None
    matchNames: list[str] | None = None


class _Selector(_Strict):
    matchLabels: dict[str, str]


class _PodMonitorSpec(_Strict):
    namespaceSelector: _NamespaceSelector | None = None  # none: the monitor's namespace
    selector: _Selector
    podMetricsEndpoints: list[_Endpoint] = Field(min_length=1)


class _ServiceMonitorSpec(_Strict):
    namespaceSelector: _NamespaceSelector
    selector: _Selector
    endpoints: list[_Endpoint] = Field(min_length=1)


class _Rule(_Strict):
    alert: str = Field(pattern=_LABEL_NAME)
    expr: str = Field(min_length=1)
    for_: str = Field(default="0s", alias="for", pattern=_DURATION)
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)


class _RuleGroup(_Strict):
    name: str = Field(min_length=1)
    rules: list[_Rule] = Field(min_length=1)


class _PrometheusRuleSpec(_Strict):
    groups: list[_RuleGroup] = Field(min_length=1)


_CUSTOM = {
    ("monitoring.coreos.com/v1", "PodMonitor"): _PodMonitorSpec,
    ("monitoring.coreos.com/v1", "ServiceMonitor"): _ServiceMonitorSpec,
    ("monitoring.coreos.com/v1", "PrometheusRule"): _PrometheusRuleSpec,
    ("kopf.dev/v1", "ClusterKopfPeering"): None,
    ("kopf.dev/v1", "KopfPeering"): None,
}

_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


def validate(obj: dict[str, Any]) -> str:
    """Validate one object strictly; returns "schema" or "structural" (how it was checked).

    Raises AssertionError (or kubernetes_validate.ValidationError) naming the problem.
    """
    key = (obj.get("apiVersion"), obj.get("kind"))
    if key in _CUSTOM:
        for version in K8S_VERSIONS:
            errors = sorted(_object_meta(version).iter_errors(obj["metadata"]), key=str)
            assert not errors, f"{key} metadata: {errors[0].message}"
        name = obj["metadata"]["name"]
        assert len(name) <= 253 and _DNS_SUBDOMAIN.match(name), name
        model = _CUSTOM[key]
        if model is None:
            assert set(obj) <= {"apiVersion", "kind", "metadata", "status"}, sorted(obj)
        else:
            assert set(obj) == {"apiVersion", "kind", "metadata", "spec"}, sorted(obj)
            model.model_validate(obj["spec"])
        return "structural"
    for version in K8S_VERSIONS:
        kubernetes_validate.validate(obj, version, strict=True)
    return "schema"


# --- Pod Security Standard "restricted"
# (kubernetes.io/docs/concepts/security/pod-security-standards, the "Restricted" table)

_RESTRICTED_VOLUMES = {
    "configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim",
    "projected", "secret",
}
_SAFE_SYSCTLS = {
    "kernel.shm_rmid_forced", "net.ipv4.ip_local_port_range", "net.ipv4.ip_unprivileged_port_start",
    "net.ipv4.tcp_syncookies", "net.ipv4.ping_group_range", "net.ipv4.ip_local_reserved_ports",
    "net.ipv4.tcp_keepalive_time", "net.ipv4.tcp_fin_timeout", "net.ipv4.tcp_keepalive_intvl",
    "net.ipv4.tcp_keepalive_probes",
}


def pod_specs(objects: list[dict[str, Any]]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(kind/name, pod spec) of every Pod, and every pod template of a workload."""
    for obj in objects:
        kind, name = obj.get("kind"), obj.get("metadata", {}).get("name")
        if kind == "Pod":
            yield f"{kind}/{name}", obj["spec"]
        elif kind in ("Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"):
            yield f"{kind}/{name}", obj["spec"]["template"]["spec"]
        elif kind == "CronJob":
            yield f"{kind}/{name}", obj["spec"]["jobTemplate"]["spec"]["template"]["spec"]


def restricted_violations(spec: dict[str, Any]) -> list[str]:
    """What keeps a pod spec from the "restricted" Pod Security Standard (empty: none)."""
    problems: list[str] = []
    pod_sc = spec.get("securityContext", {})
    for field in ("hostNetwork", "hostPID", "hostIPC"):
        if spec.get(field):
            problems.append(f"{field} is true")
    if "hostUsers" in spec and spec["hostUsers"] is not False and spec["hostUsers"] is not None:
        pass  # hostUsers: true is the default and allowed
    for volume in spec.get("volumes", []):
        types = set(volume) - {"name"}
        if not types <= _RESTRICTED_VOLUMES:
            problems.append(f"volume {volume['name']} has type {sorted(types)}")
    for sysctl in pod_sc.get("sysctls", []):
        if sysctl["name"] not in _SAFE_SYSCTLS:
            problems.append(f"unsafe sysctl {sysctl['name']}")
    if pod_sc.get("runAsUser") == 0:
        problems.append("pod runAsUser 0")
    containers = (
        spec.get("containers", []) + spec.get("initContainers", [])
        + spec.get("ephemeralContainers", [])
    )
    for container in containers:
        name = container["name"]
        sc = container.get("securityContext", {})
        if sc.get("privileged"):
            problems.append(f"{name}: privileged")
        if sc.get("allowPrivilegeEscalation") is not False:
            problems.append(f"{name}: allowPrivilegeEscalation is not false")
        caps = sc.get("capabilities", {})
        if "ALL" not in caps.get("drop", []):
            problems.append(f"{name}: capabilities do not drop ALL")
        if set(caps.get("add", [])) - {"NET_BIND_SERVICE"}:
            problems.append(f"{name}: adds capabilities {caps['add']}")
        run_as_non_root = sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot"))
        if run_as_non_root is not True:
            problems.append(f"{name}: runAsNonRoot is not true")
        if sc.get("runAsUser") == 0:
            problems.append(f"{name}: runAsUser 0")
        seccomp = sc.get("seccompProfile", pod_sc.get("seccompProfile", {})).get("type")
        if seccomp not in ("RuntimeDefault", "Localhost"):
            problems.append(f"{name}: seccompProfile is {seccomp!r}")
        if sc.get("procMount", "Default") != "Default":
            problems.append(f"{name}: procMount {sc['procMount']}")
        for port in container.get("ports", []):
            if port.get("hostPort"):
                problems.append(f"{name}: hostPort {port['hostPort']}")
        selinux = sc.get("seLinuxOptions", pod_sc.get("seLinuxOptions", {}))
        if selinux.get("user") or selinux.get("role"):
            problems.append(f"{name}: seLinuxOptions user/role set")
        if selinux.get("type") not in (None, "", "container_t", "container_init_t",
                                       "container_kvm_t", "container_engine_t"):
            problems.append(f"{name}: seLinuxOptions type {selinux['type']}")
    return problems
