"""Request and response shapes of the three protocols, as plain functions on JSON values.

The seed ``/predict`` format, KServe V1 and the Open Inference Protocol V2 differ only in
where the rows are and how the answer is laid out, so each has a parse function (JSON ->
validated float64 matrix, or BadRequest) and a render function (Prediction -> JSON
bytes). No pydantic on this path: a request is parsed once by orjson and checked by hand,
which is several times cheaper than building models per request. The JSON schemas at the
bottom only document the routes in OpenAPI.

Bodies are parsed as JSON whatever their Content-Type says, as KServe's and MLServer's
servers do: ``curl -d`` labels its data ``application/x-www-form-urlencoded`` and some
clients send none. Only a body that does not parse is refused, by :func:`not_json`, with
a ``curl`` line that works against this route and model.
"""

from __future__ import annotations

import math
import shlex
from typing import Any

import numpy as np
import orjson

from .dataplane import Validator, _type_name
from .errors import BadRequest, ModelshipError, NotJSON, UnsupportedMediaType
from .model import ModelInfo, Prediction
from .typed import V2_DATATYPE, columns_to_rows, tensor_columns

#: The V2 input datatypes a model of numbers takes, each with the little-endian numpy
#: type of its raw bytes (BOOL: false and true as 0 and 1). Every value becomes the exact
#: float64 that numpy's cast of the client's array gives (FP16 and FP32 JSON values are
#: rounded through their own precision first).
V2_DTYPES: dict[str, np.dtype[Any]] = {
    "BOOL": np.dtype("?"),
    "UINT8": np.dtype("<u1"), "UINT16": np.dtype("<u2"), "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "INT8": np.dtype("<i1"), "INT16": np.dtype("<i2"), "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"), "FP32": np.dtype("<f4"), "FP64": np.dtype("<f8"),
}
#: Each of those datatypes' kind of JSON value: "f" numbers, "i" integers, "b" booleans.
V2_SUPPORTED = {dt: {"f": "f", "b": "b"}.get(d.kind, "i") for dt, d in V2_DTYPES.items()}
#: The integer datatypes' ranges, [low, high).
INT_RANGES = {dt: (int(np.iinfo(d).min), int(np.iinfo(d).max) + 1)
              for dt, d in V2_DTYPES.items() if d.kind in "iu"}
#: The datatypes a model of numbers takes, as error messages list them.
NUMERIC_NAMES = ", ".join(list(V2_DTYPES)[:-1]) + " or " + list(V2_DTYPES)[-1]
V2_KNOWN = {*V2_DTYPES, "BYTES", "BF16"}
V2_OUTPUTS = ("predict", "predict_proba")


def _object(body: object, example: str) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise BadRequest(f"the body must be a JSON object like {example}, got {_type_name(body)}")
    return body


def seed_rows(body: object, v: Validator) -> tuple[np.ndarray, bool]:
    """Rows of ``{"features": [...]}`` or ``{"instances": [[...]]}``; True when single."""
    obj = _object(body, '{"features": [...]}')
    features = obj.get("features")
    instances = obj.get("instances")
    if features is not None and instances is not None:
        raise BadRequest('send either "features" (one row) or "instances" (rows), not both')
    if features is not None:
        return v.row(features, "features"), True
    if instances is not None:
        return v.rows(instances, "instances"), False
    raise BadRequest('missing field: send {"features": [...]} or {"instances": [[...], ...]}')


def seed_response(pred: Prediction, single: bool, cache_hit: bool, latency_ms: float) -> bytes:
    """The seed format's answer for one row or a batch."""
    if single:
        probs = pred.probabilities
        return orjson.dumps({
            "prediction": pred.labels[0],
            "probability": None if probs is None else probs[0],
            "latency_ms": round(latency_ms, 3),
            "cache_hit": cache_hit,
        })
    return orjson.dumps({
        "predictions": pred.labels,
        "probabilities": pred.probabilities,
        "latency_ms": round(latency_ms, 3),
        "cache_hit": cache_hit,
    })


