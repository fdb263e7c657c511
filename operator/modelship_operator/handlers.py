"""kopf handlers: thin entry points that hand the work to reconcile.

Run with ``kopf run -m modelship_operator.handlers --all-namespaces`` (or ``-n NS``).
Handlers are synchronous: kopf runs them in its thread pool, and the Kubernetes and
MLflow clients they use are blocking.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import kopf

from modelship_operator import api, metrics, reconcile, trust
from modelship_operator.k8s import KubeClient
from modelship_operator.settings import OperatorSettings

_SETTINGS = OperatorSettings()
_MANAGED = {"app.kubernetes.io/managed-by": "modelship"}


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    """Turn our settings into kopf's, and build the shared clients once."""
    ours = OperatorSettings()
    trust.redact_logs()  # no user:password@ of a URL reaches the log
    # Keep kopf's bookkeeping in annotations under our prefix, never in status or spec.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="modelship.io")
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix="modelship.io", key="last-handled-configuration"
    )
    # Our own Events say what matters; kopf's per-handler chatter stays in the log.
    settings.posting.level = logging.WARNING
    # No runtime scanning of CRDs and namespaces: fewer permissions, nothing to gain.
    settings.scanning.disabled = True
    settings.watching.server_timeout = ours.watch_timeout_seconds
    settings.watching.client_timeout = ours.watch_timeout_seconds + 30
    settings.networking.request_timeout = ours.api_timeout_seconds
    settings.peering.standalone = ours.standalone
    if not ours.standalone:
        settings.peering.name = ours.peering_name
        settings.peering.clusterwide = ours.clusterwide_peering
        settings.peering.priority = ours.peering_priority
    memo.settings = ours
    memo.client = KubeClient.from_environment(timeout=ours.api_timeout_seconds)
    memo.reconciler = reconcile.Reconciler(memo.client, ours)


@kopf.on.startup()
def serve_metrics(memo: kopf.Memo, logger: kopf.Logger, **_: Any) -> None:
    """Serve the operator's Prometheus metrics (settings metrics_address, metrics_port)."""
    ours = OperatorSettings()
    memo.metrics_server = None
    if ours.metrics_port == 0:
        logger.info("metrics: not served (metrics_port is 0)")
        return
    try:
        memo.metrics_server = metrics.METRICS.serve(ours.metrics_port, ours.metrics_address)
    except OSError as exc:
        raise kopf.PermanentError(
            f"cannot serve metrics on {ours.metrics_address}:{ours.metrics_port}: {exc}; "
            "set MODELSHIP_OPERATOR_METRICS_PORT to a free port (0 serves none)"
        ) from exc
    logger.info(f"metrics: http://{ours.metrics_address}:{ours.metrics_port}/metrics")


@kopf.on.cleanup()
def stop_metrics(memo: kopf.Memo, **_: Any) -> None:
    server = getattr(memo, "metrics_server", None)
    if server is not None:
        server.shutdown()
        server.server_close()


@kopf.on.login()
def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
    """In a pod, the ServiceAccount; elsewhere, the kubeconfig that KUBECONFIG names."""
    return kopf.login_with_service_account(**kwargs) or kopf.login_with_kubeconfig(**kwargs)


@kopf.on.resume(api.GROUP, api.VERSION, api.PLURAL)
@kopf.on.create(api.GROUP, api.VERSION, api.PLURAL)
@kopf.on.update(api.GROUP, api.VERSION, api.PLURAL, field="spec")
def reconcile_md(
    body: kopf.Body,
    patch: kopf.Patch,
    memo: kopf.Memo,
    retry: int,
    logger: kopf.Logger,
    **_: Any,
) -> None:
    """Create or update every child of a ModelDeployment; report in status."""
    memo.reconciler.run(body, patch, retry=retry, logger=logger, sweep=True)


@kopf.on.event(api.GROUP, api.VERSION, api.PLURAL)
def md_event(meta: kopf.Meta, event: kopf.RawEvent, **_: Any) -> None:
    """A deleted ModelDeployment leaves no metric series behind."""
    if event.get("type") == "DELETED":
        metrics.forget(meta.get("namespace", "default"), meta["name"])


@kopf.timer(
    api.GROUP,
    api.VERSION,
    api.PLURAL,
    interval=_SETTINGS.resync_interval_seconds,
    initial_delay=_SETTINGS.resync_interval_seconds,
    idle=_SETTINGS.resync_interval_seconds / 2,
)
def resync_md(
    body: kopf.Body, patch: kopf.Patch, memo: kopf.Memo, logger: kopf.Logger, **_: Any
) -> None:
    """Repair drift (a child edited or deleted by hand); writes nothing when none."""
    memo.reconciler.run(body, patch, retry=0, logger=logger, sweep=True)


@kopf.timer(
    api.GROUP,
    api.VERSION,
    api.PLURAL,
    interval=_SETTINGS.rollout_tick_seconds,
    when=lambda status, **_: bool(status.get("canary") or status.get("retiring")),
)
def rollout_tick(
    body: kopf.Body, patch: kopf.Patch, memo: kopf.Memo, logger: kopf.Logger, **_: Any
) -> None:
    """Drive a running canary: readiness, weights, analysis, promotion or rollback; and
    delete the Deployments traffic left once they have drained (status.retiring)."""
    memo.reconciler.run(body, patch, retry=0, logger=logger, sweep=True)


@kopf.timer(
    api.GROUP,
    api.VERSION,
    api.PLURAL,
    # Ticks often; the resolver's own schedule (jitter, backoff) decides when to ask MLflow.
    interval=min(_SETTINGS.alias_poll_seconds / 3, 5.0),
    when=lambda spec, **_: bool((spec.get("model") or {}).get("alias")),
)
def alias_poll(
    body: kopf.Body,
    meta: kopf.Meta,
    patch: kopf.Patch,
    memo: kopf.Memo,
    logger: kopf.Logger,
    **_: Any,
) -> None:
    """Follow an MLflow alias: a move starts a rollout; a registry outage changes nothing."""
    reconciler = memo.reconciler
    if reconciler.resolver.due(meta.get("namespace", "default"), meta["name"], time.time()):
        reconciler.run(body, patch, retry=0, logger=logger, sweep=True)


@kopf.on.event("apps", "v1", "deployments", labels=_MANAGED)
def deployment_event(
    body: kopf.Body, event: kopf.RawEvent, memo: kopf.Memo, logger: kopf.Logger, **_: Any
) -> None:
    """Keep the owner's status current as its Deployments' pods become ready or go away."""
    reconciler = getattr(memo, "reconciler", None)
    if reconciler is not None:
        deleted = event.get("type") == "DELETED"
        reconciler.deployment_changed(body, logger=logger, deleted=deleted)
