"""spec.rollout.webhooks: tell other systems how a rollout goes, and ask one before promoting.

Every call is an HTTP POST of one JSON object (``Content-Type: application/json``,
``User-Agent: modelship-operator/VERSION``, and the headers ``X-Modelship-Event`` and
``X-Modelship-Webhook`` naming the event and the hook)::

    {
      "event": "RolloutStarted",   # see EVENTS; "ConfirmPromotion" for a promotion gate
      "namespace": "ml", "name": "iris",           # the ModelDeployment
      "model": "iris-classifier",                  # spec.model.name
      "stable": "3", "canary": "4",                # versions; canary null when none
      "weight": 10, "step": 0,                     # canary's traffic share, step index
      "analysis": {...} | null,                    # the last analysis, as in status
      "reason": "...",                             # why, in words ("" when nothing to say)
      "time": "2026-11-28T08:00:00.000000Z"        # when the operator saw it (RFC 3339)
    }

Hooks of ``type: event`` get every event (:func:`notify`); their answers are not read, and
a failure is logged and returned, never raised: a rollout does not wait for a chat room.
Hooks of ``type: confirm-promotion`` are asked before a promotion (:func:`confirm_promotion`)
and must all answer 2xx; any other answer, or none, holds the rollout at its last step.

Each call tries once, then up to ``retries`` more times after a connection failure, a
timeout, 408, 429 or 5xx (waiting 0.5 s, 1 s, 2 s, ...), within ``timeoutSeconds`` per try
and :data:`BUDGET_SECONDS` in all. Another 4xx is an answer and is not retried. Redirects
are not followed (a redirect could lead anywhere). Messages name a hook by its name and
host only: webhook URLs often carry a secret in their path or query. Figures strict JSON
cannot carry (NaN, infinities) are sent as null.

Trust: webhook URLs are written by whoever may edit ModelDeployments in a namespace, and
the operator calls them from inside the cluster. The operator setting
``webhook_allowed_hosts`` limits the hosts they may name (see
:class:`~modelship_operator.settings.OperatorSettings`); a URL outside it is refused
without a request.
"""

from __future__ import annotations

import datetime
import fnmatch
import json
import logging
import math
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import urlsplit

import requests

from modelship_operator import __version__
from modelship_operator.api import ModelDeployment, WebhookSpec

logger = logging.getLogger(__name__)

EVENTS: Final = (
    "RolloutStarted",    # a canary Deployment for a new version is being created
    "SmokeTestPassed",   # the golden set met minAccuracy on the canary's pods
    "SmokeTestFailed",   # ... or did not (a rollback follows)
    "ShadowPassed",      # the shadow phase's analysis passed
    "StepPassed",        # a weighted step's analysis passed; the weight moves on
    "StepFailed",        # an analysis failed (counted towards failureLimit)
    "Promoted",          # the canary is the stable version now
    "RolledBack",        # traffic went back to the stable version
)
"""Events the operator sends to ``type: event`` hooks (receivers must accept others)."""
CONFIRM_PROMOTION: Final = "ConfirmPromotion"
"""The event of a request to ``type: confirm-promotion`` hooks."""

USER_AGENT: Final = f"modelship-operator/{__version__}"
BUDGET_SECONDS: Final = 60.0
"""Longest time one hook's tries and waits take together."""
FIRST_BACKOFF_SECONDS: Final = 0.5
_RETRY_STATUS: Final = frozenset({408, 429})
_MESSAGE_CHARS: Final = 200


@dataclass(frozen=True)
class WebhookResult:
    """The outcome of calling one hook: `ok` for a 2xx answer."""

    ok: bool
    status: int | None
    """HTTP status of the last answer; None when no answer came (refused, unreachable)."""
    message: str


def now_iso(seconds: float | None = None) -> str:
    """RFC 3339 in UTC with microseconds, as status times are written."""
    moment = datetime.datetime.fromtimestamp(
        time.time() if seconds is None else seconds, tz=datetime.UTC
    )
    return moment.isoformat(timespec="microseconds").replace("+00:00", "Z")


def payload(
    md: ModelDeployment,
    event: str,
    *,
    stable: str | None,
    canary: str | None,
    weight: int = 0,
    step: int | None = None,
    analysis: Mapping[str, Any] | None = None,
    reason: str = "",
    at: float | None = None,
) -> dict[str, Any]:
    """The JSON object every hook receives (see the module docstring)."""
    return {
        "event": event,
        "namespace": md.metadata.namespace,
        "name": md.metadata.name,
        "model": md.spec.model.name,
        "stable": stable,
        "canary": canary,
        "weight": weight,
        "step": step,
        "analysis": dict(analysis) if analysis is not None else None,
        "reason": reason,
        "time": now_iso(at),
    }


def host_allowed(url: str, allowed_hosts: Sequence[str]) -> bool:
    """True when `url`'s host matches one of `allowed_hosts` (empty: every host)."""
    if not allowed_hosts:
        return True
    try:
        host = urlsplit(url).hostname
    except ValueError:
        return False
    if not host:
        return False
    return any(fnmatch.fnmatchcase(host.lower(), p.strip().lower()) for p in allowed_hosts)


def _where(hook: WebhookSpec) -> str:
    """The hook's name and host, never its path or query (they may hold a secret)."""
    try:
        host = urlsplit(hook.url).hostname or "?"
    except ValueError:
        host = "?"
    return f"webhook {hook.name} ({host})"


def _json_safe(value: Any) -> Any:
    """`value` as strict JSON can carry it: NaN and infinities become null, other
    objects their text (a figure the analysis could not compute is no reason to fail)."""
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if value is None or isinstance(value, str | int | bool):
        return value
    return str(value)