METHODS = ("predict", "predict_proba")
"""What a request may ask a model for (V1 ``parameters.method``, MLflow ``params.method``)."""


def no_proba(info: ModelInfo, where: str) -> BadRequest:
    """The 400 for probabilities asked of a model without them (a regressor, a clusterer,
    a classifier fitted without them, a multi-output classifier)."""
    if info.multi_output:
        why = "the probabilities of a multi-output classifier are not served"
    elif info.classes is not None:
        why = ("this classifier has none (an SVC has them when fitted with "
               "probability=True)")
    else:
        why = "probabilities exist for classifiers only"
    return BadRequest(f"{where}: model {info.name} ({info.estimator or 'estimator'}) has no "
                      f"predict_proba: {why}")


def wants_proba(params: object, where: str, info: ModelInfo, default: bool = False) -> bool:
    """Whether ``params`` (a request's ``parameters``/``params`` object, or None) asks for
    probabilities with ``"method": "predict_proba"``; 400 for another method, or for
    probabilities of a model that has none."""
    if params is None:
        method: object = None
    elif isinstance(params, dict):
        method = params.get("method")
    else:
        raise BadRequest(f"{where} must be an object, got {_type_name(params)}")
    if method is None:
        proba = default
    elif method == "predict_proba":
        proba = True
    elif method == "predict":
        proba = False
    else:
        raise BadRequest(f"{where}.method {method!r} is not one of {', '.join(METHODS)}")
    if proba and not info.has_proba:
        raise no_proba(info, f"{where}.method predict_proba")
    return proba


def named_rows(records: list[Any], info: ModelInfo, where: str) -> list[list[Any]]:
    """Rows of feature objects (``{"name": value, ...}``), in the order the model takes
    its inputs: the keys must be exactly the model's input names."""
    columns = info.input_columns
    if columns is None:
        raise BadRequest(f"{where}[0] names its features, but this model's inputs have no "
                         "names (no MLmodel signature, no feature_names_in_): send each row "
                         "as an array of numbers")
    known = set(columns)
    out: list[list[Any]] = []
    for r, record in enumerate(records):
        if not isinstance(record, dict):
            raise BadRequest(f"{where}[{r}] must be an object of named features like "
                             f"{where}[0], got {_type_name(record)}")
        if len(record) != len(columns) or not known.issuperset(record):
            raise unknown_or_missing(list(record), columns, f"{where}[{r}]")
        row = [record[c] for c in columns]
        if info.input_kinds is None:  # typed values are checked by the validator
            for c, x in zip(columns, row, strict=True):
                if type(x) is not float and type(x) is not int and not (
                        x is None and info.allow_nan):
                    raise BadRequest(f"{where}[{r}][{c!r}] must be a number, got "
                                     f"{_type_name(x)}")
        out.append(row)
    return out


def _some(names: list[str], limit: int = 10) -> str:
    """At most ``limit`` names, and how many more: an error message stays small whatever
    a request sends."""
    shown = ", ".join(repr(n[:64]) for n in names[:limit])
    return f"[{shown}]" + (f" and {len(names) - limit} more" if len(names) > limit else "")


def unknown_or_missing(given: list[str], columns: list[str], where: str) -> BadRequest:
    """The 400 for feature names that are not exactly the model's inputs."""
    known, sent = set(columns), set(given)
    unknown = [k for k in given if k not in known]
    missing = [c for c in columns if c not in sent]
    parts = []
    if unknown:
        parts.append(f"unknown feature names {_some(unknown)}")
    if missing:
        parts.append(f"missing feature names {_some(missing)}")
    if not parts:
        parts.append("repeated feature names")
    return BadRequest(f"{where}: {'; '.join(parts)}; the model takes {_some(columns)}")


