"""MLflow's scoring protocol, as ``mlflow models serve`` answers ``POST /invocations``.

Clients written against an MLflow scoring server (MLflow 2.x and 3.x) keep working:
a JSON body with exactly one of ``dataframe_split``, ``dataframe_records``,
``instances`` or ``inputs`` (optionally ``params``), or a ``text/csv`` body whose first
row names the columns. The answer is ``{"predictions": [...]}`` and an error is
``{"error_code": "BAD_REQUEST", "message": "..."}``, the shape of MLflow's
``MlflowException``. As MLflow does, the MLmodel's pyfunc ``predict_fn`` decides what is
returned (``predict`` or ``predict_proba``); ``"params": {"method": "predict_proba"}``
asks for probabilities per request.

Everything is parsed without pandas: JSON by orjson, CSV by the standard library's
``csv`` module, each row checked as the other protocols check theirs. Like the other
routes, a body declared as neither is read as JSON (``curl -d`` declares a form). Named columns are
matched to the model's input names (the MLmodel signature's, else the estimator's
``feature_names_in_``) and put in the model's order; a model without input names takes
columns by position, as scikit-learn does with an unnamed DataFrame.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Iterator
from dataclasses import replace
from typing import Any

import numpy as np
import orjson

from .dataplane import Validator, _type_name, loads
from .errors import BadRequest, ModelshipError, NotJSON, UnsupportedMediaType
from .model import ModelInfo, Prediction
from .protocols import named_rows, unknown_or_missing, wants_proba
from .typed import BOOL, STRING

FORMATS = ("dataframe_split", "dataframe_records", "instances", "inputs")
_REQUIRED = ("the body must be a JSON object with exactly one of the input fields "
             "dataframe_split, dataframe_records, instances, inputs")
ERROR_CODES = {400: "BAD_REQUEST", 401: "UNAUTHENTICATED", 404: "RESOURCE_DOES_NOT_EXIST",
               413: "BAD_REQUEST", 415: "BAD_REQUEST", 503: "TEMPORARILY_UNAVAILABLE"}
"""HTTP status -> MLflow error code (``mlflow.protos.databricks_pb2``)."""


def error_body(exc: ModelshipError) -> bytes:
    """An error as MLflow's scoring server writes it."""
    return orjson.dumps({"error_code": ERROR_CODES.get(exc.status_code, "INTERNAL_ERROR"),
                         "message": exc.message})


def default_proba(info: ModelInfo) -> bool:
    """Whether ``/invocations`` answers probabilities when the request does not say:
    when the MLmodel's pyfunc ``predict_fn`` is ``predict_proba``."""
    return info.predict_fn == "predict_proba" and info.has_proba


def _check_predict_fn(info: ModelInfo) -> None:
    if info.predict_fn not in ("predict", "predict_proba"):
        raise BadRequest(f"the MLmodel of {info.name} serves pyfunc predict_fn "
                         f"{info.predict_fn!r}; this runtime answers predict and "
                         "predict_proba only (send params.method)")


def parse(raw: bytes, content_type: bytes | None, v: Validator, info: ModelInfo
          ) -> tuple[np.ndarray, bool]:
    """The rows of an ``/invocations`` body and whether to answer probabilities."""
    mime = content_type.split(b";", 1)[0].strip().lower() if content_type else b""
    if mime == b"text/csv":
        _check_predict_fn(info)
        return csv_rows(raw, v, info), default_proba(info)
    try:
        body = loads(raw)
    except NotJSON as exc:
        if mime and mime != b"application/json" and not mime.endswith(b"+json"):
            raise UnsupportedMediaType(f"the body is sent as {mime.decode('latin-1')} and is "
                                       f"not JSON ({exc.message}): send application/json or "
                                       "text/csv") from None
        raise
    if not isinstance(body, dict):
        raise BadRequest(f"{_REQUIRED}; got {_type_name(body)}")
    present = [k for k in FORMATS if k in body]
    if len(present) != 1:
        raise BadRequest(f"{_REQUIRED}; got the fields {sorted(body)}")
    params = body.get("params")
    if params is None or (isinstance(params, dict) and "method" not in params):
        _check_predict_fn(info)
    proba = wants_proba(params, "params", info, default_proba(info))
    key = present[0]
    data = body[key]
    if key == "dataframe_split":
        return split_rows(data, v, info), proba
    if key == "dataframe_records":
        return record_rows(data, v, info, key), proba
    if isinstance(data, dict):  # {"inputs": {"column": [values], ...}}: columnar
        return column_rows(data, v, info, key), proba
    if isinstance(data, list) and data and isinstance(data[0], dict):
        return record_rows(data, v, info, key), proba
    return v.rows(data, key), proba