def _printable(text: str) -> str:
    cleaned = "".join(c if c.isprintable() else " " for c in text).strip()
    return cleaned[:_MESSAGE_CHARS]


def call(
    hook: WebhookSpec,
    body: Mapping[str, Any],
    *,
    allowed_hosts: Sequence[str],
    budget_seconds: float = BUDGET_SECONDS,
) -> WebhookResult:
    """POST `body` to `hook`, with its timeout and retries; never raises.

    `allowed_hosts` is the operator's ``webhook_allowed_hosts`` (empty: any host); a URL
    outside it is refused without a request.
    """
    where = _where(hook)
    if not host_allowed(hook.url, allowed_hosts):
        return WebhookResult(False, None, f"{where}: host not in the operator's "
                             "webhook_allowed_hosts; not called")
    headers = {
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
        "X-Modelship-Event": str(body.get("event", "")),
        "X-Modelship-Webhook": hook.name,
    }
    data = json.dumps(_json_safe(body), allow_nan=False).encode()
    deadline = time.monotonic() + budget_seconds
    backoff = FIRST_BACKOFF_SECONDS
    result = WebhookResult(False, None, f"{where}: not called")
    for attempt in range(hook.retries + 1):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        result, retry = _try(hook, data, headers, min(hook.timeout_seconds, remaining), where)
        if result.ok or not retry or attempt == hook.retries:
            break
        if time.monotonic() + backoff >= deadline:
            break
        time.sleep(backoff)
        backoff *= 2
    tries = attempt + 1
    if not result.ok and tries > 1:
        result = WebhookResult(False, result.status, f"{result.message} (after {tries} tries)")
    return result


def _try(
    hook: WebhookSpec,
    data: bytes,
    headers: Mapping[str, str],
    timeout: float,
    where: str,
) -> tuple[WebhookResult, bool]:
    """One POST: its result, and whether another try may help."""
    try:
        with requests.post(
            hook.url, data=data, headers=dict(headers), timeout=timeout,
            allow_redirects=False, stream=True,
        ) as response:
            status = response.status_code
            text = response.raw.read(4096, decode_content=True).decode("utf-8", "replace")
    except requests.Timeout:
        return WebhookResult(False, None, f"{where}: no answer within {timeout:g}s"), True
    except requests.ConnectionError as exc:
        reason = type(exc.__context__ or exc).__name__
        return WebhookResult(False, None, f"{where}: cannot connect ({reason})"), True
    except (requests.RequestException, OSError, ValueError) as exc:
        return WebhookResult(False, None, f"{where}: {type(exc).__name__}: {exc}"[:300]), False
    said = _printable(text)
    if 200 <= status < 300:
        return WebhookResult(True, status, f"{where}: {status}"), False
    if 300 <= status < 400:
        return WebhookResult(False, status, f"{where}: {status} redirect, not followed"), False
    message = f"{where}: {status}" + (f": {said}" if said else "")
    return WebhookResult(False, status, message), status in _RETRY_STATUS or status >= 500


def _call_all(
    hooks: Sequence[WebhookSpec],
    body: Mapping[str, Any],
    allowed_hosts: Sequence[str],
    budget_seconds: float,
) -> dict[str, WebhookResult]:
    """Call `hooks` at once (one thread each): a slow hook does not delay the others."""
    if not hooks:
        return {}
    with ThreadPoolExecutor(max_workers=len(hooks), thread_name_prefix="webhook") as pool:
        futures = {
            hook.name: pool.submit(call, hook, body, allowed_hosts=allowed_hosts,
                                   budget_seconds=budget_seconds)
            for hook in hooks
        }
        results = {}
        for hook in hooks:
            try:
                results[hook.name] = futures[hook.name].result()
            except Exception as exc:  # notify and confirm_promotion never raise
                results[hook.name] = WebhookResult(
                    False, None, f"{_where(hook)}: {type(exc).__name__}: {exc}"[:300]
                )
        return results


def notify(
    hooks: Sequence[WebhookSpec],
    event: str,
    body: Mapping[str, Any],
    *,
    allowed_hosts: Sequence[str],
    budget_seconds: float = BUDGET_SECONDS,
) -> dict[str, WebhookResult]:
    """Send `body` (its ``event`` set to `event`) to every ``type: event`` hook.

    Returns each hook's result by name; failures are logged, never raised.
    """
    message = {**body, "event": event}
    results = _call_all([h for h in hooks if h.type == "event"], message, allowed_hosts,
                        budget_seconds)
    for result in results.values():
        if not result.ok:
            logger.warning("%s: %s", event, result.message)
    return results


def confirm_promotion(
    hooks: Sequence[WebhookSpec],
    body: Mapping[str, Any],
    *,
    allowed_hosts: Sequence[str],
    budget_seconds: float = BUDGET_SECONDS,
) -> tuple[bool, str]:
    """Ask every ``type: confirm-promotion`` hook; True only when each answers 2xx.

    `body`'s ``event`` is sent as ``ConfirmPromotion``. No such hook: (True, "").
    Otherwise the message names every hook that did not confirm, and why.
    """
    gates = [h for h in hooks if h.type == "confirm-promotion"]
    if not gates:
        return True, ""
    results = _call_all(gates, {**body, "event": CONFIRM_PROMOTION}, allowed_hosts,
                        budget_seconds)
    refused = [r.message for r in results.values() if not r.ok]
    if refused:
        return False, "promotion not confirmed: " + "; ".join(refused)
    return True, "promotion confirmed by " + ", ".join(results)