def v1_rows(body: object, v: Validator, info: ModelInfo) -> tuple[np.ndarray, bool]:
    """Rows of a KServe V1 request, ``{"instances": [...]}`` or ``{"inputs": [...]}``,
    each row an array of numbers or an object of named features; True when its
    ``parameters`` ask for probabilities (``{"method": "predict_proba"}``)."""
    obj = _object(body, '{"instances": [[...]]}')
    instances = obj.get("instances")
    inputs = obj.get("inputs")
    if instances is not None and inputs is not None:
        raise BadRequest('send either "instances" or "inputs", not both')
    where = "instances" if instances is not None else "inputs"
    data = instances if instances is not None else inputs
    if data is None:
        raise BadRequest('missing field: a V1 request is {"instances": [[...], ...]}')
    if type(data) is list and data and type(data[0]) is dict:
        data = named_rows(data, info, where)
    proba = wants_proba(obj.get("parameters"), "parameters", info) if "parameters" in obj \
        else False
    return v.rows(data, where), proba


def v1_response(pred: Prediction, proba: bool = False) -> bytes:
    """KServe V1 answer: ``{"predictions": [...]}``, labels or (``proba``) probabilities."""
    return orjson.dumps({"predictions": pred.probabilities if proba else pred.labels})


def _tensor_values(shape: Any, data: Any, where: str, form: str) -> list[Any]:
    """The values of a V2 JSON tensor ``where``, flat: its shape checked (``form``, one
    or two non-negative integers), its data an array of exactly that many elements."""
    if (not isinstance(shape, list) or not 1 <= len(shape) <= 2
            or any(type(d) is not int or d < 0 for d in shape)):
        raise BadRequest(f"{where}.shape must be {form} with non-negative integers")
    if not isinstance(data, list):
        raise BadRequest(f"{where}.data must be an array, got {_type_name(data)}")
    flat = _flatten(data)
    need = math.prod(shape)
    if len(flat) != need:
        raise BadRequest(f"{where}.shape {shape} needs {need} elements; data has {len(flat)}")
    return flat


def _flatten(data: list[Any], depth: int = 0) -> list[Any]:
    if depth > 8:
        raise BadRequest("inputs[0].data is nested too deeply")
    if data and isinstance(data[0], list):
        out: list[Any] = []
        for item in data:
            if not isinstance(item, list):
                raise BadRequest("inputs[0].data mixes arrays and scalars")
            out.extend(_flatten(item, depth + 1))
        return out
    return data


def v2_rows(body: object, v: Validator, info: ModelInfo
            ) -> tuple[np.ndarray, dict[str, Any]]:
    """Rows of an Open Inference V2 request, and the request object."""
    obj = _object(body, '{"inputs": [{"name", "shape", "datatype", "data"}]}')
    inputs = obj.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise BadRequest('missing field: "inputs" must be a non-empty array of tensors')
    t = inputs[0]
    if len(inputs) != 1 or v.kinds is not None or (
            isinstance(t, dict) and t.get("datatype") == "BYTES"):
        return v2_typed_rows(inputs, v, info), _checked_outputs(obj, info)
    if not isinstance(t, dict):
        raise BadRequest(f"inputs[0] must be an object, got {_type_name(t)}")
    for key in ("name", "shape", "datatype", "data"):
        if key not in t:
            raise BadRequest(f"missing field: inputs[0].{key}")
    name, shape, datatype, data = t["name"], t["shape"], t["datatype"], t["data"]
    if not isinstance(name, str):
        raise BadRequest("inputs[0].name must be a string")
    if not isinstance(datatype, str) or datatype not in V2_KNOWN:
        raise BadRequest(f"inputs[0].datatype {datatype!r} is not a V2 datatype")
    if datatype not in V2_SUPPORTED:
        raise unsupported(datatype, "inputs[0]")
    flat = _tensor_values(shape, data, "inputs[0]", "[features] or [rows, features]")
    _check_elements(flat, datatype, "inputs[0].data", v.allow_nan)
    n_rows, width = v.tensor_shape(shape, "inputs[0]")
    try:
        rows = np.array(flat, dtype=np.float64).reshape(n_rows, width)
    except (OverflowError, ValueError) as exc:
        raise BadRequest(f"inputs[0].data: a value is out of the float64 range ({exc})") from None
    if V2_SUPPORTED[datatype] == "f":
        rows = rounded_finite(rows, datatype, v, "inputs[0].data")
    return rows, _checked_outputs(obj, info)


