"""Tensors as raw bytes: the Open Inference Protocol's binary tensor extension over HTTP,
and the byte and typed forms of tensors that gRPC and this extension share.

Over HTTP a V2 request may be a JSON header followed by raw tensor bytes: the
``Inference-Header-Content-Length`` request header gives the JSON part's length, and each
input sent in binary carries ``"parameters": {"binary_data_size": N}`` instead of
``"data"`` (the inputs' bytes follow one another in their order). Outputs are answered in
binary when the request's ``parameters.binary_data_output`` is true, or per output with
``outputs[i].parameters.binary_data``; the answer is then ``application/octet-stream``:
a JSON header (``binary_data_size`` on each binary output) of the length that the
``Inference-Header-Content-Length`` response header gives, then the bytes. This is what
tritonclient.http sends and expects at its defaults; the serving middleware answers it
on its fast path (:mod:`.fastpath`), as it answers JSON.

Raw tensors are little-endian and row-major with no padding (the specification's layout;
``BYTES`` elements are each a 4-byte little-endian length and the bytes). Every byte
count is checked against shape x datatype before anything is read: a size that does not
agree, or one that runs past the body, is a 400 naming the input.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import orjson

from .dataplane import Validator, _type_name
from .errors import BadRequest
from .model import ModelInfo, Prediction
from .protocols import (
    V2_DTYPES,
    V2_KNOWN,
    check_input_datatype,
    flat_labels,
    tensor_values,
    tensors_to_rows,
    unsupported,
    v2_response,
)
from .typed import decode_bytes

if TYPE_CHECKING:
    from .dataplane import DataPlane, ShadowContext

HEADER = "inference-header-content-length"
#: The V2 extensions this runtime implements (server metadata lists them).
EXTENSIONS = ("binary_tensor_data",)
OUTPUT_NAMES = ("predict", "predict_proba")
_OUTPUT_DTYPES: dict[str, np.dtype[Any]] = {
    "FP64": np.dtype("<f8"), "INT64": np.dtype("<i8"), "BOOL": np.dtype("?"),
}
_MAX_DIMS = 2


def check_datatype(datatype: object, where: str) -> str:
    """``datatype`` when it is one this runtime takes; a BadRequest naming it otherwise."""
    if not isinstance(datatype, str) or datatype not in V2_KNOWN:
        raise BadRequest(f"{where}.datatype {datatype!r} is not a V2 datatype")
    if datatype not in V2_DTYPES:
        raise unsupported(datatype, where)
    return datatype


def check_shape(shape: object, where: str) -> list[int]:
    """``shape`` as ``[features]`` or ``[rows, features]`` of non-negative integers."""
    if (not isinstance(shape, list | tuple) or not 1 <= len(shape) <= _MAX_DIMS
            or any(type(d) is not int or d < 0 for d in shape)):
        raise BadRequest(f"{where}.shape must be [features] or [rows, features] with "
                         "non-negative integers")
    return list(shape)


def to_rows(values: np.ndarray, shape: list[int], datatype: str, v: Validator,
            where: str) -> np.ndarray:
    """A flat array of ``shape``'s element count as the float64 matrix the model takes,
    checked against the model's width, the batch limit and finiteness."""
    n_rows, width = v.tensor_shape(shape, where)
    rows = values.astype(np.float64).reshape(n_rows, width)
    if values.dtype.kind == "f":
        v.check_finite(rows, f"{where}.data")
    return rows


def _bools(raw: bytes | memoryview, source: str) -> np.ndarray:
    """A raw BOOL tensor, each byte 0 (false) or 1 (true)."""
    values = np.frombuffer(raw, dtype=np.uint8)
    if (values > 1).any():
        i = int(np.argmax(values > 1))
        raise BadRequest(f"{source}: element {i} is byte {int(values[i])}; BOOL elements "
                         "are 0 (false) or 1 (true)")
    return values.view(np.bool_)


def rows_from_bytes(raw: bytes | memoryview, shape: list[int], datatype: str, v: Validator,
                    where: str, source: str) -> np.ndarray:
    """Rows of input ``where`` from ``source``, a raw little-endian tensor whose size must
    be shape x datatype exactly."""
    dtype = V2_DTYPES[datatype]
    need = math.prod(shape) * dtype.itemsize
    if len(raw) != need:
        raise BadRequest(f"{source} has {len(raw)} bytes; {where}.shape {shape} of {datatype} "
                         f"needs {need}")
    values = _bools(raw, source) if datatype == "BOOL" else np.frombuffer(raw, dtype=dtype)
    return to_rows(values, shape, datatype, v, where)


