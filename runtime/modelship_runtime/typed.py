"""Models whose inputs are not all numbers, and models fitted on DataFrames.

Most models take a float64 matrix, and every protocol parses its body straight into one
(:class:`.dataplane.Validator`). Two kinds of model need more:

- a pipeline fitted on a pandas DataFrame with string columns (a ``ColumnTransformer``
  sending ``OneHotEncoder`` the categorical columns, numbers to a scaler), or on text (a
  ``TfidfVectorizer`` first): its rows are typed, each column a number, a string or a
  boolean. The MLmodel signature says which (``infer_signature(df, y)``); without one, a
  model holding a fitted encoder of string categories or a ``ColumnTransformer`` takes
  numbers and strings as they come. These rows travel as an object matrix, one Python
  value per cell, checked column by column here; a text model gets its one column as
  the 1-D array of strings the vectorizer takes.
- a pipeline told to pass DataFrames between its steps (``set_output(transform=
  "pandas")``) is set back to arrays at load, for the same reason as the next point.
- a ``ColumnTransformer`` fitted on a DataFrame selects its columns by name, which
  scikit-learn allows on DataFrames only, and the runtime carries no pandas (importing it
  costs every cold start most of a second). At load its fitted column selections are
  rewritten into the positions its ``feature_names_in_`` gives them, so it takes the
  rows the runtime builds, in the model's column order, and answers as it would on the
  DataFrame (the zoo test, ``tests/runtime/test_zoo.py``, compares every answer).

Models of numbers only never pass through this module per request.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import numpy as np

from .errors import BadRequest

NUMBER, STRING, BOOL, ANY = "number", "string", "bool", "any"
#: MLflow column types (``mlflow.types.DataType``) and the kind of value each takes.
MLFLOW_KINDS = {"double": NUMBER, "float": NUMBER, "long": NUMBER, "integer": NUMBER,
                "boolean": BOOL, "string": STRING}
#: V2 datatypes of one kind of value.
V2_DATATYPE = {NUMBER: "FP64", STRING: "BYTES", BOOL: "BOOL", ANY: "BYTES"}


def _children(est: Any) -> Iterator[Any]:
    """The estimators directly inside ``est`` (pipeline steps, column transformers, unions,
    meta-estimators)."""
    for name in ("steps", "transformer_list", "estimators"):
        items = getattr(est, name, None)
        for item in items if isinstance(items, list) else ():
            if isinstance(item, tuple) and len(item) >= 2:
                yield item[1]
    fitted = getattr(est, "transformers_", None)
    for item in fitted if isinstance(fitted, list) else ():
        if isinstance(item, tuple) and len(item) >= 2:
            yield item[1]
    for name in ("estimator_", "base_estimator_", "regressor_", "classifier_"):
        inner = getattr(est, name, None)
        if inner is not None:
            yield inner
    inner = getattr(est, "estimators_", None)
    if isinstance(inner, list):  # meta-estimators (a forest's trees hold no inputs)
        for item in inner:
            if hasattr(item, "get_params") and not hasattr(item, "tree_"):
                yield item


def walk(est: Any, depth: int = 0) -> Iterator[Any]:
    """``est`` and every estimator inside it."""
    yield est
    if depth < 16:
        for child in _children(est):
            if hasattr(child, "get_params"):
                yield from walk(child, depth + 1)


def first_step(est: Any) -> Any:
    """The estimator a pipeline hands its input to (``est`` itself when not a pipeline)."""
    while hasattr(est, "steps") and est.steps:
        est = est.steps[0][1]
    return est


def takes_text(est: Any) -> bool:
    """Whether the model's input is one column of text: a pipeline starting with (or an
    estimator that is) one of scikit-learn's text vectorizers."""
    # by name: importing sklearn.feature_extraction.text would cost every cold start
    return any(c.__name__ == "_VectorizerMixin" and c.__module__.startswith("sklearn.")
               for c in type(first_step(est)).__mro__)


def _positions(columns: Any, names: list[str]) -> Any:
    """A fitted column selection by name as positions; other selections as they are."""
    at = {n: i for i, n in enumerate(names)}
    if isinstance(columns, str):
        return at[columns]
    if isinstance(columns, list | tuple | np.ndarray) and len(columns) and all(
            isinstance(c, str) for c in columns):
        return [at[c] for c in columns]
    return columns