def out_of_range(where: str, x: int, datatype: str) -> BadRequest:
    """The 400 for integer ``x`` at ``where``, beyond ``datatype``'s range."""
    low, high = INT_RANGES[datatype]
    return BadRequest(f"{where} ({x}) does not fit in {datatype}: its range is "
                      f"{low}..{high - 1}")


def unsupported(datatype: str, where: str, typed: bool = False) -> BadRequest:
    """The 400 for a V2 datatype this runtime does not take (BF16; BYTES for a model of
    numbers), listing those it does (with strings, for a model of ``typed`` columns)."""
    why = " (numpy has no bfloat16: send FP32 or FP16)" if datatype == "BF16" else ""
    takes = NUMERIC_NAMES.replace(" or ", ", ") + " or BYTES (strings)" if typed \
        else NUMERIC_NAMES
    return BadRequest(f"{where}.datatype {datatype} is not supported{why}; use {takes}")


_FLOAT_MAX = {dt: float(np.finfo(V2_DTYPES[dt]).max) for dt in ("FP16", "FP32")}


def _cast(values: np.ndarray, datatype: str) -> np.ndarray:
    """Float64 ``values`` rounded through FP16 or FP32 (a value beyond its range becomes
    infinite), as the client's array of that type holds them."""
    dtype = V2_DTYPES[datatype]
    try:  # numpy warns of an overflow; no errstate on the way of every request
        return values.astype(dtype).astype(np.float64)
    except RuntimeWarning:  # where warnings are errors
        with np.errstate(over="ignore"):
            return values.astype(dtype).astype(np.float64)


def _overflow(values: np.ndarray, rounded: np.ndarray, datatype: str, where: str) -> None:
    """A 400 naming the first finite value of ``values`` (by its row-major index) that
    overflowed ``datatype`` in ``rounded``, when there is one."""
    overflow = (np.isinf(rounded) & np.isfinite(values)).reshape(-1)
    if overflow.any():
        i = int(np.argmax(overflow))
        raise BadRequest(f"{where}[{i}] ({float(values.reshape(-1)[i])!r}) overflows "
                         f"{datatype}: its finite values are within "
                         f"±{_FLOAT_MAX[datatype]:g}")


def rounded_finite(rows: np.ndarray, datatype: str, v: Validator, where: str) -> np.ndarray:
    """Float64 ``rows`` of a float ``datatype`` as the client's array of that type holds
    them (FP16 and FP32 rounded through their precision), checked finite; a finite value
    that overflows FP16 or FP32 is a 400 saying so."""
    if datatype == "FP64":
        v.check_finite(rows, where)
        return rows
    rounded = _cast(rows, datatype)
    try:
        v.check_finite(rounded, where)
    except BadRequest:
        _overflow(rows, rounded, datatype, where)
        raise
    return rounded


def _checked_outputs(obj: dict[str, Any], info: ModelInfo) -> dict[str, Any]:
    """The request, once its ``outputs`` are checked."""
    wanted = obj.get("outputs")
    if wanted is not None:
        if not isinstance(wanted, list) or not all(
            isinstance(o, dict) and isinstance(o.get("name"), str) for o in wanted
        ):
            raise BadRequest('"outputs" must be an array of {"name": ...} objects')
        for i, o in enumerate(wanted):
            if o["name"] not in V2_OUTPUTS:
                raise BadRequest(f"unknown output {o['name']!r}; outputs are predict, "
                                 "predict_proba")
            if any(o["name"] == earlier["name"] for earlier in wanted[:i]):
                # Each copy would be the whole answer again: one small request, a huge reply.
                raise BadRequest(f"outputs[{i}]: output {o['name']!r} is asked for twice; "
                                 "ask for each output once")
            if o["name"] == "predict_proba" and not info.has_proba:
                raise no_proba(info, "outputs predict_proba")
    return obj


TYPED_DATATYPES = ("BYTES", "BOOL")
"""V2 datatypes of non-numeric columns (typed models, :mod:`.typed`)."""


