"""spec.rollout.smokeTest: a golden set posted to the canary's pods before any user request.

A golden set is JSON, ``{"instances": [[...], ...], "expected": [...]}``: rows of numbers
and, for each row, the prediction the new version must make. It comes from a ConfigMap
of the ModelDeployment's namespace or from a file among the artifacts of the MLflow run
that logged the model version (:func:`load_golden_set`), and is refused with a
:class:`SmokeError` naming the problem unless it is at most :data:`MAX_BYTES` of JSON
with 1 to :data:`MAX_ROWS` rows of equal width of finite numbers and one scalar
(string, number or boolean) expected per row.

:func:`run_smoke` posts the rows in batches to ``/predict`` of the canary's ready pods
(round robin; a pod that cannot be reached is skipped for the next one) and compares each
prediction with its expected value: strings, integers and booleans must be equal (after
the JSON round trip, and of the same kind: ``"1"`` is not ``1``, ``true`` is not ``1``);
a float matches a number within 1e-6, relative to the expected value's magnitude when
that is above 1. A batch the canary answers with an error (the model raised, or refused
the rows' shape) counts all its rows wrong: that is what a smoke test is for.

Errors say whether trying again may help (:attr:`SmokeError.transient`: the API server
or MLflow unreachable, no ready pod) or not (a missing or malformed golden set), so a
caller holds the rollout for the first and fails it for the second; a golden set that
cannot be had never counts as a pass.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import requests

from modelship_operator import __version__
from modelship_operator.api import ModelDeployment
from modelship_operator.k8s import ApiError, KubeClient, kind_of
from modelship_operator.registry import Registry, RegistryError, read_bounded

CONFIG_MAP = kind_of("v1", "ConfigMap")

MAX_BYTES: Final = 1024 * 1024
"""Largest golden set read, in bytes of JSON (a ConfigMap's own limit is about this)."""
MAX_ROWS: Final = 10_000
BATCH_ROWS: Final = 100
"""Rows per /predict request (the runtime takes up to 1000 by default)."""
FLOAT_TOLERANCE: Final = 1e-6
MAX_ANSWER_BYTES: Final = 4 * 1024 * 1024
USER_AGENT: Final = f"modelship-operator/{__version__} (smoke test)"
SHOWN: Final = 5
"""Mismatching rows a message names; the rest are counted."""


class SmokeError(Exception):
    """The smoke test could not be run; `transient` when a later try may succeed."""

    def __init__(self, message: str, *, transient: bool = False) -> None:
        super().__init__(message)
        self.message = message
        self.transient = transient


Scalar = str | int | float | bool


@dataclass(frozen=True)
class GoldenSet:
    instances: list[list[int | float]]
    expected: list[Scalar]
    source: str
    """Where it came from, for messages (e.g. ``ConfigMap iris-golden, key smoke.json``)."""


@dataclass(frozen=True)
class SmokeResult:
    """How the canary did on a golden set."""

    total: int
    correct: int
    mismatches: list[tuple[int, Any, Any]] = field(default_factory=list)
    """(row index, expected, got) of every wrong row; got is None for a refused batch."""
    errors: list[str] = field(default_factory=list)
    """Error answers of the canary (at most a few), e.g. ``pod 10.0.0.5:8080: 500 ...``."""

    @property
    def accuracy(self) -> float:
        return self.correct / self.total if self.total else 0.0

    def passed(self, min_accuracy: float) -> bool:
        """True when accuracy reaches `min_accuracy`; never for an empty run."""
        return self.total > 0 and self.accuracy >= min_accuracy

    def message(self, min_accuracy: float) -> str:
        """One line for a condition or Event, naming the first wrong rows."""
        head = (f"{self.correct} of {self.total} golden rows right (accuracy "
                f"{self.accuracy:.4f}, needs {min_accuracy:.4f})")
        if not self.mismatches:
            return head
        shown = "; ".join(
            f"row {i}: expected {_show(want)}, got {_show(got)}"
            for i, want, got in self.mismatches[:SHOWN]
        )
        more = len(self.mismatches) - SHOWN
        text = f"{head}; {shown}" + (f"; and {more} more" if more > 0 else "")
        if self.errors:
            text += f"; canary errors: {self.errors[0]}"
        return text


def _show(value: Any) -> str:
    text = "no prediction" if value is None else json.dumps(value)
    return text if len(text) <= 60 else text[:57] + "..."


# --- loading ------------------------------------------------------------------------------


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not allowed (numbers must be finite)")


def parse_golden(data: bytes | str, source: str) -> GoldenSet:
    """Check and decode a golden set; SmokeError (not transient) naming what is wrong."""
    raw = data.encode() if isinstance(data, str) else data
    if len(raw) > MAX_BYTES:
        raise SmokeError(f"{source}: golden set is {len(raw)} bytes; the maximum is {MAX_BYTES}")
    try:
        doc = json.loads(raw, parse_constant=_no_constant)
    except (ValueError, RecursionError) as exc:
        raise SmokeError(f"{source}: not valid JSON: {str(exc)[:200]}") from None
    form = '{"instances": [[...], ...], "expected": [...]}'
    if not isinstance(doc, dict) or "instances" not in doc or "expected" not in doc:
        raise SmokeError(f"{source}: a golden set is a JSON object {form}")
    extra = sorted(set(doc) - {"instances", "expected"})
    if extra:
        raise SmokeError(f"{source}: unknown field {extra[0]!r}; a golden set is {form}")
    instances, expected = doc["instances"], doc["expected"]
    if not isinstance(instances, list) or not instances:
        raise SmokeError(f"{source}: instances must be a non-empty array of rows")
    if len(instances) > MAX_ROWS:
        raise SmokeError(f"{source}: {len(instances)} rows; the maximum is {MAX_ROWS}")
    if not isinstance(expected, list) or len(expected) != len(instances):
        got = f"{len(expected)} values" if isinstance(expected, list) else "not an array"
        raise SmokeError(f"{source}: expected must be an array with one value per row "
                         f"({len(instances)} rows, expected is {got})")
    width = None
    for r, row in enumerate(instances):
        if not isinstance(row, list) or not row:
            raise SmokeError(f"{source}: instances[{r}] must be a non-empty array of numbers")
        if width is None:
            width = len(row)
        elif len(row) != width:
            raise SmokeError(f"{source}: instances[{r}] has {len(row)} values, "
                             f"instances[0] has {width}")
        for c, value in enumerate(row):
            if type(value) not in (int, float):
                raise SmokeError(f"{source}: instances[{r}][{c}] must be a number, "
                                 f"got {json.dumps(value)[:40]}")
    for r, value in enumerate(expected):
        if type(value) not in (str, int, float, bool):
            raise SmokeError(f"{source}: expected[{r}] must be a string, number or boolean, "
                             f"got {json.dumps(value)[:40]}")
    return GoldenSet(instances, expected, source)


def load_golden_set(
    md: ModelDeployment,
    version: str,
    client: KubeClient,
    registry: Callable[[], Registry] | None,
) -> GoldenSet:
    """The golden set spec.rollout.smokeTest names, for the canary's model `version`.

    `registry` makes the MLflow client (only called for an artifact source; None when no
    tracking URI is known). Raises SmokeError.
    """
    smoke = md.spec.rollout.smoke_test
    if smoke is None:
        raise SmokeError("spec.rollout.smokeTest is not set")
    namespace = md.metadata.namespace
    if smoke.config_map is not None:
        ref = smoke.config_map
        source = f"ConfigMap {ref.name}, key {ref.key}"
        try:
            config_map = client.get(CONFIG_MAP, namespace, ref.name)
        except ApiError as exc:
            raise SmokeError(f"cannot read {source}: {exc.status} {exc.reason}",
                             transient=exc.transient) from exc
        if config_map is None:
            raise SmokeError(f"{source}: ConfigMap {ref.name} not found in namespace {namespace}")
        return parse_golden(_config_map_value(config_map, ref.key, source), source)
    assert smoke.artifact is not None
    source = f"artifact {smoke.artifact} of model {md.spec.model.name!r} version {version}"
    if registry is None:
        raise SmokeError(f"{source}: no MLflow tracking URI (spec.model.registry.trackingUri)")
    try:
        data = registry().run_artifact(md.spec.model.name, version, smoke.artifact, MAX_BYTES)
    except RegistryError as exc:
        if exc.reason == "ArtifactTooLarge":
            raise SmokeError(f"{source}: larger than {MAX_BYTES} bytes") from exc
        if exc.reason in ("ArtifactNotFound", "ArtifactsUnavailable"):
            raise SmokeError(exc.message) from exc  # names the artifact, version and run
        raise SmokeError(f"{source}: {exc.message}", transient=exc.transient) from exc
    return parse_golden(data, source)


def _config_map_value(config_map: dict[str, Any], key: str, source: str) -> bytes:
    data = config_map.get("data") or {}
    binary = config_map.get("binaryData") or {}
    if isinstance(data.get(key), str):
        return str(data[key]).encode()
    if isinstance(binary.get(key), str):
        try:
            return base64.b64decode(binary[key], validate=True)
        except (binascii.Error, ValueError) as exc:
            raise SmokeError(f"{source}: binaryData is not base64") from exc
    keys = sorted([*data, *binary])
    shown = ", ".join(keys[:10]) + (", ..." if len(keys) > 10 else "")
    raise SmokeError(f"{source}: no such key (the ConfigMap has: {shown or 'no keys'})")


# --- running ------------------------------------------------------------------------------


def matches(expected: Scalar, got: Any) -> bool:
    """Whether a prediction is the expected one (see the module docstring)."""
    if isinstance(expected, bool) or isinstance(got, bool):
        return type(expected) is type(got) and expected == got
    if isinstance(expected, str) or isinstance(got, str):
        return isinstance(expected, str) and isinstance(got, str) and expected == got
    if not isinstance(got, int | float):
        return False
    if isinstance(expected, int) and isinstance(got, int):
        return expected == got
    return math.isfinite(got) and abs(got - expected) <= FLOAT_TOLERANCE * max(1.0, abs(expected))


def run_smoke(
    addresses: Sequence[str],
    golden: GoldenSet,
    timeout: float = 10.0,
    *,
    batch_rows: int = BATCH_ROWS,
) -> SmokeResult:
    """Post `golden`'s rows to the pods at `addresses` (``host:port``) and compare.

    Batches go to the pods in turn. A pod that cannot be reached (connection failure,
    timeout) is skipped for the next; when none answers a batch, SmokeError (transient).
    """
    pods = list(addresses)
    if not pods:
        raise SmokeError("no ready canary pod to run the smoke test on", transient=True)
    correct = 0
    mismatches: list[tuple[int, Any, Any]] = []
    errors: list[str] = []
    with requests.Session() as session:
        session.headers["User-Agent"] = USER_AGENT
        for b, start in enumerate(range(0, len(golden.instances), batch_rows)):
            rows = golden.instances[start:start + batch_rows]
            predictions, error = _predict(session, pods, b, rows, timeout)
            for offset, want in enumerate(golden.expected[start:start + len(rows)]):
                got = predictions[offset] if predictions is not None else None
                if predictions is not None and matches(want, got):
                    correct += 1
                else:
                    mismatches.append((start + offset, want, got))
            if error is not None and len(errors) < SHOWN:
                errors.append(error)
    return SmokeResult(len(golden.instances), correct, mismatches, errors)


def _predict(
    session: requests.Session, pods: list[str], batch: int, rows: list[list[int | float]],
    timeout: float,
) -> tuple[list[Any] | None, str | None]:
    """The pods' predictions for `rows`, or (None, why) for an error answer."""
    unreachable = []
    for k in range(len(pods)):
        pod = pods[(batch + k) % len(pods)]
        try:
            with session.post(f"http://{pod}/predict", json={"instances": rows},
                              timeout=timeout, stream=True, allow_redirects=False) as response:
                status = response.status_code
                raw = read_bounded(response, MAX_ANSWER_BYTES + 1)
        except (requests.ConnectionError, requests.Timeout) as exc:
            unreachable.append(f"{pod}: {type(exc).__name__}")
            continue
        except requests.RequestException as exc:
            return None, f"pod {pod}: {type(exc).__name__}"
        return _predictions(pod, status, raw, len(rows))
    raise SmokeError("no canary pod answered the smoke test: " + "; ".join(unreachable)[:500],
                     transient=True)


def _predictions(
    pod: str, status: int, raw: bytes, n: int
) -> tuple[list[Any] | None, str | None]:
    text = raw[:300].decode("utf-8", "replace").strip()
    if status != 200:
        return None, f"pod {pod}: {status} {text}"[:300]
    if len(raw) > MAX_ANSWER_BYTES:
        return None, f"pod {pod}: answer larger than {MAX_ANSWER_BYTES} bytes"
    try:
        answer = json.loads(raw)
    except ValueError:
        return None, f"pod {pod}: answer is not JSON: {text[:100]}"
    predictions = answer.get("predictions") if isinstance(answer, dict) else None
    if not isinstance(predictions, list) or len(predictions) != n:
        return None, f"pod {pod}: answer has no {n} predictions"
    return predictions, None