def by_position(est: Any) -> int:
    """Rewrite every fitted ``ColumnTransformer`` in ``est`` that selects columns by name
    to select them by position; the number rewritten. KeyError when a name is not one of
    its ``feature_names_in_`` (the model is then served as it is)."""
    count = 0
    for part in walk(est):
        names = getattr(part, "feature_names_in_", None)
        fitted = getattr(part, "transformers_", None)
        if names is None or not isinstance(fitted, list) or not hasattr(part, "_hstack"):
            continue
        names = [str(n) for n in names]
        rewritten = [(t[0], t[1], _positions(t[2], names), *t[3:]) for t in fitted]
        if rewritten != fitted:
            part.transformers_ = rewritten
            count += 1
    return count


def plain_output(est: Any) -> int:
    """Set every part of ``est`` that was told to return DataFrames
    (``set_output(transform="pandas")``, or polars) back to arrays; the number reset. The
    runtime has no pandas, and the next steps compute the same numbers from arrays."""
    count = 0
    for part in walk(est):
        config = getattr(part, "_sklearn_output_config", None)
        if isinstance(config, dict) and config.get("transform") not in (None, "default"):
            part.set_output(transform="default")
            count += 1
    return count


_IMPUTERS = ("SimpleImputer", "KNNImputer", "IterativeImputer")
REMOVES, PASSES, REFUSES = "removes", "passes", "refuses"


def _empty(columns: Any) -> bool:
    try:
        return len(columns) == 0
    except TypeError:  # a scalar column, a slice, a callable
        return False


def nan_handling(est: Any, depth: int = 0) -> str:
    """What ``est`` does with a missing value (NaN) in its input: ``removes`` it (an
    imputer, or a pipeline or column transformer whose every path meets one first),
    ``passes`` it on (takes NaN, and its output may hold NaN: a scaler, or an estimator
    that takes NaN) or ``refuses`` it. A pipeline's own tags say it refuses NaN whatever
    its steps do, so the steps are asked one by one."""
    if isinstance(est, str) or est is None:  # "passthrough", "drop"
        return REMOVES if est == "drop" else PASSES
    if type(est).__name__ in _IMPUTERS:
        return REMOVES
    if depth < 16 and isinstance(getattr(est, "steps", None), list):
        for step in est.steps:
            state = nan_handling(step[1], depth + 1)
            if state != PASSES:
                return state
        return PASSES
    fitted = getattr(est, "transformers_", None)
    if depth < 16 and isinstance(fitted, list) and hasattr(est, "_hstack"):
        states = {nan_handling(t[1], depth + 1) for t in fitted if not _empty(t[2])}
        return REFUSES if REFUSES in states else PASSES if PASSES in states else REMOVES
    try:
        from sklearn.utils import get_tags

        return PASSES if get_tags(est).input_tags.allow_nan else REFUSES
    except Exception:  # old or third-party estimators without tags: be strict
        return REFUSES


def _string_categories(est: Any) -> bool:
    for part in walk(est):
        for cats in getattr(part, "categories_", None) or ():
            if getattr(cats, "dtype", None) is not None and cats.dtype.kind in "OUS":
                return True
    return False


def input_kinds(est: Any, types: list[str] | None, n_features: int | None
                ) -> list[str] | None:
    """The kind of value each input column takes, or None when the model takes numbers
    only (the float64 path): from the signature's column types when it has them; else
    one string column for a text model, any value for a model with string categories or
    a column transformer; else numbers."""
    text = takes_text(est)
    if types is not None and (n_features is None or len(types) == n_features):
        kinds = [MLFLOW_KINDS.get(t, STRING) for t in types]
        if text and len(kinds) != 1:
            kinds = [STRING]
        return None if all(k == NUMBER for k in kinds) and not text else kinds
    if text:
        return [STRING]
    if n_features and (_string_categories(est) or any(
            hasattr(p, "_hstack") and hasattr(p, "transformers_") for p in walk(est))):
        return [ANY] * n_features
    return None


def _bad(where: str, want: str, value: object) -> BadRequest:
    from .dataplane import _type_name

    return BadRequest(f"{where} must be {want}, got {_type_name(value)}")


