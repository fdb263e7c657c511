"""Operator settings, read once from the environment (prefix ``MODELSHIP_OPERATOR_``).

The Helm chart and kustomize base set these as plain env entries on the operator pod.
Everything a ModelDeployment may leave out (runtime image, tracking server, resources)
has its default here, so a cluster's platform engineer sets it once.
"""

from __future__ import annotations

import ipaddress
import json
import secrets
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlsplit

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

_SA_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


def _default_resources() -> dict[str, Any]:
    return {"requests": {"cpu": "100m", "memory": "256Mi"}, "limits": {"memory": "512Mi"}}


class OperatorSettings(BaseSettings):
    """Settings of the operator process."""

    model_config = SettingsConfigDict(env_prefix="MODELSHIP_OPERATOR_", extra="ignore")

    runtime_image: str = "ghcr.io/modelship/modelship-runtime:0.1.0"
    """Runtime image for ModelDeployments that set no spec.runtime.image."""

    default_tracking_uri: str | None = None
    """MLflow tracking URI used when spec.model.registry.trackingUri is unset. Unset (or
    empty) here too: such a ModelDeployment is Stalled with a message naming the field.
    No user or password in it (they would be rendered into every namespace's pods): the
    operator refuses to start with one."""

    allowed_tracking_hosts: Annotated[list[str], NoDecode] = Field(default_factory=list)
    """Hosts a ModelDeployment's tracking URI may name (the operator reads the Secret
    spec.model.registry.credentialsSecret names and sends it there; the pods pull from
    there): patterns of host names or IP addresses, ``*`` matching any run of characters,
    optionally with ``:PORT``; a comma-separated list or a JSON array. Empty (the default):
    only the host of default_tracking_uri. ``*`` alone trusts every host (any namespace's
    author can then make the operator send that namespace's Secrets anywhere)."""

    runtime_allow_pickle: bool | None = None
    """MODELSHIP_ALLOW_PICKLE of every runtime pod: false refuses pickled (joblib) models
    cluster-wide, and spec.runtime.allowPickle true is then refused; true or unset lets a
    ModelDeployment choose (unset and not chosen: the runtime's own default)."""

    runtime_model_storage_limit: str = Field(
        default="2Gi", pattern=r"^[0-9]+(\.[0-9]+)?([KMGTPE]i|[kMGTPE])?$"
    )
    """sizeLimit of the runtime pods' emptyDirs (/models, where the model is pulled, and
    /tmp) when spec.runtime.modelStorage.sizeLimit is unset; a pod that writes more is
    evicted by the kubelet instead of filling the node's disk."""

    namespace: str = Field(default="", validate_default=True)
    """The operator's own namespace (the chart sets it from the pod's): runtime pods admit
    it on their port (analysis scrapes, smoke tests). Empty: the service account's
    namespace file, when the operator runs in a pod."""

    network_policy_namespaces: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["ingress-nginx", "monitoring"]
    )
    """Namespaces (by name) whose pods may reach every runtime pod's port, besides the
    operator's own: the ingress controller's or Gateway data plane's, and Prometheus'.
    A ModelDeployment adds more with spec.networkPolicy.allowFrom."""

    network_policy_egress_cidrs: Annotated[list[str], NoDecode] = Field(default_factory=list)
    """Where runtime pods may open connections to the registry, Redis and
    network_policy_egress_ports (ipBlock CIDRs, e.g. 10.0.0.0/8). Empty: any address, on
    those ports only (a NetworkPolicy cannot name a host)."""

    network_policy_egress_ports: Annotated[list[int], NoDecode] = Field(default_factory=list)
    """More TCP ports runtime pods may connect to, e.g. an artifact store the tracking
    server does not proxy (S3 443, MinIO 9000)."""

    network_policy_redis_ports: Annotated[list[int], NoDecode] = Field(
        default_factory=lambda: [6379]
    )
    """TCP ports of Redis (spec.cache), which runtime pods may connect to."""

    field_manager: str = "modelship-operator"
    """Server-side apply field manager of every write the operator makes."""

    runtime_port: int = Field(default=8080, ge=1, le=65535)
    """Port the runtime container listens on (named ``http``)."""

    runtime_grpc_port: int = Field(default=8081, ge=0, le=65535)
    """Port of the runtime's Open Inference Protocol V2 gRPC server (container and
    Service port named ``grpc``; the Service exposes it as 8081). 0: no gRPC."""

    runtime_grpc_reflection: bool = True
    """Whether the runtimes serve gRPC Server Reflection on their gRPC port (grpcurl
    ``list`` and ``describe``, behind the API keys as ModelMetadata is). false: the
    runtime pods get ``MODELSHIP_GRPC_REFLECTION=false`` (true sets nothing, so pods
    rendered before this setting existed are not restarted)."""

    default_resources: dict[str, Any] = Field(default_factory=_default_resources)
    """Container resources for ModelDeployments that set no spec.runtime.resources
    (JSON in the environment, e.g. '{"requests": {"cpu": "250m"}}')."""

    runtime_user_id: int = Field(default=10001, ge=1)
    """Non-root UID (and GID, fsGroup) the runtime pods run as."""

    runtime_prestop_seconds: int = Field(default=5, ge=0, le=600)
    """preStop pause of every runtime container: the kubelet waits this long before it
    sends SIGTERM, while the pod's removal from Service endpoints reaches kube-proxy,
    ingress controllers and gateways (an exec of ``python3 -c`` that sleeps, which every
    runtime image has, unlike the ``sleep`` action older clusters lack). 0: no hook."""

    runtime_drain_seconds: int = Field(default=5, ge=0, le=600)
    """MODELSHIP_DRAIN_SECONDS of every runtime container: after SIGTERM it fails
    readiness and keeps answering this long, then stops accepting. 0: no drain."""

    runtime_shutdown_timeout_seconds: int = Field(default=30, ge=1, le=3600)
    """MODELSHIP_SHUTDOWN_TIMEOUT_SECONDS of every runtime container: after the drain,
    the longest wait for requests in flight. The pods' terminationGracePeriodSeconds is
    preStop + drain + this + 5 seconds, so the kubelet never kills a draining pod."""

    retire_after_seconds: float = Field(default=10.0, ge=0)
    """How long a model version's Deployment outlives the pass that moved traffic off it
    (promotion retargets Service NAME from the old version; rollback or abort sets the
    canary's weight to 0): routers learn of that change a few seconds later and keep
    sending requests meanwhile. The canary Service and Ingress (or HTTPRoute backend)
    stay too, at weight 0. 0: delete in the same pass."""

    resync_interval_seconds: float = Field(default=300.0, gt=0)
    """How often a ModelDeployment that nothing changed gets a safety pass. Watches wake
    a pass as soon as the object or one of its children changes; this one reads only the
    watch-fed caches, so it costs no API request when there is nothing to repair."""

    workers: int = Field(default=8, ge=1, le=256)
    """Passes run at most this many at a time (each in a thread: the clients block)."""

    alias_poll_seconds: float = Field(default=30.0, gt=0)
    """How often a followed MLflow alias is resolved again (±10% jitter; a failed try is
    retried after 1, 2, 4, ... seconds, at most this long)."""

    verify_model_versions: bool = True
    """Check in the registry that a version exists, is READY and has its artifacts before
    any rollout to it. Off only where the operator cannot reach the registry."""

    rollout_tick_seconds: float = Field(default=5.0, gt=0)
    """How often a running canary is re-examined (readiness, step interval, analysis)."""

    stalled_retry_seconds: float = Field(default=300.0, gt=0)
    """Delay before a pass that failed for a reason a retry is unlikely to fix is retried."""

    watch_timeout_seconds: int = Field(default=300, ge=1)
    """Server-side timeout of kopf's watch requests (the client waits 30 s longer)."""

    api_timeout_seconds: float = Field(default=30.0, gt=0)
    """Timeout of one Kubernetes API request."""

    registry_timeout_seconds: float = Field(default=10.0, gt=0)
    """Timeout of one MLflow REST request (alias resolution, version checks)."""

    metrics_port: int = Field(default=8080, ge=0, le=65535)
    """Port of the operator's Prometheus metrics (/metrics over HTTP); 0 serves none.
    The chart and kustomize base name this container port ``metrics``."""

    metrics_address: str = "0.0.0.0"
    """Address the metrics endpoint listens on ("::" for every IPv6 and IPv4 address)."""

    webhook_allowed_hosts: Annotated[list[str], NoDecode] = Field(default_factory=list)
    """Hosts spec.rollout.webhooks URLs may name: patterns of host names or IP addresses,
    ``*`` matching any run of characters (e.g. ``*.ml-tools.svc.cluster.local``,
    ``hooks.example.com``), compared case-insensitively with the URL's host; a comma-
    separated list or a JSON array in the environment. Empty (the default): any host.
    A webhook URL is written by whoever may edit ModelDeployments in a namespace, and the
    operator POSTs to it from inside the cluster with its own network reach: to cloud
    metadata endpoints (169.254.169.254), the API server, or services no NetworkPolicy
    lets that namespace reach (server-side request forgery). Set this on any cluster
    whose namespaces are not all equally trusted. Redirects are never followed."""

    @model_validator(mode="after")
    def _distinct_ports(self) -> OperatorSettings:
        if self.runtime_grpc_port == self.runtime_port:
            raise ValueError(f"runtime_grpc_port {self.runtime_grpc_port} is runtime_port; "
                             "give gRPC another port (0: none)")
        return self

    @field_validator(
        "webhook_allowed_hosts", "allowed_tracking_hosts", "network_policy_namespaces",
        "network_policy_egress_cidrs", "network_policy_egress_ports",
        "network_policy_redis_ports", mode="before",
    )
    @classmethod
    def _host_list(cls, value: Any) -> Any:
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                return json.loads(text)
            return [part.strip() for part in text.split(",") if part.strip()]
        return value

    @field_validator("network_policy_egress_ports", "network_policy_redis_ports")
    @classmethod
    def _ports(cls, ports: list[int]) -> list[int]:
        bad = [p for p in ports if not 1 <= p <= 65535]
        if bad:
            raise ValueError(f"not TCP ports: {bad}")
        return ports

    @field_validator("network_policy_egress_cidrs")
    @classmethod
    def _cidrs(cls, cidrs: list[str]) -> list[str]:
        for cidr in cidrs:
            ipaddress.ip_network(cidr, strict=False)  # ValueError names the bad one
        return cidrs

    @field_validator("default_tracking_uri")
    @classmethod
    def _no_userinfo(cls, uri: str | None) -> str | None:
        if uri and urlsplit(uri.strip()).username is not None:
            raise ValueError("no user or password in the default tracking URI: every "
                             "namespace's pods would get them; give each ModelDeployment "
                             "a credentialsSecret")
        return uri

    @field_validator("namespace")
    @classmethod
    def _own_namespace(cls, namespace: str) -> str:
        if not namespace and _SA_NAMESPACE.is_file():
            return _SA_NAMESPACE.read_text().strip()
        return namespace

    standalone: bool = True
    """Run without kopf peering (one operator replica). False: peer through KopfPeering."""

    peering_name: str = "modelship"
    """kopf peering object name, when not standalone."""

    clusterwide_peering: bool = True
    """Use ClusterKopfPeering (True) or a namespaced KopfPeering (False)."""

    peering_priority: int = Field(default_factory=lambda: secrets.randbelow(2**31 - 1) + 1,
                                  ge=0)
    """kopf peering priority of this process, when not standalone: of the replicas in one
    peering object, the one with the highest acts and the others stand by. kopf pauses
    every operator that sees a peer of its own priority (all of them, when all have the
    same), so each process draws its own by default (1 to 2^31-1); set it to make one
    replica the preferred one."""