def _check_elements(flat: list[Any], datatype: str, where: str, nulls: bool) -> None:
    """A 400 naming the first element of ``flat`` (``where``) that is not a value of the
    numeric or BOOL ``datatype``: a number, an integer within its range, true or false;
    or null, when ``nulls``."""
    kind = V2_SUPPORTED[datatype]
    if kind == "f":
        for i, x in enumerate(flat):
            tx = type(x)
            if tx is not float and tx is not int and not (x is None and nulls):
                raise BadRequest(f"{where}[{i}] is {_type_name(x)}; {datatype} needs numbers")
    elif kind == "i":
        low, high = INT_RANGES[datatype]
        for i, x in enumerate(flat):
            if x is None and nulls:
                continue
            if type(x) is not int:
                raise BadRequest(f"{where}[{i}] is {_type_name(x)}; {datatype} needs integers")
            if not low <= x < high:
                raise out_of_range(f"{where}[{i}]", x, datatype)
    else:
        for i, x in enumerate(flat):
            if type(x) is not bool and not (x is None and nulls):
                raise BadRequest(f"{where}[{i}] is {_type_name(x)}; BOOL needs true or false")


def tensor_values(flat: list[Any], datatype: str, where: str) -> list[Any]:
    """The checked elements of one input tensor of ``datatype`` (JSON values, or decoded
    from bytes): strings for BYTES, booleans for BOOL, numbers (null: missing) else,
    integers within their datatype's range, FP16 and FP32 rounded through it."""
    if datatype == "BYTES":  # null: a missing value, for a model that takes them
        for i, x in enumerate(flat):
            if type(x) is not str and x is not None:
                raise BadRequest(f"{where}[{i}] is {_type_name(x)}; BYTES needs strings")
        return flat
    # null: a missing value, refused by the validator unless the model takes NaN
    _check_elements(flat, datatype, where, True)
    if V2_SUPPORTED[datatype] != "f" or datatype == "FP64":
        return flat
    try:
        values = np.array(flat, dtype=np.float64)
    except (OverflowError, ValueError) as exc:
        raise BadRequest(f"{where}: a value is out of the float64 range ({exc})") from None
    rounded = _cast(values, datatype)
    _overflow(values, rounded, datatype, where)
    return [None if x is None else y for x, y in zip(flat, rounded.tolist(), strict=True)]


def check_input_datatype(datatype: object, where: str, v: Validator) -> str:
    """``datatype`` of an input tensor of a request going by columns."""
    if not isinstance(datatype, str) or datatype not in V2_KNOWN:
        raise BadRequest(f"{where}.datatype {datatype!r} is not a V2 datatype")
    if datatype == "BYTES" and v.kinds is None:
        raise BadRequest(f"{where}.datatype BYTES: this model takes numbers only; use "
                         f"{NUMERIC_NAMES}")
    if datatype not in V2_SUPPORTED and datatype not in TYPED_DATATYPES:
        raise unsupported(datatype, where, typed=v.kinds is not None)
    return datatype


def tensors_to_rows(tensors: list[tuple[str, list[int], str, list[Any]]], v: Validator,
                    info: ModelInfo) -> np.ndarray:
    """Rows from V2 input tensors given by column (name, shape, datatype, checked flat
    values): several tensors of one column each (named as the model's inputs, or in its
    order), or one of [rows, columns]; each column of the kind the model takes (a model
    of numbers takes booleans as 0 and 1)."""
    columns: list[tuple[str | None, list[Any]]] = []
    for i, (name, shape, datatype, flat) in enumerate(tensors):
        if datatype == "BOOL" and v.kinds is None:
            flat = [x if x is None else int(x) for x in flat]
        columns.extend(tensor_columns(name, shape, flat, f"inputs[{i}]"))
    if not columns:
        raise BadRequest("inputs is empty: send at least one row")
    rows = columns_to_rows(columns, info.input_columns, "inputs")
    return v.rows(rows, "inputs (as rows)")