def cell(value: object, kind: str, allow_nan: bool, where: str) -> Any:
    """One checked value of a column of ``kind`` (null: a missing number, as pandas
    writes NaN)."""
    t = type(value)
    if kind == NUMBER or (kind == ANY and t is not str):
        if t is float:
            if math.isinf(value):  # type: ignore[arg-type]
                raise BadRequest(f"{where} is {value}; values must be finite")
            if value != value and not allow_nan:
                raise BadRequest(f"{where} is NaN; this model takes no missing values")
            return value
        if t is int:
            return value
        if value is None:
            if not allow_nan:
                raise BadRequest(f"{where} is null; this model takes no missing values")
            return math.nan
        raise _bad(where, "a number", value)
    if value is None and allow_nan:  # a missing category, for the model's imputer
        return math.nan
    if kind == BOOL:
        if t is not bool:
            raise _bad(where, "true or false", value)
        return value
    if t is not str:
        raise _bad(where, "a string", value)
    return value


def typed_rows(values: list[Any], kinds: list[str], allow_nan: bool, where: str,
               single: bool, names: list[str] | None = None) -> np.ndarray:
    """A JSON array of rows (or one row, ``single``) of typed values as an object matrix;
    the caller has checked each row's width. An error names the cell by its column's
    name when ``names`` are given."""
    rows = [values] if single else values
    out = np.empty((len(rows), len(kinds)), dtype=object)
    labels = [f"[{i}] ({n!r})" for i, n in enumerate(names)] if names is not None \
        and len(names) == len(kinds) else [f"[{i}]" for i in range(len(kinds))]
    for r, row in enumerate(rows):
        at = where if single else f"{where}[{r}]"
        out[r] = [cell(v, k, allow_nan, at + label)
                  for v, k, label in zip(row, kinds, labels, strict=True)]
    return out


def estimator_input(rows: np.ndarray, text: bool) -> Any:
    """What the estimator's ``predict`` takes for validated rows: the one column of a
    text model as a 1-D array, else the matrix."""
    return rows[:, 0] if text else rows


def decode_bytes(raw: bytes | memoryview, count: int, where: str) -> list[str]:
    """``count`` elements of a raw ``BYTES`` tensor (each a 4-byte little-endian length,
    then that many bytes of UTF-8)."""
    out: list[str] = []
    view = memoryview(raw)
    pos = 0
    for i in range(count):
        if pos + 4 > len(view):
            raise BadRequest(f"{where} ends before element {i} of {count}")
        n = int.from_bytes(view[pos:pos + 4], "little")
        pos += 4
        if pos + n > len(view):
            raise BadRequest(f"{where}: element {i} of {n} bytes runs past the tensor")
        try:
            out.append(bytes(view[pos:pos + n]).decode())
        except UnicodeDecodeError:
            raise BadRequest(f"{where}: element {i} is not UTF-8") from None
        pos += n
    if pos != len(view):
        raise BadRequest(f"{where} has {len(view) - pos} bytes after its {count} elements")
    return out


def tensor_columns(name: str, shape: list[int], flat: list[Any], where: str
                   ) -> list[tuple[str | None, list[Any]]]:
    """The columns of one V2 input tensor of ``shape`` ([rows] or [rows, columns]) whose
    elements are ``flat`` (row-major): its name names it when it is one column."""
    if len(shape) == 1:
        return [(name, flat)]
    n_rows, width = shape
    if width == 1:
        return [(name, flat)]
    return [(None, flat[c::width]) for c in range(width)] if n_rows else []


def columns_to_rows(columns: list[tuple[str | None, list[Any]]], names: list[str] | None,
                    where: str) -> list[list[Any]]:
    """Rows from the columns of a V2 request's input tensors: in the model's order when
    every tensor is one named column and the names are the model's inputs, else in the
    order sent."""
    given = [c[0] for c in columns]
    if names is not None and len(columns) > 1 and all(g is not None for g in given):
        if set(given) == set(names) and len(given) == len(names):
            at = {g: i for i, g in enumerate(given)}
            columns = [columns[at[n]] for n in names]
        elif any(g in names for g in given):
            from .protocols import unknown_or_missing

            raise unknown_or_missing([str(g) for g in given], names, f"{where} names")
    length = {len(c[1]) for c in columns}
    if len(length) != 1:
        raise BadRequest(f"{where}: the input tensors have different numbers of rows "
                         f"({sorted(length)})")
    return [list(r) for r in zip(*(c[1] for c in columns), strict=True)]