def wanted_outputs(names: list[str], where: str = "outputs") -> list[str]:
    """Requested output names, each ``predict`` or ``predict_proba``."""
    for i, name in enumerate(names):
        if name not in OUTPUT_NAMES:
            raise BadRequest(f"{where}[{i}].name {name!r} is not an output of this model; "
                             "outputs are predict, predict_proba")
        if name in names[:i]:
            raise BadRequest(f"{where}[{i}].name {name!r} is asked for twice; ask for each "
                             "output once")
    return names


def output_tensors(pred: Prediction, info: ModelInfo, names: list[str] | None
                   ) -> list[tuple[str, str, list[int], np.ndarray | list[str]]]:
    """(name, datatype, shape, values) of each output: all of them when ``names`` is
    None or empty; ``predict_proba`` asked of a model without probabilities is a 400."""
    n = len(pred.labels)
    out: list[tuple[str, str, list[int], np.ndarray | list[str]]] = []
    for name in names or OUTPUT_NAMES:
        if name == "predict":
            dt = info.label_datatype
            labels, shape = flat_labels(pred.labels)
            if dt == "BYTES":
                out.append((name, dt, shape, [str(x) for x in labels]))
            else:
                out.append((name, dt, shape, np.asarray(labels, dtype=_OUTPUT_DTYPES[dt])))
        elif pred.probabilities is not None:
            probs = np.asarray(pred.probabilities, dtype=np.float64).reshape(n, -1)
            out.append((name, "FP64", list(probs.shape), probs.reshape(-1)))
        elif names:
            raise BadRequest("output predict_proba: this model has no probabilities")
    return out


def tensor_bytes(datatype: str, values: np.ndarray | list[str]) -> bytes:
    """A tensor's raw little-endian bytes (``BYTES``: 4-byte length, then the bytes)."""
    if isinstance(values, list):
        parts = []
        for s in values:
            b = s.encode()
            parts.append(len(b).to_bytes(4, "little") + b)
        return b"".join(parts)
    return np.ascontiguousarray(values, dtype=_OUTPUT_DTYPES[datatype]).tobytes()


# --- HTTP: the binary tensor extension ----------------------------------------------


def header_length(value: str | None, body_length: int) -> int | None:
    """The ``Inference-Header-Content-Length`` request header as a checked length."""
    if value is None:
        return None
    try:
        n = int(value)
    except ValueError:
        raise BadRequest(f"Inference-Header-Content-Length {value!r} is not an integer"
                         ) from None
    if n < 0:
        raise BadRequest(f"Inference-Header-Content-Length {n} is negative")
    if n > body_length:
        raise BadRequest(f"Inference-Header-Content-Length {n} is beyond the body of "
                         f"{body_length} bytes")
    return n


def _flag(params: object, key: str, where: str) -> bool:
    if params is None:
        return False
    if not isinstance(params, dict):
        raise BadRequest(f"{where}.parameters must be an object, got {_type_name(params)}")
    value = params.get(key, False)
    if type(value) is not bool:
        raise BadRequest(f"{where}.parameters.{key} must be true or false")
    return value