def v2_typed_rows(inputs: list[Any], v: Validator, info: ModelInfo) -> np.ndarray:
    """Rows of a V2 JSON request going by columns (:func:`tensors_to_rows`)."""
    if len(inputs) > max(v.max_columns, 1):
        raise BadRequest(f"{len(inputs)} input tensors; the maximum is {v.max_columns}")
    tensors: list[tuple[str, list[int], str, list[Any]]] = []
    for i, t in enumerate(inputs):
        where = f"inputs[{i}]"
        if not isinstance(t, dict):
            raise BadRequest(f"{where} must be an object, got {_type_name(t)}")
        for key in ("name", "shape", "datatype", "data"):
            if key not in t:
                raise BadRequest(f"missing field: {where}.{key}")
        name, shape, data = t["name"], t["shape"], t["data"]
        if not isinstance(name, str):
            raise BadRequest(f"{where}.name must be a string")
        datatype = check_input_datatype(t["datatype"], where, v)
        flat = _tensor_values(shape, data, where, "[rows] or [rows, columns]")
        tensors.append((name, shape, datatype,
                        tensor_values(flat, datatype, f"{where}.data")))
    return tensors_to_rows(tensors, v, info)


def flat_labels(labels: list[Any]) -> tuple[list[Any], list[int]]:
    """Labels (or values) row-major, and their V2 shape: ``[rows]``, or ``[rows, outputs]``
    for a multi-output model."""
    n = len(labels)
    if n and isinstance(labels[0], list):
        return [x for row in labels for x in row], [n, len(labels[0])]
    return labels, [n]


def v2_response(pred: Prediction, info: ModelInfo, request: dict[str, Any]) -> bytes:
    """The Open Inference V2 answer with ``predict`` and (classifiers) ``predict_proba``."""
    n = len(pred.labels)
    wanted = request.get("outputs")
    names = [o["name"] for o in wanted] if wanted else list(V2_OUTPUTS)
    outputs: list[dict[str, Any]] = []
    for name in names:
        if name == "predict":
            labels, shape = flat_labels(pred.labels)
            if info.label_datatype == "BYTES":
                labels = [str(x) for x in labels]
            outputs.append({"name": "predict", "shape": shape, "datatype": info.label_datatype,
                            "data": labels})
        elif pred.probabilities is not None:
            k = len(pred.probabilities[0]) if n else 0
            outputs.append({"name": "predict_proba", "shape": [n, k], "datatype": "FP64",
                            "data": [p for row in pred.probabilities for p in row]})
        elif wanted:
            raise BadRequest("output predict_proba: this model has no probabilities")
    out: dict[str, Any] = {"model_name": info.name, "model_version": info.version,
                           "outputs": outputs}
    if isinstance(request.get("id"), str):
        out["id"] = request["id"]
    return orjson.dumps(out)


_EXAMPLE_MAX_FEATURES = 16


def example_body(url: str, n_features: int | None) -> str:
    """A request body the route at ``url`` accepts for a model of ``n_features`` inputs
    (zeros; with an unknown or large width, ``...`` stands for the rest)."""
    if n_features is not None and 0 < n_features <= _EXAMPLE_MAX_FEATURES:
        row = "[" + ", ".join(["0.0"] * n_features) + "]"
    else:
        row = "[0.0, ...]"
    if url.endswith("/infer"):
        width = n_features if n_features is not None else -1
        return (f'{{"inputs": [{{"name": "input-0", "shape": [1, {width}], '
                f'"datatype": "FP64", "data": {row}}}]}}')
    if url.endswith(":predict"):
        return f'{{"instances": [{row}]}}'
    return f'{{"features": {row}}}'


def not_json(exc: NotJSON, content_type: bytes | None, url: str,
             n_features: int | None) -> ModelshipError:
    """The answer to a body that does not parse as JSON: 400 when it was sent as JSON or
    untyped, 415 when declared as another type; either way with a curl line to copy."""
    hint = ("send a JSON body, e.g. curl -H 'Content-Type: application/json' -d "
            f"{shlex.quote(example_body(url, n_features))} {shlex.quote(url)}")
    declared = content_type.split(b";", 1)[0].strip().lower().decode("latin-1") \
        if content_type else ""
    if not declared or declared == "application/json" or declared.endswith("+json"):
        return BadRequest(f"{exc.message}; {hint}")
    return UnsupportedMediaType(f"the body is sent as {declared} and is not JSON "
                                f"({exc.message}); {hint}")