def response(pred: Prediction, proba: bool) -> bytes:
    """``{"predictions": [...]}``: labels or values, or rows of class probabilities."""
    return orjson.dumps({"predictions": pred.probabilities if proba else pred.labels})


def _order(names: list[Any], info: ModelInfo, where: str) -> list[int] | None:
    """Positions of the model's inputs among ``names`` (None: already in order, or the
    model has no input names and takes them by position)."""
    # pandas names a frame's columns 0, 1, ... when nobody named them, and its JSON keeps
    # them numbers: they are the columns "0", "1", ... (as MLflow's signatures name them)
    names = [str(n) if type(n) is int else n for n in names]
    if not all(isinstance(n, str) for n in names):
        raise BadRequest(f"{where} must be an array of column names (strings, or the "
                         "integers pandas gives unnamed columns)")
    columns = info.input_columns
    if columns is None:
        if len(set(names)) != len(names):
            raise BadRequest(f"{where} repeats a column name")
        return None
    if len(names) != len(columns) or set(names) != set(columns):
        raise unknown_or_missing(names, columns, where)
    if names == columns:
        return None
    at = {n: i for i, n in enumerate(names)}
    return [at[c] for c in columns]


def split_rows(data: object, v: Validator, info: ModelInfo) -> np.ndarray:
    """``{"columns": [...], "data": [[...], ...]}`` (pandas' ``split`` orient; the
    ``index`` is ignored, ``columns`` may be left out to go by position)."""
    if not isinstance(data, dict):
        raise BadRequest('dataframe_split must be an object like {"columns": [...], '
                         f'"data": [[...]]}}, got {_type_name(data)}')
    if "data" not in data:
        raise BadRequest("missing field: dataframe_split.data")
    names = data.get("columns")
    order = None
    if names is not None:
        if not isinstance(names, list):
            raise BadRequest("dataframe_split.columns must be an array of column names")
        order = _order(names, info, "dataframe_split.columns")
        rows = data["data"]
        if isinstance(rows, list):
            for r, row in enumerate(rows):
                if isinstance(row, list) and len(row) != len(names):
                    raise BadRequest(f"dataframe_split.data[{r}] has {len(row)} values for "
                                     f"{len(names)} columns")
    rows = data["data"]
    if order is not None and v.kinds is not None:  # typed values: check in the model's order
        return v.rows(_reordered(rows, order, "dataframe_split.data"), "dataframe_split.data")
    arr = v.rows(rows, "dataframe_split.data")
    return arr if order is None else np.ascontiguousarray(arr[:, order])


def _reordered(rows: object, order: list[int], where: str) -> list[list[Any]]:
    """Rows of values (checked to be arrays of the columns' width) in the model's order."""
    if not isinstance(rows, list):
        raise BadRequest(f"{where} must be an array of rows, got {_type_name(rows)}")
    out = []
    for r, row in enumerate(rows):
        if not isinstance(row, list) or len(row) != len(order):
            raise BadRequest(f"{where}[{r}] must be an array of {len(order)} values")
        out.append([row[i] for i in order])
    return out


def record_rows(data: object, v: Validator, info: ModelInfo, where: str) -> np.ndarray:
    """``[{"column": value, ...}, ...]`` (pandas' ``records`` orient)."""
    if not isinstance(data, list):
        raise BadRequest(f"{where} must be an array of records, got {_type_name(data)}")
    if not data:
        raise BadRequest(f"{where} is empty: send at least one row")
    if len(data) > v.max_rows:
        raise BadRequest(f"{where} has {len(data)} rows; the maximum is {v.max_rows}")
    if info.input_columns is None and isinstance(data[0], dict):
        # no input names: the columns in the order the first record gives them, as pandas
        names = list(data[0])
        info = replace(info, input_columns=names)
    return v.rows(named_rows(data, info, where), where)


