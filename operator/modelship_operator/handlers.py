"""kopf handlers: thin entry points that hand the work to the per-object loop.

Run with ``kopf run -m modelship_operator.handlers --all-namespaces`` (or ``-n NS``).

- One kopf index per child kind (fed by its watch) holds the children of every
  ModelDeployment (cache.py); a change to a child wakes its owner's loop.
- One async daemon per ModelDeployment runs that object's loop (loop.py): every pass of
  it, one at a time, in a thread of the operator's own pool (the Kubernetes and MLflow
  clients block), and every write it makes.
- A change to the ModelDeployment itself wakes its loop too.
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import kopf

from modelship_operator import api, cache, loop, metrics, reconcile, trust
from modelship_operator.k8s import KubeClient, kind_of
from modelship_operator.render import desired_kinds
from modelship_operator.settings import OperatorSettings

_SETTINGS = OperatorSettings()


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
    memo.wakers = loop.Wakers()
    memo.child_digests = {}  # uid -> digest of what a pass reads of that child
    # Passes run here, at most `workers` at a time (the clients they use block).
    memo.executor = ThreadPoolExecutor(max_workers=ours.workers,
                                       thread_name_prefix="modelship-pass")
    memo.pass_slots = asyncio.Semaphore(ours.workers)


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
def stop(memo: kopf.Memo, **_: Any) -> None:
    executor = getattr(memo, "executor", None)
    if executor is not None:
        executor.shutdown(wait=False, cancel_futures=True)
    server = getattr(memo, "metrics_server", None)
    if server is not None:
        server.shutdown()
        server.server_close()


@kopf.on.login()
def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
    """In a pod, the ServiceAccount; elsewhere, the kubeconfig that KUBECONFIG names."""
    return kopf.login_with_service_account(**kwargs) or kopf.login_with_kubeconfig(**kwargs)


def _child_selector(api_version: str, kind: str) -> tuple[str, ...]:
    where = kind_of(api_version, kind)
    if not where.group:
        return (where.version, where.plural)
    return (where.group, where.version, where.plural)


def _register_child_kind(api_version: str, kind: str) -> str:
    """A kopf index of one child kind, and a watcher that wakes the owner's loop."""
    where = kind_of(api_version, kind)
    index_id = f"children_{where.plural}"
    selector = _child_selector(api_version, kind)

    async def index(body: kopf.Body, meta: kopf.Meta, **_: Any) -> dict[Any, Any] | None:
        key = cache.index_key(meta)
        return None if key is None else {key: cache.pack(cache.trim(body, api_version, kind))}

    async def changed(
        body: kopf.Body, meta: kopf.Meta, event: kopf.RawEvent, memo: kopf.Memo, **_: Any
    ) -> None:
        owner = cache.owner_name(meta)
        wakers, seen = getattr(memo, "wakers", None), getattr(memo, "child_digests", None)
        if not owner or wakers is None or seen is None:
            return
        namespace, uid = str(meta.get("namespace") or "default"), str(meta.get("uid"))
        if event.get("type") == "DELETED":
            seen.pop(uid, None)
            wakers.child_deleted(namespace, owner, (api_version, kind, str(meta["name"])))
            return
        # Only a change a pass can see wakes it (not an HPA's metrics, say).
        digest = cache.digest(cache.trim(body, api_version, kind))
        if seen.get(uid) != digest:
            seen[uid] = digest
            wakers.wake(namespace, owner)

    index.__name__ = index.__qualname__ = index_id
    changed.__name__ = changed.__qualname__ = f"{where.plural}_changed"
    kopf.index(*selector, labels=cache.MANAGED, id=index_id)(index)
    kopf.on.event(*selector, labels=cache.MANAGED, id=f"{where.plural}_changed")(changed)
    return index_id


CHILD_INDEXES = tuple(_register_child_kind(av, k) for av, k in desired_kinds())
"""The ids (and handler keyword names) of the children's indexes."""


@kopf.daemon(
    api.GROUP,
    api.VERSION,
    api.PLURAL,
    # A stop (the object deleted, the operator exiting) sets `stopped` and lets a pass
    # under way finish (the loop then returns) before kopf would cancel the task.
    cancellation_backoff=max(_SETTINGS.api_timeout_seconds, 10.0) + 5.0,
    cancellation_timeout=5.0,
)
async def reconcile_md(
    body: kopf.Body,
    memo: kopf.Memo,
    logger: kopf.Logger,
    stopped: kopf.DaemonStopped,
    **kwargs: Any,
) -> None:
    """The ModelDeployment's own loop: every pass of it, and every write it makes."""
    await loop.run(
        body=body,
        reconciler=memo.reconciler,
        wakers=memo.wakers,
        executor=memo.executor,
        indexes=[kwargs[index_id] for index_id in CHILD_INDEXES],
        stopped=stopped,
        logger=logger,
        slots=memo.pass_slots,
    )


@kopf.on.event(api.GROUP, api.VERSION, api.PLURAL)
async def md_event(meta: kopf.Meta, event: kopf.RawEvent, memo: kopf.Memo, **_: Any) -> None:
    """Any change of a ModelDeployment wakes its loop; a deleted one leaves no metric
    series behind."""
    namespace, name = str(meta.get("namespace") or "default"), str(meta["name"])
    if event.get("type") == "DELETED":
        metrics.forget(namespace, name)
        reconciler = getattr(memo, "reconciler", None)
        if reconciler is not None:
            reconciler.resolver.forget(namespace, name)
        return
    wakers = getattr(memo, "wakers", None)
    if wakers is not None:
        wakers.wake(namespace, name)