def parse(body: bytes, json_length: int | None, v: Validator, info: ModelInfo
          ) -> tuple[np.ndarray, dict[str, Any]]:
    """Rows of a V2 request whose input is raw bytes after a JSON header of
    ``json_length`` bytes (None: the whole body is JSON, with binary outputs asked for),
    and the header. Inputs given as ``data`` are read by the JSON route's rules."""
    from .dataplane import loads
    from .protocols import v2_rows

    header = body if json_length is None else body[:json_length]
    obj = loads(bytes(header))
    if not isinstance(obj, dict):
        raise BadRequest(f"the inference header must be a JSON object, got {_type_name(obj)}")
    tail = memoryview(body)[len(header):]
    inputs = obj.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise BadRequest('missing field: "inputs" must be a non-empty array of tensors')
    t = inputs[0]
    if len(inputs) != 1 or v.kinds is not None or (
            isinstance(t, dict) and t.get("datatype") == "BYTES"):
        _check_outputs(obj, info)
        return _by_columns(inputs, tail, v, info), obj
    if not isinstance(t, dict):
        raise BadRequest(f"inputs[0] must be an object, got {_type_name(t)}")
    params = t.get("parameters")
    size = params.get("binary_data_size") if isinstance(params, dict) else None
    _check_outputs(obj, info)
    if size is None:
        if len(tail):
            raise BadRequest(f"the body has {len(tail)} bytes after the inference header but "
                             "no input declares parameters.binary_data_size")
        rows, _ = v2_rows({k: val for k, val in obj.items() if k != "outputs"}, v, info)
        return rows, obj
    if type(size) is not int or size < 0:
        raise BadRequest("inputs[0].parameters.binary_data_size must be a non-negative integer")
    if "data" in t:
        raise BadRequest('inputs[0] has both "data" and parameters.binary_data_size; send one')
    for key in ("name", "shape", "datatype"):
        if key not in t:
            raise BadRequest(f"missing field: inputs[0].{key}")
    if not isinstance(t["name"], str):
        raise BadRequest("inputs[0].name must be a string")
    datatype = check_datatype(t["datatype"], "inputs[0]")
    shape = check_shape(t["shape"], "inputs[0]")
    if size > len(tail):
        raise BadRequest(f"inputs[0].parameters.binary_data_size {size} is beyond the "
                         f"{len(tail)} bytes after the inference header")
    if size != len(tail):
        raise BadRequest(f"the body has {len(tail) - size} bytes after inputs[0]'s "
                         f"binary_data_size {size}")
    return rows_from_bytes(tail, shape, datatype, v, "inputs[0]",
                           "inputs[0].parameters.binary_data_size"), obj


def raw_values(raw: bytes | memoryview, shape: list[int], datatype: str, where: str,
               source: str) -> list[Any]:
    """The elements of a raw tensor of ``shape`` and ``datatype`` (numbers, booleans or,
    for BYTES, strings), its size checked."""
    count = math.prod(shape)
    if datatype == "BYTES":
        return decode_bytes(raw, count, source)
    dtype = V2_DTYPES[datatype]
    need = count * dtype.itemsize
    if len(raw) != need:
        raise BadRequest(f"{source} has {len(raw)} bytes; {where}.shape {shape} of {datatype} "
                         f"needs {need}")
    array = _bools(raw, source) if datatype == "BOOL" else np.frombuffer(raw, dtype=dtype)
    values: list[Any] = array.tolist()
    return values


def _by_columns(inputs: list[Any], tail: memoryview, v: Validator, info: ModelInfo
                ) -> np.ndarray:
    """Rows of a request going by columns (several inputs, or strings), each input in
    ``data`` or in binary after the header, in their order."""
    if len(inputs) > max(v.max_columns, 1):
        raise BadRequest(f"{len(inputs)} input tensors; the maximum is {v.max_columns}")
    tensors: list[tuple[str, list[int], str, list[Any]]] = []
    pos = 0
    for i, t in enumerate(inputs):
        where = f"inputs[{i}]"
        if not isinstance(t, dict):
            raise BadRequest(f"{where} must be an object, got {_type_name(t)}")
        for key in ("name", "shape", "datatype"):
            if key not in t:
                raise BadRequest(f"missing field: {where}.{key}")
        if not isinstance(t["name"], str):
            raise BadRequest(f"{where}.name must be a string")
        datatype = check_input_datatype(t["datatype"], where, v)
        shape = check_shape(t["shape"], where)
        params = t.get("parameters")
        size = params.get("binary_data_size") if isinstance(params, dict) else None
        if size is None:
            from .protocols import _flatten

            data = t.get("data")
            if not isinstance(data, list):
                raise BadRequest(f"missing field: {where}.data (or parameters.binary_data_size)")
            flat = _flatten(data)
            if len(flat) != math.prod(shape):
                raise BadRequest(f"{where}.shape {shape} needs {math.prod(shape)} elements; "
                                 f"data has {len(flat)}")
        else:
            if type(size) is not int or size < 0:
                raise BadRequest(f"{where}.parameters.binary_data_size must be a "
                                 "non-negative integer")
            if pos + size > len(tail):
                raise BadRequest(f"{where}.parameters.binary_data_size {size} is beyond the "
                                 f"{len(tail) - pos} bytes left after the inference header")
            flat = raw_values(tail[pos:pos + size], shape, datatype, where,
                              f"{where}.parameters.binary_data_size")
            pos += size
        tensors.append((t["name"], shape, datatype, tensor_values(flat, datatype, where)))
    if pos != len(tail):
        raise BadRequest(f"the body has {len(tail) - pos} bytes after the inputs' "
                         "binary data")
    return tensors_to_rows(tensors, v, info)


