"""The canary's side of shadow traffic: compare its predictions with the stable's.

During a rollout's shadow phase the stable pods mirror requests here
(:mod:`modelship_runtime.shadow`) with their own predictions in
``X-Modelship-Stable-Prediction`` (a JSON array, one entry per row). This runtime answers
the request as usual, except that the prediction cache is neither read nor written (the
point is to run this model), and compares row by row:

- classifiers (the model has ``classes_``): equal labels agree, others disagree
  (``model_shadow_agreement_total{result}``);
- regressors: ``|canary - stable|`` and the relative difference
  ``|canary - stable| / max(|canary|, |stable|)`` go into the histograms
  ``model_shadow_abs_diff`` and ``model_shadow_rel_diff``.

A mirrored request that cannot be compared (no or malformed stable predictions, another
row count, values that are not comparable, a wrong shadow token) counts in
``model_shadow_uncompared_total{reason}`` and never as agreement. A few disagreeing
requests per minute are logged with their request id and the first differing rows, for a
person to look into. The header comes from the network, so it is bounded and checked
before it is parsed.
"""

from __future__ import annotations

import hmac
import logging
import math
import time
from typing import Any

import orjson

from .logging import request_id_var
from .metrics import Metrics
from .model import Model, Prediction

logger = logging.getLogger("modelship_runtime.shadow")

MAX_STABLE_HEADER = 65536
LOG_EXAMPLES = 5
LOG_VALUE_CHARS = 80


class Incoming:
    """A mirrored request being answered here: what the stable said about it."""

    cacheable = False
    __slots__ = ("judge", "stable", "stable_version", "trusted")

    def __init__(self, judge: Judge, stable: bytes | None, stable_version: bytes | None,
                 trusted: bool) -> None:
        self.judge = judge
        self.stable = stable
        self.stable_version = stable_version
        self.trusted = trusted

    def observe(self, prediction: Prediction) -> None:
        """Compare this runtime's prediction of the request's rows with the stable's."""
        self.judge.compare(self, prediction)


def _truncate(value: Any) -> str:
    text = orjson.dumps(value, option=orjson.OPT_SERIALIZE_NUMPY, default=str).decode()
    return text if len(text) <= LOG_VALUE_CHARS else text[: LOG_VALUE_CHARS - 3] + "..."


def _number(value: object) -> float | None:
    if type(value) is float or type(value) is int:
        return float(value)
    return None


def _numbers(value: object) -> list[float] | None:
    """A regressor's row as floats: one number, or a list of numbers (multi-output)."""
    one = _number(value)
    if one is not None:
        return [one]
    if isinstance(value, list) and value:
        out = [_number(v) for v in value]
        if all(x is not None for x in out):
            return out  # type: ignore[return-value]
    return None


class Judge:
    """Counts agreement of mirrored requests; one per app."""

    def __init__(self, model: Model, metrics: Metrics, *, token: str | None,
                 log_per_minute: int, log_rel_diff: float) -> None:
        self.model = model
        self.metrics = metrics
        self.token = token.encode() if token else None
        self.log_per_minute = log_per_minute
        self.log_rel_diff = log_rel_diff
        self._uncompared: dict[str, Any] = {}
        self._window_end = 0.0
        self._logged = 0
        self._suppressed = 0

    def incoming(self, shadow: bytes, stable: bytes | None,
                 stable_version: bytes | None) -> Incoming:
        """The request's shadow context from its headers (``shadow``: X-Modelship-Shadow)."""
        trusted = self.token is None or hmac.compare_digest(shadow, self.token)
        return Incoming(self, stable, stable_version, trusted)

    def _skip(self, reason: str) -> None:
        child = self._uncompared.get(reason)
        if child is None:
            child = self._uncompared[reason] = self.metrics.shadow_uncompared.labels(
                self.metrics.model, self.metrics.version, reason)
        child.inc()

    def stable_rows(self, incoming: Incoming, n_rows: int) -> list[Any] | None:
        """The stable's predictions, one per row, or None (counted) when unusable."""
        if not incoming.trusted:
            self._skip("token")
            return None
        raw = incoming.stable
        if raw is None:
            self._skip("missing")
            return None
        if len(raw) > MAX_STABLE_HEADER:
            self._skip("invalid")
            return None
        try:
            stable = orjson.loads(raw)
        except orjson.JSONDecodeError:
            self._skip("invalid")
            return None
        if not isinstance(stable, list):
            self._skip("invalid")
            return None
        if len(stable) != n_rows:
            self._skip("rows")
            return None
        return stable

    def compare(self, incoming: Incoming, prediction: Prediction) -> None:
        """Count how the rows of ``prediction`` compare with the stable's."""
        canary = prediction.labels
        stable = self.stable_rows(incoming, len(canary))
        if stable is None:
            return
        if self.model.info.classes is not None:
            self._compare_labels(incoming, stable, canary)
        else:
            self._compare_values(incoming, stable, canary)

    def _compare_labels(self, incoming: Incoming, stable: list[Any], canary: list[Any]
                        ) -> None:
        differing = [i for i, (s, c) in enumerate(zip(stable, canary, strict=True)) if s != c]
        disagree = len(differing)
        agree = len(canary) - disagree
        if agree:
            self.metrics.agreement["agree"].inc(agree)
        if disagree:
            self.metrics.agreement["disagree"].inc(disagree)
            self._log(incoming, stable, canary, differing)

    def _compare_values(self, incoming: Incoming, stable: list[Any], canary: list[Any]
                        ) -> None:
        pairs: list[tuple[float, float]] = []
        for s, c in zip(stable, canary, strict=True):
            sv, cv = _numbers(s), _numbers(c)
            if sv is None or cv is None or len(sv) != len(cv):
                self._skip("type")
                return
            worst_abs, worst_rel = 0.0, 0.0
            for a, b in zip(sv, cv, strict=True):
                if not (math.isfinite(a) and math.isfinite(b)):
                    self._skip("type")
                    return
                diff = abs(b - a)
                scale = max(abs(a), abs(b))
                worst_abs = max(worst_abs, diff)
                worst_rel = max(worst_rel, diff / scale if scale else 0.0)
            pairs.append((worst_abs, worst_rel))
        differing: list[int] = []
        for i, (diff, rel) in enumerate(pairs):
            self.metrics.shadow_abs_diff.observe(diff)
            self.metrics.shadow_rel_diff.observe(rel)
            if rel > self.log_rel_diff:
                differing.append(i)
        if differing:
            self._log(incoming, stable, canary, differing)

    def _log(self, incoming: Incoming, stable: list[Any], canary: list[Any],
             differing: list[int]) -> None:
        if self.log_per_minute <= 0:
            return
        now = time.monotonic()
        if now >= self._window_end:
            self._window_end = now + 60.0
            self._logged = 0
        if self._logged >= self.log_per_minute:
            self._suppressed += 1
            return
        self._logged += 1
        extra: dict[str, Any] = {
            "request_id": request_id_var.get(),
            "model": self.model.name,
            "stable_version": (incoming.stable_version or b"").decode("ascii", "replace")[:64],
            "rows": len(canary),
            "differing_rows": len(differing),
            "examples": [{"row": i, "stable": _truncate(stable[i]),
                          "canary": _truncate(canary[i])} for i in differing[:LOG_EXAMPLES]],
        }
        if self._suppressed:
            extra["not_logged_before"] = self._suppressed
            self._suppressed = 0
        logger.info("shadow disagreement", extra=extra)