def column_rows(data: dict[str, Any], v: Validator, info: ModelInfo, where: str) -> np.ndarray:
    """``{"column": [values], ...}`` (the TF-serving columnar form MLflow accepts)."""
    names = list(data)
    order = _order(names, info, where)
    cols = list(data.values())
    for name, col in zip(names, cols, strict=True):
        if not isinstance(col, list):
            raise BadRequest(f"{where}.{name} must be an array of values, got {_type_name(col)}")
        if len(col) != len(cols[0]):
            raise BadRequest(f"{where}: column {name!r} has {len(col)} values, column "
                             f"{names[0]!r} has {len(cols[0])}")
    rows = [list(r) for r in zip(*cols, strict=True)]
    if order is not None and v.kinds is not None:
        return v.rows(_reordered(rows, order, where), where)
    arr = v.rows(rows, where)
    return arr if order is None else np.ascontiguousarray(arr[:, order])


def csv_rows(raw: bytes, v: Validator, info: ModelInfo) -> np.ndarray:
    """A CSV body: a header row of column names, then one row per line (empty cells are
    missing values, refused unless the model accepts NaN)."""
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise BadRequest(f"the CSV body is not UTF-8: {exc}") from None
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader, None)
        if header is None:
            raise BadRequest("the CSV body is empty: send a header row and at least one row")
        order = _order([h.strip() for h in header], info, "the CSV header")
        width = len(header)
        if v.n_features is not None and width != v.n_features:
            raise BadRequest(f"the CSV header has {width} columns; the model takes "
                             f"{v.n_features} features")
        if v.kinds is not None:
            return _typed_csv(reader, header, order, v)
        rows: list[list[float]] = []
        for n, line in _csv_rows(reader, width, v.max_rows):
            try:
                rows.append([float(c) if c.strip() else float("nan") for c in line])
            except ValueError:
                bad = next(i for i, c in enumerate(line) if not _is_float(c))
                raise BadRequest(f"CSV row {n}, column {header[bad]!r}: {line[bad]!r} is not "
                                 "a number") from None
    except csv.Error as exc:
        raise BadRequest(f"the CSV body does not parse: {exc}") from None
    if not rows:
        raise BadRequest("the CSV body has a header but no rows")
    arr = np.array(rows, dtype=np.float64)
    v.check_finite(arr, "CSV")
    return arr if order is None else np.ascontiguousarray(arr[:, order])


def _csv_rows(reader: Iterable[list[str]], width: int, max_rows: int
              ) -> Iterator[tuple[int, list[str]]]:
    """The non-empty lines of a CSV body, numbered from 1, each ``width`` cells long;
    BadRequest past ``max_rows`` rows or at a line of another width."""
    n = 0
    for line in reader:
        if not line:
            continue
        n += 1
        if n > max_rows:
            raise BadRequest(f"the CSV body has more than {max_rows} rows; the maximum "
                             f"is {max_rows}")
        if len(line) != width:
            raise BadRequest(f"CSV row {n} has {len(line)} values for {width} columns")
        yield n, line


def _typed_cell(text: str, kind: str) -> Any:
    """A CSV cell as the value a column of ``kind`` takes (empty: missing)."""
    if not text.strip():
        return None
    if kind == BOOL:
        low = text.strip().lower()
        return True if low in ("true", "1") else False if low in ("false", "0") else text
    if kind == STRING:
        return text
    try:
        return float(text)
    except ValueError:
        return text  # a number column: refused by the validator, naming the cell


def _typed_csv(reader: Any, header: list[str], order: list[int] | None, v: Validator
               ) -> np.ndarray:
    """The rows of a CSV body for a model of typed columns (:mod:`.typed`)."""
    assert v.kinds is not None
    width = len(header)
    at = order if order is not None else list(range(width))
    kinds = v.kinds
    rows: list[list[Any]] = []
    for _, line in _csv_rows(reader, width, v.max_rows):
        rows.append([_typed_cell(line[i], kinds[j]) for j, i in enumerate(at)])
    if not rows:
        raise BadRequest("the CSV body has a header but no rows")
    return v.rows(rows, "CSV")


def _is_float(cell: str) -> bool:
    if not cell.strip():
        return True
    try:
        float(cell)
    except ValueError:
        return False
    return True