def _check_outputs(obj: dict[str, Any], info: ModelInfo) -> None:
    wanted = obj.get("outputs")
    if wanted is None:
        return
    if not isinstance(wanted, list) or not all(
            isinstance(o, dict) and isinstance(o.get("name"), str) for o in wanted):
        raise BadRequest('"outputs" must be an array of {"name": ...} objects')
    names = wanted_outputs([o["name"] for o in wanted])
    if "predict_proba" in names and not info.has_proba:
        raise BadRequest("output predict_proba: this model has no probabilities")
    for i, o in enumerate(wanted):
        _flag(o.get("parameters"), "binary_data", f"outputs[{i}]")


def wants_binary(obj: dict[str, Any]) -> bool:
    """Whether a parsed V2 request asks for any output in binary (its flags checked)."""
    default = _flag(obj.get("parameters"), "binary_data_output", "the request")
    wanted = obj.get("outputs")
    if not wanted:
        return default
    return any([_binary_of(o, default, f"outputs[{i}]") for i, o in enumerate(wanted)])


def _binary_of(o: dict[str, Any], default: bool, where: str) -> bool:
    params = o.get("parameters")
    if isinstance(params, dict) and "binary_data" in params:
        return _flag(params, "binary_data", where)
    return default


def render(pred: Prediction, info: ModelInfo, obj: dict[str, Any]) -> tuple[bytes, int]:
    """The answer with binary outputs: (body, length of its JSON header)."""
    default = _flag(obj.get("parameters"), "binary_data_output", "the request")
    wanted = obj.get("outputs") or []
    binary = {o["name"]: _binary_of(o, default, "") for o in wanted}
    names = [o["name"] for o in wanted]
    outputs: list[dict[str, Any]] = []
    blobs: list[bytes] = []
    for name, datatype, shape, values in output_tensors(pred, info, names):
        entry: dict[str, Any] = {"name": name, "datatype": datatype, "shape": shape}
        if binary.get(name, default):
            raw = tensor_bytes(datatype, values)
            entry["parameters"] = {"binary_data_size": len(raw)}
            blobs.append(raw)
        else:
            entry["data"] = values if isinstance(values, list) else values.tolist()
        outputs.append(entry)
    head: dict[str, Any] = {"model_name": info.name, "model_version": info.version,
                            "outputs": outputs}
    if isinstance(obj.get("id"), str):
        head["id"] = obj["id"]
    header = orjson.dumps(head)
    return header + b"".join(blobs), len(header)


OCTET_STREAM = "application/octet-stream"


@dataclass(frozen=True)
class Answer:
    """A V2 answer with binary outputs: the body and the length of its JSON header."""

    body: bytes
    json_length: int

    def headers(self) -> dict[str, str]:
        """Its HTTP headers (content type included)."""
        return {"Inference-Header-Content-Length": str(self.json_length),
                "Content-Type": OCTET_STREAM}

    def asgi_headers(self) -> list[tuple[bytes, bytes]]:
        """Its headers as ASGI sends them (content length excluded)."""
        return [(b"content-type", OCTET_STREAM.encode()),
                (HEADER.encode(), str(self.json_length).encode())]


def answer(pred: Prediction, info: ModelInfo, obj: dict[str, Any]) -> Answer:
    """The binary answer to request ``obj`` (which :func:`wants_binary`)."""
    return Answer(*render(pred, info, obj))


async def v2_infer(plane: DataPlane, raw: bytes, header: str,
                   shadow: ShadowContext | None = None) -> bytes | Answer:
    """``POST .../infer`` with an ``Inference-Header-Content-Length`` header, after the
    body is read (and the model name checked): a JSON answer, or a binary one when asked."""
    batcher = plane.batcher
    batcher.arriving += 1  # lets a micro-batch wait for requests still being parsed
    try:
        plane.check_ready()
        info = plane.model.info
        rows, obj = parse(raw, header_length(header, len(raw)), plane.validator, info)
        as_binary = wants_binary(obj)
    finally:
        batcher.arriving -= 1
    result = await plane.infer(rows, shadow)
    if as_binary:
        return answer(result.prediction, info, obj)
    return v2_response(result.prediction, info, obj)
