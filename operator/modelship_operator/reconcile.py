"""One reconcile pass of a ModelDeployment: validate, resolve, render, apply, report.

Order matters for "nothing half-way": the spec is parsed and every child rendered
before the first write, so a spec the operator cannot honour changes nothing and gets
Stalled=True with a message naming the field. Such a spec is not retried: it waits for
the next change of the spec. Transient API or registry errors are retried by kopf with
a growing delay (`kopf.TemporaryError`).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import kopf
from pydantic import ValidationError

from modelship_operator import (
    api,
    events,
    metrics,
    naming,
    plan,
    shadow_secret,
    smoke,
    status,
    trust,
    webhooks,
)
from modelship_operator.apply import sync_children
from modelship_operator.k8s import ApiError, KubeClient, kind_of
from modelship_operator.lru import LRU
from modelship_operator.reconcilers import shadowtoken
from modelship_operator.registry import Credentials, Registry, RegistryError
from modelship_operator.render import (
    desired_kinds,
    owner_reference,
)
from modelship_operator.resolve import MODEL_RESOLVED, Resolution, Resolver
from modelship_operator.rollout import driver
from modelship_operator.rollout.gates import Outcome
from modelship_operator.rollout.providers import AnalysisError, endpoints
from modelship_operator.rollout.state import RolloutState as RolloutStateMachine
from modelship_operator.rollout.state import (
    Step,
    Verdict,
    analysis_due,
    deadline_at,
    smoke_due,
)
from modelship_operator.settings import OperatorSettings

MD_KIND = kind_of(api.API_VERSION, api.KIND)
SECRET_KIND = kind_of("v1", "Secret")


def backoff(retry: int, base: float = 1.0, cap: float = 60.0) -> float:
    """Delay before retry number `retry` (0-based): 1, 2, 4, ... seconds, at most `cap`."""
    return float(min(cap, base * (2 ** min(retry, 16))))


def field_path(error: ValidationError, prefix: str = "") -> str:
    """The wire path of the first problem in a pydantic error, e.g. spec.autoscaling.minReplicas."""
    first = error.errors()[0]
    parts = [str(p) for p in first.get("loc", ()) if not str(p).startswith("function-after")]
    return ".".join([prefix, *parts]).strip(".") if parts else prefix


def validation_message(error: ValidationError) -> str:
    first = error.errors()[0]
    path = field_path(error)
    message = str(first.get("msg", "invalid"))
    message = message.removeprefix("Value error, ")
    return f"{path}: {message}" if path and not message.startswith("spec.") else message


@dataclass
class StatusChanges:
    """The status fields a pass changes (a JSON merge patch: None removes a field)."""

    status: dict[str, Any] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.status)


@dataclass
class PassResult:
    """What one pass wrote, for the per-object loop (cache.Overlay) and its next wait."""

    written: dict[str, Any] | None = None
    """The ModelDeployment as the status patch left it (None: no status written)."""
    applied: dict[tuple[str, str, str], dict[str, Any]] = field(default_factory=dict)
    deleted: list[tuple[str, str, str]] = field(default_factory=list)
    live: dict[tuple[str, str, str], dict[str, Any]] = field(default_factory=dict)
    """The children the pass started from (what the caches held, with its own writes)."""
    retry_in: float | None = None
    unwritten: dict[str, Any] | None = None
    """Status changes decided but not written (the API refused the patch)."""
    """Seconds until the pass should run again because this one could not finish."""


class Reconciler:
    """Holds the shared clients and caches; runs one pass of one ModelDeployment.

    Passes of one ModelDeployment never overlap: each has its own loop (loop.py) that
    runs them one after another. So nothing here locks.
    """

    def __init__(self, client: KubeClient, settings: OperatorSettings) -> None:
        self.client = client
        self.settings = settings
        self.analyst = driver.Analyst(client)
        self.resolver = Resolver(settings.alias_poll_seconds, settings.verify_model_versions)
        # When each shadow token Secret was last seen to exist (a quiet pass reads nothing).
        self._tokens: LRU[tuple[str, str, str], float] = LRU(200_000)

    # -- the pass ---------------------------------------------------------------------

    def run(
        self,
        body: Mapping[str, Any],
        live: Mapping[tuple[str, str, str], dict[str, Any]],
        *,
        retry: int,
        logger: Any,
    ) -> PassResult:
        """Observe (body and `live`, from the caches), decide, act: apply the children
        that differ, then write status once. Never raises: a pass that cannot finish
        says when to try again (`retry_in`)."""
        result = PassResult(live=dict(live))
        changes = StatusChanges()
        try:
            with metrics.reconcile_duration.time():
                self._run(body, changes, result, retry=retry, logger=logger)
        except kopf.TemporaryError as exc:  # counted by reason where raised
            result.retry_in = float(exc.delay) if exc.delay is not None else backoff(retry)
        except Exception as exc:
            metrics.record_reconcile_error("Unexpected")
            logger.exception(f"pass failed, retrying: {exc}")
            result.retry_in = backoff(retry)
        if changes:
            self.write_status(body, changes.status, result, logger)
        return result

    def write_status(
        self, body: Mapping[str, Any], changes: dict[str, Any], result: PassResult, logger: Any
    ) -> None:
        """The pass's one status write: a merge patch of what it decided.

        No resourceVersion precondition: the status records what the pass did (children
        applied, Events posted), which stays true whatever changed meanwhile; a changed
        spec wakes the loop for a pass of its own, which starts from this status. When
        the write fails, the loop keeps `changes` (result.unwritten) and writes them
        before any new pass, so no decision is taken twice.
        """
        meta = body.get("metadata", {})
        try:
            result.written = self.client.patch_status(
                MD_KIND, meta.get("namespace"), meta["name"], changes
            )
            result.unwritten = None
        except ApiError as exc:
            if exc.not_found:
                result.unwritten = None
                return  # deleted meanwhile
            metrics.record_reconcile_error("TransientApiError" if exc.transient else "ApiError")
            logger.warning(f"cannot write status, will write it before the next pass: {exc}")
            result.unwritten = changes
            result.retry_in = min(result.retry_in or 60.0, backoff(1))

    def _run(
        self,
        body: Mapping[str, Any],
        patch: StatusChanges,
        result: PassResult,
        *,
        retry: int,
        logger: Any,
    ) -> None:
        meta = body.get("metadata", {})
        generation = meta.get("generation")
        current = dict(body.get("status") or {})
        try:
            md = api.ModelDeployment.from_body(body)  # a plain copy (loop.py made it)
        except ValidationError as exc:
            self.resolver.forget(meta.get("namespace", "default"), meta["name"])
            self._stall(body, patch, current, "InvalidSpec", validation_message(exc), generation)
            return
        untrusted = trust.registry_problem(md, self.settings)
        if untrusted is not None:
            self.resolver.forget(md.metadata.namespace, md.metadata.name)
            # Before any Secret is read, any registry called or any child rendered.
            logger.warning(untrusted)
            self._stall(
                body, patch, current, trust.HOST_NOT_ALLOWED, untrusted, generation,
                extra=[status.condition(
                    MODEL_RESOLVED, False, trust.HOST_NOT_ALLOWED, untrusted, generation
                )],
            )
            return

        registry = self._registry_factory(md)
        resolution = self.resolver.resolve(
            md,
            current,
            registry,
            time.time(),
            force=generation != current.get("observedGeneration"),
        )
        if resolution.target is None:
            self._registry_problem(body, patch, current, resolution, generation, retry)
            return

        try:
            self._converge(
                body, patch, current, md, resolution.target, logger,
                extra_conditions=resolution.conditions, registry=registry,
                resolved=resolution.wanted, result=result,
            )
        except ApiError as exc:
            if exc.transient:
                logger.warning(f"transient API error, retrying: {exc}")
                metrics.record_reconcile_error("TransientApiError")
                raise kopf.TemporaryError(str(exc), delay=backoff(retry)) from exc
            self._stall(body, patch, current, "ApiError", str(exc), generation)
            raise kopf.TemporaryError(str(exc), delay=self.settings.stalled_retry_seconds) from exc

    def _converge(
        self,
        body: Mapping[str, Any],
        patch: StatusChanges,
        current: Mapping[str, Any],
        md: api.ModelDeployment,
        target: str,
        logger: Any,
        *,
        extra_conditions: list[dict[str, Any]] | None = None,
        registry: Callable[[], Registry] | None = None,
        resolved: str | None = None,
        result: PassResult,
    ) -> None:
        """Observe what the rollout needs, plan, act, report."""
        namespace, name = md.metadata.namespace, md.metadata.name
        live = result.live
        now = time.time()

        # Observe: the readings the rollout asks for at this point of it.
        before, observed = plan.rollout_inputs(md, current, live, now)
        verdict, analysis, counters, smoked = None, None, None, None
        current_canary = current.get("canary") or {}
        if before.canary is not None and analysis_due(before, md.spec.rollout, now):
            verdict, analysis, counters = self.analyst.verdict(md, before, current_canary, now)
            verdict = self._confirmed(md, before, verdict, registry=registry)
        if (
            observed.canary_ready and before.canary is not None
            and before.canary.version == target and smoke_due(before, md.spec.rollout)
        ):
            smoked = self._smoke(md, before, registry)
        seen = plan.Observation(
            md=md, current=current, live=live, target=target, now=now, resolved=resolved,
            conditions=tuple(extra_conditions or ()), verdict=verdict, analysis=analysis,
            counters=counters, smoke=smoked,
        )

        # Plan.
        planned = plan.plan(seen, self.settings)
        if planned.stall is not None:
            self._stall(body, patch, current, *planned.stall, md.metadata.generation)
            return
        after = planned.step.state

        # Act: the Secret the pods read, then the children, the step's window, MLflow.
        if shadowtoken.wanted(md) and self._token_check_due(md, before.canary is not None, now):
            if shadow_secret.ensure(self.client, md, owner_reference(md)):
                logger.info(f"created Secret {naming.shadow_token_name(name)}")
            self._tokens.put((namespace, name, md.metadata.uid), now)
        synced = sync_children(
            self.client,
            planned.desired,
            desired_kinds(),
            namespace,
            name,
            md.metadata.uid,
            self.settings.field_manager,
            live=live,
        )
        result.applied, result.deleted = dict(synced.applied), list(synced.removed)
        counters, baseline = self._window_records(md, after, current_canary, counters, now)
        conflicts = [str(c) for c in synced.conflicts]
        if conflicts:
            logger.warning(f"children held by another owner, left alone: {'; '.join(conflicts)}")
        if synced.changed:
            logger.info(f"children: {synced.summary()}")
        for reason, message, _ in planned.step.events:
            logger.info(f"rollout: {reason}: {message}")
        self._notify(md, before, after, planned.step, analysis)
        self._rollout_metrics(md, before, after, verdict)
        acted = plan.Acted(
            changed=synced.summary() if synced.changed else None,
            conflicts=conflicts,
            write_back=self._write_back(md, after, current.get("lastRollout"), registry, logger),
            counters=counters,
            baseline=baseline,
        )

        # Report: Events first (a reader who sees the status finds them), then the status.
        desired, found = plan.report(seen, planned, acted)
        for reason, message, warning in found:
            events.post(self.client, body, reason, message, warning=warning)
        patch.status.update(status.status_patch(current, desired))

    TOKEN_RECHECK_SECONDS = 1800.0

    def _token_check_due(self, md: api.ModelDeployment, rollout: bool, now: float) -> bool:
        """Look for the shadow token Secret at every pass of a rollout (the shadow phase
        needs it), otherwise once in TOKEN_RECHECK_SECONDS (one deleted by hand returns)."""
        seen = self._tokens.get((md.metadata.namespace, md.metadata.name, md.metadata.uid))
        return rollout or seen is None or now - seen >= self.TOKEN_RECHECK_SECONDS

    # -- before users see it: smoke test, confirm-promotion, event webhooks ---------------

    def _smoke(
        self,
        md: api.ModelDeployment,
        state: RolloutStateMachine,
        registry: Callable[[], Registry] | None,
    ) -> Verdict:
        """The golden set against the canary's ready pods: Pass, Fail, or Inconclusive
        when it cannot be run now (the step holds, the progress deadline runs)."""
        spec = md.spec.rollout.smoke_test
        assert spec is not None and state.canary is not None and state.stable is not None
        try:
            golden = smoke.load_golden_set(md, state.canary.version, self.client, registry)
            canary_target, _ = driver.targets(md, state.stable, state.canary.version)
            addresses = list(endpoints(self.client, canary_target).values())
            if not addresses:
                return Verdict(Outcome.INCONCLUSIVE, "no ready canary pod to send it to yet")
            result = smoke.run_smoke(addresses, golden)
        except smoke.SmokeError as exc:
            outcome = Outcome.INCONCLUSIVE if exc.transient else Outcome.FAIL
            return Verdict(outcome, exc.message)
        except AnalysisError as exc:
            return Verdict(Outcome.INCONCLUSIVE, str(exc))
        message = result.message(spec.min_accuracy)
        return Verdict(Outcome.PASS if result.passed(spec.min_accuracy) else Outcome.FAIL,
                       message)

    def _confirmed(
        self,
        md: api.ModelDeployment,
        state: RolloutStateMachine,
        verdict: Verdict,
        *,
        registry: Callable[[], Registry] | None = None,
    ) -> Verdict:
        """A passing analysis of the last step that would promote holds (inconclusive)
        until every confirm-promotion webhook answers 2xx."""
        canary = state.canary
        hooks = md.spec.rollout.webhooks
        if (
            verdict.outcome is not Outcome.PASS or canary is None or canary.shadow
            or canary.step + 1 < len(md.spec.rollout.steps)
            or not any(h.type == "confirm-promotion" for h in hooks)
        ):
            return verdict
        body = webhooks.payload(
            md, webhooks.CONFIRM_PROMOTION, stable=state.stable, canary=canary.version,
            weight=canary.weight, step=canary.step, analysis=dict(verdict.figures),
            reason=verdict.message,
        )
        ok, why = webhooks.confirm_promotion(
            hooks, body, allowed_hosts=self.settings.webhook_allowed_hosts, budget_seconds=10.0
        )
        if ok:
            return verdict
        return Verdict(Outcome.INCONCLUSIVE, f"promotion not confirmed: {why}",
                       verdict.gates, verdict.figures)

    _HOOK_EVENTS = {
        "CanaryStarted": "RolloutStarted", "SmokeTestPassed": "SmokeTestPassed",
        "SmokeTestFailed": "SmokeTestFailed", "ShadowPassed": "ShadowPassed",
        "AnalysisFailed": "StepFailed", "Promoted": "Promoted", "RolledBack": "RolledBack",
        "ProgressDeadlineExceeded": "RolledBack", "Aborted": "RolledBack",
    }

    def _notify(
        self,
        md: api.ModelDeployment,
        before: RolloutStateMachine,
        after: RolloutStateMachine,
        step: Step,
        analysis: Mapping[str, Any] | None,
    ) -> None:
        """The event webhooks of this pass's transitions, sent from a thread (a slow
        receiver never holds the rollout)."""
        hooks = [h for h in md.spec.rollout.webhooks if h.type == "event"]
        if not hooks or not step.events:
            return
        canary = after.canary or before.canary
        calls = []
        for reason, message, _ in step.events:
            event = self._HOOK_EVENTS.get(reason)
            if reason == "CanaryWeight" and "analysis passed" in message:
                event = "StepPassed"
            if event is None:
                continue
            calls.append(webhooks.payload(
                md, event, stable=after.stable or before.stable,
                canary=canary.version if canary else None,
                weight=after.canary.weight if after.canary else 0,
                step=canary.step if canary else None, analysis=analysis, reason=message,
            ))
        allowed = self.settings.webhook_allowed_hosts

        def send() -> None:
            for body in calls:
                webhooks.notify(hooks, str(body["event"]), body, allowed_hosts=allowed)

        if calls:
            threading.Thread(target=send, name="modelship-webhooks", daemon=True).start()

    def _window_records(
        self,
        md: api.ModelDeployment,
        after: RolloutStateMachine,
        current_canary: Mapping[str, Any],
        counters: dict[str, Any] | None,
        now: float,
    ) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
        """The step's opening counters and the stable's class baseline, when due now.

        Both are read after this pass applied the weight (the window opens when the
        weight took effect, plus the warm-up), and kept in status for later passes.
        """
        canary = after.canary
        if canary is None or (canary.weight == 0 and not canary.shadow) or (
            canary.step_started_at is None
        ):
            return None, None
        same = current_canary.get("version") == canary.version
        step_iso = driver.iso(canary.step_started_at)
        kept = (current_canary.get("stepCounters") or {}) if same else {}
        if counters is None and kept.get("step") != step_iso:
            counters = self.analyst.open_window(md, after, now)
        baseline = None
        if not (same and current_canary.get("baseline")):
            baseline = self.analyst.baseline(md, after, now)
        return counters, baseline

    # -- pieces -----------------------------------------------------------------------

    def _registry_factory(self, md: api.ModelDeployment) -> Callable[[], Registry] | None:
        """A memoised registry client for one pass; None when no tracking URI is known."""
        if not (md.spec.model.registry.tracking_uri or self.settings.default_tracking_uri):
            return None
        made: list[Registry] = []

        def get() -> Registry:
            if not made:
                made.append(self.registry_for(md))
            return made[0]

        return get

    def _write_back(
        self,
        md: api.ModelDeployment,
        state: Any,
        previous: Mapping[str, Any] | None,
        registry: Callable[[], Registry] | None,
        logger: Any,
    ) -> str | None:
        """Tell MLflow how the last rollout ended: Done, Failed: why (retried), or None.

        Promoted: spec.model.promoteAlias (when set) moves to the version, which gets the
        tag modelship.io/deployed=NAMESPACE/NAME. RolledBack: the version gets the tag
        modelship.io/rolled-back with the reason. A failure never undoes the promotion;
        it is reported in status.lastRollout.writeBack and tried again on the next pass.
        """
        last = state.last
        if last is None or last.outcome not in ("Promoted", "RolledBack"):
            return None
        previous = previous or {}
        if (
            previous.get("version") == last.version
            and previous.get("outcome") == last.outcome
            and previous.get("writeBack") == "Done"
        ):
            return "Done"
        if registry is None:
            return "Failed: no tracking URI"
        model = md.spec.model
        where = f"{md.metadata.namespace}/{md.metadata.name}"
        try:
            client = registry()
            if last.outcome == "Promoted":
                if model.promote_alias:
                    client.set_alias(model.name, model.promote_alias, last.version)
                client.set_version_tag(model.name, last.version, "modelship.io/deployed", where)
            else:
                client.set_version_tag(
                    model.name, last.version, "modelship.io/rolled-back", f"{where}: {last.reason}"
                )
        except RegistryError as exc:
            logger.warning(f"write-back to MLflow failed, will retry: {exc.message}")
            return f"Failed: {exc.message}"[:500]
        return "Done"

    def registry_for(self, md: api.ModelDeployment) -> Registry:
        uri = md.spec.model.registry.tracking_uri or self.settings.default_tracking_uri
        if not uri:
            raise RegistryError(
                "RegistryUnavailable",
                "spec.model.registry.trackingUri: not set, and the operator has no default",
            )
        untrusted = trust.host_problem(uri, trust.allowed_hosts(self.settings))
        if untrusted is not None:
            raise RegistryError(trust.HOST_NOT_ALLOWED, untrusted)
        credentials = None
        secret_name = md.spec.model.registry.credentials_secret
        if secret_name:
            credentials = self._credentials(md.metadata.namespace, secret_name)
        return self.resolver.clients.get(uri, credentials, self.settings.registry_timeout_seconds)

    def _credentials(self, namespace: str, name: str) -> Credentials:
        import base64

        try:
            secret = self.client.get(SECRET_KIND, namespace, name)
        except ApiError as exc:
            raise RegistryError("Unauthorized", f"cannot read Secret {name}: {exc.reason}") from exc
        if secret is None:
            raise RegistryError("Unauthorized", f"Secret {name} not found")
        data = {k: base64.b64decode(v).decode() for k, v in (secret.get("data") or {}).items()}
        return Credentials(
            token=data.get("MLFLOW_TRACKING_TOKEN"),
            username=data.get("MLFLOW_TRACKING_USERNAME"),
            password=data.get("MLFLOW_TRACKING_PASSWORD"),
        )

    def _registry_problem(
        self,
        body: Mapping[str, Any],
        patch: StatusChanges,
        current: Mapping[str, Any],
        resolution: Resolution,
        generation: int | None,
        retry: int,
    ) -> None:
        """Nothing serves and the registry cannot say what should: create nothing, retry."""
        problem = resolution.problem
        reason = problem.reason if problem else "ModelNotResolved"
        message = problem.message if problem else "no model version to serve"
        desired, found = plan.unresolved(
            current, reason, message, generation, list(resolution.conditions)
        )
        self._write_if_changed(body, patch, current, desired, found)
        metrics.record_reconcile_error(reason)
        transient = problem is None or problem.transient
        delay = backoff(retry) if transient else self.settings.stalled_retry_seconds
        raise kopf.TemporaryError(message, delay=min(delay, self.settings.alias_poll_seconds))

    def _stall(
        self,
        body: Mapping[str, Any],
        patch: StatusChanges,
        current: Mapping[str, Any],
        reason: str,
        message: str,
        generation: int | None,
        extra: list[dict[str, Any]] | None = None,
    ) -> None:
        desired, found = plan.stalled(current, reason, trust.redact(message), generation, extra)
        self._write_if_changed(body, patch, current, desired, found)
        metrics.record_reconcile_error(reason)

    def _write_if_changed(
        self,
        body: Mapping[str, Any],
        patch: StatusChanges,
        current: Mapping[str, Any],
        desired: Mapping[str, Any],
        found: list[plan.Event],
    ) -> None:
        """The Events of a status that changes, and the change; nothing when none."""
        changes = status.status_patch(current, desired)
        if not changes:
            return
        for reason, message, warning in found:
            events.post(self.client, body, reason, message, warning=warning)
        patch.status.update(changes)

    @staticmethod
    def _rollout_metrics(
        md: api.ModelDeployment,
        before: RolloutStateMachine,
        after: RolloutStateMachine,
        verdict: Verdict | None,
    ) -> None:
        """Record this pass's gate verdicts and finished rollout; set the canary gauges."""
        namespace, name = md.metadata.namespace, md.metadata.name
        for gate in verdict.gates if verdict is not None else ():
            metrics.record_gate(namespace, name, gate.gate, gate.outcome.value)
        if before.canary is not None and after.canary is None and after.last is not None:
            metrics.record_rollout(namespace, name, after.last.outcome)
        canary = after.canary
        if canary is None:
            metrics.clear_canary(namespace, name)
            return
        metrics.set_canary(
            namespace, name, weight=canary.weight, step=canary.step,
            progressed_at=canary.progress_at, deadline_at=deadline_at(canary, md.spec.rollout),
        )