def _input_metadata(info: ModelInfo, width: int) -> list[dict[str, Any]]:
    kinds = info.input_kinds
    if kinds is None:
        return [{"name": "input-0", "datatype": "FP64", "shape": [-1, width]}]
    names = info.input_columns or [f"input-{i}" for i in range(len(kinds))]
    return [{"name": n, "datatype": V2_DATATYPE[k], "shape": [-1, 1]}
            for n, k in zip(names, kinds, strict=True)]


def v2_model_metadata(info: ModelInfo) -> dict[str, Any]:
    """V2 model metadata: name, versions, platform, input and output tensors."""
    width = info.n_features if info.n_features is not None else -1
    outputs: list[dict[str, Any]] = [
        {"name": "predict", "datatype": info.label_datatype, "shape": [-1]}
    ]
    if info.has_proba and info.classes is not None:
        outputs.append({"name": "predict_proba", "datatype": "FP64",
                        "shape": [-1, len(info.classes)]})
    meta: dict[str, Any] = {
        "name": info.name,
        "versions": [info.version],
        "platform": f"{info.flavor}",
        "inputs": _input_metadata(info, width),
        "outputs": outputs,
    }
    params: dict[str, Any] = {"estimator": info.estimator}
    if info.classes is not None:
        params["classes"] = info.classes
    if info.feature_names is not None:
        params["feature_names"] = info.feature_names
    meta["parameters"] = params
    return meta


# --- OpenAPI documentation of the hand-parsed bodies -------------------------------

_NUMBERS = {"type": "array", "items": {"type": "number"}}
ERROR_SCHEMA = {"type": "object", "properties": {"error": {"type": "string"}},
                "required": ["error"]}
PREDICT_BODY = {
    "oneOf": [
        {"type": "object", "title": "Single", "required": ["features"],
         "properties": {"features": _NUMBERS}},
        {"type": "object", "title": "Batch", "required": ["instances"],
         "properties": {"instances": {"type": "array", "items": _NUMBERS}}},
    ]
}
_ROWS = {"type": "array", "items": {"oneOf": [
    _NUMBERS, {"type": "object", "title": "Named features",
               "additionalProperties": {"type": "number"}}]}}
V1_BODY = {"type": "object",
           "properties": {"instances": _ROWS, "inputs": _ROWS, "parameters": {
               "type": "object", "properties": {"method": {"enum": list(METHODS)}}}}}
V2_BODY = {
    "type": "object",
    "required": ["inputs"],
    "properties": {
        "id": {"type": "string"},
        "inputs": {"type": "array", "items": {
            "type": "object",
            "required": ["name", "shape", "datatype", "data"],
            "properties": {
                "name": {"type": "string"},
                "shape": {"type": "array", "items": {"type": "integer"}},
                "datatype": {"type": "string",
                             "enum": sorted({*V2_SUPPORTED, *TYPED_DATATYPES})},
                "data": {"type": "array", "items": {
                    "type": ["number", "string", "boolean", "null"]}},
            },
        }},
        "outputs": {"type": "array", "items": {
            "type": "object", "required": ["name"],
            "properties": {"name": {"type": "string", "enum": list(V2_OUTPUTS)}},
        }},
    },
}
INVOCATIONS_BODY = {
    "type": "object",
    "description": "exactly one of dataframe_split, dataframe_records, instances, inputs",
    "properties": {
        "dataframe_split": {"type": "object", "properties": {
            "columns": {"type": "array", "items": {"type": "string"}},
            "data": {"type": "array", "items": _NUMBERS}}},
        "dataframe_records": {"type": "array", "items": {
            "type": "object", "additionalProperties": {"type": "number"}}},
        "instances": _ROWS,
        "inputs": {"oneOf": [_ROWS, {"type": "object", "additionalProperties": _NUMBERS}]},
        "params": {"type": "object", "properties": {"method": {"enum": list(METHODS)}}},
    },
}
