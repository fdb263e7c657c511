"""scikit-learn models as MLflow writes them, or as plain joblib files, without MLflow.

The runtime image carries no MLflow package (the pull speaks MLflow's REST API), and
loading must not need MLflow at all (it is slow to import), so this module
reads the ``MLmodel`` file itself: the sklearn flavour names the serialized file
(``pickled_model``) and its ``serialization_format``. The artifact is untrusted input
(:mod:`modelship_runtime.trust`): every file is opened only after its path resolves inside
the model directory, and opened once, so what is checked is what is loaded. skops files are
loaded with skops' own safe defaults plus the types the runtime trusts (scikit-learn's
classes and ``MODELSHIP_TRUSTED_TYPES``), never the ``skops_trusted_types`` the MLmodel
lists; pickle and cloudpickle files (and joblib files, which are pickles) run code when
loaded, so ``allow_pickle=False`` refuses them.

Prediction takes the estimator's probabilities once and derives labels from them where
that is exactly what ``predict`` does (forests, trees, logistic regression), which halves
the cost of a random forest. For single-output random forests and extra-trees the runtime
also does the forest's averaging itself, tree by tree in scikit-learn's order, skipping
the per-tree joblib, config and validation wrapping that costs most of a small call; it
is used only after a probe at load shows it equal, bit for bit, to ``predict_proba``.

A model saved with another scikit-learn than the runtime's may load and predict
differently, or not load at all; the load logs a warning naming both versions (the
artifact's from its MLmodel, else its requirements.txt) and a load error says them too.
"""

from __future__ import annotations

import hashlib
import logging
import pickle
import re
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import yaml

from .errors import BadRequest, ModelLoadError, UntrustedArtifact
from .model import Model, Prediction
from .signature import choose_columns, read_inputs
from .trust import check_tree, inside, split_types
from .typed import (
    REFUSES,
    by_position,
    estimator_input,
    input_kinds,
    nan_handling,
    plain_output,
    takes_text,
)

logger = logging.getLogger(__name__)

MLMODEL = "MLmodel"
REQUIREMENTS = "requirements.txt"
_SKLEARN_PIN = re.compile(r"^\s*scikit[-_.]learn\s*===?\s*([^\s;#,]+)", re.I | re.M)
PICKLE_FORMATS = ("pickle", "cloudpickle")
PLAIN_SUFFIXES = (".joblib", ".skops", ".pkl", ".pickle")

# Estimators whose predict() is classes_[argmax(predict_proba())] by construction.
_PROBA_DECIDES = (
    "RandomForestClassifier",
    "ExtraTreesClassifier",
    "DecisionTreeClassifier",
    "ExtraTreeClassifier",
    "LogisticRegression",
    "LogisticRegressionCV",
)


_FORESTS = ("RandomForestClassifier", "ExtraTreesClassifier")


def read_mlmodel(model_dir: Path) -> dict[str, Any]:
    """The parsed MLmodel file of a model directory (ModelLoadError when unreadable,
    UntrustedArtifact when it resolves outside the directory)."""
    path = inside(model_dir, MLMODEL, "MLmodel")
    try:
        spec = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ModelLoadError(f"cannot read {model_dir / MLMODEL}: "
                             f"{' '.join(str(exc).split())}") from exc
    return spec if isinstance(spec, dict) else {}


def read_flavor(model_dir: Path) -> dict[str, Any]:
    """The sklearn flavour of an MLmodel file (raises ModelLoadError when absent)."""
    flavors = read_mlmodel(model_dir).get("flavors") or {}
    flavor = flavors.get("sklearn") if isinstance(flavors, dict) else None
    if not isinstance(flavor, dict) or "pickled_model" not in flavor:
        names = sorted(str(k) for k in flavors) if isinstance(flavors, dict) else []
        raise ModelLoadError(f"{model_dir / MLMODEL} has no sklearn flavour (flavours: {names})")
    return flavor


_PATH_KEYS = ("pickled_model", "model_path", "data", "code")


def check_model_dir(model_dir: Path) -> None:
    """Refuse (UntrustedArtifact) a model directory holding a symlink out of it, or whose
    MLmodel names a path (any flavour's ``pickled_model``, ``model_path``, ``data``,
    ``code``) outside it. Reads only the MLmodel."""
    check_tree(model_dir)
    if not (model_dir / MLMODEL).exists():
        return
    flavors = read_mlmodel(model_dir).get("flavors") or {}
    for name, flavor in flavors.items() if isinstance(flavors, dict) else ():
        for key in _PATH_KEYS:
            value = flavor.get(key) if isinstance(flavor, dict) else None
            if isinstance(value, str) and value:
                inside(model_dir, value, f"MLmodel's {name}.{key}")


def find_model_file(model_dir: Path) -> tuple[Path, str]:
    """Locate the serialized estimator: (resolved path inside the model directory,
    serialization format). UntrustedArtifact when a named path leaves the directory."""
    if not model_dir.exists():
        raise ModelLoadError(f"model directory {model_dir} does not exist")
    if model_dir.is_file():  # a single file named by the runtime's own settings
        return model_dir, _format_of(model_dir)
    if (model_dir / MLMODEL).exists() or (model_dir / MLMODEL).is_symlink():
        flavor = read_flavor(model_dir)
        path = inside(model_dir, str(flavor["pickled_model"]), "MLmodel's pickled_model")
        fmt = str(flavor.get("serialization_format") or "pickle")
        return path, fmt
    try:
        candidates = sorted(p for p in model_dir.iterdir() if p.suffix in PLAIN_SUFFIXES)
    except OSError as exc:
        raise ModelLoadError(f"cannot list model directory {model_dir}: {exc}") from None
    if len(candidates) != 1:
        raise ModelLoadError(
            f"{model_dir} has no MLmodel file and {len(candidates)} model files "
            f"({', '.join(PLAIN_SUFFIXES)}); expected exactly one"
        )
    return inside(model_dir, candidates[0].name, "model file"), _format_of(candidates[0])


def artifact_sklearn_version(model_dir: Path) -> str | None:
    """The scikit-learn version a model directory was saved with, when it says: the
    sklearn flavour's ``sklearn_version`` in MLmodel, else a ``scikit-learn==`` pin in
    requirements.txt."""
    if not model_dir.is_dir():
        return None
    if (model_dir / MLMODEL).is_file():
        try:
            version = read_flavor(model_dir).get("sklearn_version")
        except ModelLoadError:
            version = None
        if version:
            return str(version)
    try:
        pin = _SKLEARN_PIN.search(inside(model_dir, REQUIREMENTS, REQUIREMENTS).read_text())
    except (OSError, UnicodeDecodeError, UntrustedArtifact):
        return None
    return pin.group(1) if pin else None


def installed_sklearn_version() -> str | None:
    """The scikit-learn version this runtime has (None when it cannot tell)."""
    try:
        return metadata.version("scikit-learn")
    except metadata.PackageNotFoundError:
        return None


def _format_of(path: Path) -> str:
    return {".skops": "skops", ".joblib": "joblib"}.get(path.suffix, "pickle")


def load_estimator(model_dir: Path, *, allow_pickle: bool,
                   trusted_types: Sequence[str] = ()) -> tuple[Any, str]:
    """Deserialize the estimator of a model directory; returns (estimator, format).
    skops files may hold scikit-learn's types and ``trusted_types`` beyond skops' safe
    defaults; pickles load only with ``allow_pickle``. UntrustedArtifact for a refusal."""
    return _load(model_dir, allow_pickle=allow_pickle, trusted_types=trusted_types)[:2]


def _load(model_dir: Path, *, allow_pickle: bool, trusted_types: Sequence[str]
          ) -> tuple[Any, str, str]:
    path, fmt = find_model_file(model_dir)
    if not path.is_file():
        raise ModelLoadError(f"model file {path} does not exist")
    if fmt in (*PICKLE_FORMATS, "joblib") and not allow_pickle:
        raise UntrustedArtifact(
            f"{path.name} is serialized with {fmt}, which runs code when loaded; refused "
            "because MODELSHIP_ALLOW_PICKLE is false: set MODELSHIP_ALLOW_PICKLE=true to "
            "trust it, or save the model with skops")
    if fmt not in (*PICKLE_FORMATS, "joblib", "skops"):
        raise ModelLoadError(f"unknown serialization_format {fmt!r} in {model_dir / MLMODEL}")
    try:
        f = path.open("rb")  # one open file is hashed, checked and loaded
    except OSError as exc:
        raise ModelLoadError(f"cannot read {path.name}: {exc.strerror or exc}") from None
    with f:
        try:
            digest = _sha256(f)
            if fmt != "skops":
                logger.info(f"loading {path.name}, a {fmt} file: it runs code from the "
                            "artifact; allowed by MODELSHIP_ALLOW_PICKLE=true",
                            extra={"format": fmt})
            if fmt == "skops":
                return _load_skops(path.name, f, trusted_types), fmt, digest
            if fmt == "joblib":
                import joblib

                return joblib.load(f), fmt, digest
            if fmt == "cloudpickle":
                import cloudpickle

                return cloudpickle.load(f), fmt, digest
            return pickle.load(f), fmt, digest
        except ModelLoadError:
            raise
        except Exception as exc:
            raise ModelLoadError(f"cannot load {path.name} ({fmt}): "
                                 f"{' '.join(str(exc).split())[:500]}") from exc


def _sha256(f: BinaryIO) -> str:
    h = hashlib.sha256()
    while chunk := f.read(1 << 20):
        h.update(chunk)
    f.seek(0)
    return h.hexdigest()


def _load_skops(name: str, f: BinaryIO, trusted_types: Sequence[str]) -> Any:
    from .skops_import import import_skops_io

    skops_io = import_skops_io()
    needed = skops_io.get_untrusted_types(file=f)  # reads the zip's schema only
    f.seek(0)
    trusted, refused = split_types(needed, trusted_types)
    if refused:
        raise UntrustedArtifact(
            f"{name} needs types this runtime does not trust: {', '.join(refused)}; add "
            "them to MODELSHIP_TRUSTED_TYPES to trust them (the MLmodel's "
            "skops_trusted_types are not used)")
    return skops_io.load(f, trusted=trusted)


def _allow_nan(estimator: Any) -> bool:
    return nan_handling(estimator) != REFUSES


def _label_datatype(classes: np.ndarray | None, estimator: Any = None) -> str:
    if classes is None:
        try:
            from sklearn.utils import get_tags

            kind = get_tags(estimator).estimator_type
        except Exception:  # old or third-party estimators without tags
            kind = None
        # cluster indices and outlier flags (-1/1) are integers
        return "INT64" if kind in ("clusterer", "outlier_detector") else "FP64"
    kind = classes.dtype.kind
    return {"b": "BOOL", "i": "INT64", "u": "INT64", "f": "FP64"}.get(kind, "BYTES")


class SKLearnModel(Model):
    """A fitted scikit-learn estimator (or pipeline) served from a model directory."""

    def __init__(self, name: str, version: str, model_dir: Path, *, allow_pickle: bool,
                 trusted_types: Sequence[str] = ()) -> None:
        super().__init__(name, version)
        self.model_dir = model_dir
        self.allow_pickle = allow_pickle
        self.trusted_types = tuple(trusted_types)
        self.estimator: Any = None
        self._proba_decides = False
        self._classes: np.ndarray | None = None
        self._forest: tuple[list[Any], int] | None = None
        self._text = False

    def load_sync(self) -> None:
        """Deserialize the estimator and read what validation and metadata need."""
        saved, have = artifact_sklearn_version(self.model_dir), installed_sklearn_version()
        mismatch = saved is not None and have is not None and saved != have
        if mismatch:
            logger.warning(
                f"model {self.name} version {self.version} was saved with scikit-learn "
                f"{saved}; this runtime has scikit-learn {have}: predictions may differ or "
                f"the load may fail (serve it with scikit-learn=={saved}, or save the model "
                f"again with {have})",
                extra={"model": self.name, "artifact_sklearn_version": saved,
                       "runtime_sklearn_version": have})
        try:
            estimator, fmt, digest = _load(self.model_dir, allow_pickle=self.allow_pickle,
                                           trusted_types=self.trusted_types)
        except ModelLoadError as exc:
            if mismatch:
                raise type(exc)(f"{exc.message} (the model was saved with scikit-learn "
                                     f"{saved}; this runtime has {have})") from exc
            raise
        try:
            self.use(estimator, fmt)
        except ModelLoadError:
            raise
        except Exception as exc:  # an estimator of a shape this runtime does not know
            raise ModelLoadError(f"cannot serve {type(estimator).__name__}: "
                                 f"{' '.join(str(exc).split())[:300]}") from exc
        self.info.artifact_sha256 = digest
        if self.info.run_id is None and self.model_dir.is_dir():
            try:
                run_id = read_mlmodel(self.model_dir).get("run_id")
            except ModelLoadError:  # no MLmodel (a plain joblib directory)
                run_id = None
            self.info.run_id = str(run_id) if run_id else None
        if saved is not None:
            self.info.extra["sklearn_version"] = saved
        if self.model_dir.is_dir():
            inputs = read_inputs(self.model_dir)
            self.info.predict_fn = inputs.predict_fn
            columns, problem = choose_columns(inputs.columns, self.info.feature_names,
                                              self.info.n_features)
            self.info.input_columns = columns
            if problem is not None:
                logger.warning(f"model {self.name}: {problem}")
            types = inputs.types
            if types is not None and inputs.columns is not None and columns is not None \
                    and columns != inputs.columns and set(columns) == set(inputs.columns):
                by_name = dict(zip(inputs.columns, types, strict=True))
                types = [by_name[c] for c in columns]  # the estimator's order
            self.info.input_kinds = input_kinds(self.estimator, types, self.info.n_features)

    def use(self, estimator: Any, fmt: str = "memory") -> None:
        """Serve an estimator object (used by ``load_sync``; handy in tests)."""
        if not hasattr(estimator, "predict"):
            raise ModelLoadError(f"{type(estimator).__name__} has no predict method")
        self.estimator = estimator
        info = self.info
        info.estimator = type(estimator).__name__
        info.extra["serialization_format"] = fmt
        info.extra["plain_output"] = plain_output(estimator)
        try:
            info.extra["by_position"] = by_position(estimator)
        except (KeyError, TypeError, ValueError) as exc:  # served as it is
            logger.warning(f"model {self.name}: its column transformer selects columns "
                           f"this runtime cannot place ({exc!r}); rows go to it unchanged")
        self._text = takes_text(estimator)
        try:
            n = getattr(estimator, "n_features_in_", None)
        except AttributeError:  # a pipeline whose first step does not count its inputs
            n = None
        info.n_features = int(n) if n is not None else (1 if self._text else None)
        names = getattr(estimator, "feature_names_in_", None)
        info.feature_names = [str(x) for x in names] if names is not None else None
        info.input_columns = info.feature_names
        info.input_kinds = input_kinds(estimator, None, info.n_features)
        classes = getattr(estimator, "classes_", None)
        info.multi_output = isinstance(classes, list) or (
            classes is not None and np.ndim(classes[0]) > 0)
        if info.multi_output:  # MultiOutputClassifier: one array of classes per output
            assert classes is not None
            kinds = {np.asarray(c).dtype.kind for c in classes}
            classes = None
        self._classes = np.asarray(classes) if classes is not None else None
        info.classes = self._classes.tolist() if self._classes is not None else None
        info.has_proba = hasattr(estimator, "predict_proba") and self._classes is not None
        info.allow_nan = _allow_nan(estimator)
        info.label_datatype = _label_datatype(self._classes, estimator)
        if info.multi_output:
            info.label_datatype = "INT64" if kinds <= set("biu") else (
                "FP64" if kinds <= set("biuf") else "BYTES")
        final = estimator.steps[-1][1] if hasattr(estimator, "steps") else estimator
        self._proba_decides = info.has_proba and type(final).__name__ in _PROBA_DECIDES
        self._forest = None
        if final is estimator and type(estimator).__name__ in _FORESTS \
                and getattr(estimator, "n_outputs_", 0) == 1 and info.n_features:
            self._forest = ([e.tree_ for e in estimator.estimators_], int(estimator.n_classes_))
            if not self._forest_matches(info.n_features):
                self._forest = None
        info.extra["forest_fast_path"] = self._forest is not None
        self.ready = True

    def _forest_proba(self, rows: np.ndarray) -> np.ndarray:
        assert self._forest is not None
        trees, n_classes = self._forest
        X = np.ascontiguousarray(rows, dtype=np.float32)
        acc = np.zeros((X.shape[0], n_classes), dtype=np.float64)
        for tree in trees:
            acc += tree.predict(X)[:, :n_classes]
        acc /= len(trees)
        return acc

    def _forest_matches(self, n_features: int) -> bool:
        probe = np.random.default_rng(0).normal(size=(16, n_features)) * 3
        probe[0] = 0.0
        try:
            return bool(np.array_equal(self._forest_proba(probe),
                                       self.estimator.predict_proba(probe)))
        except Exception:  # anything unexpected: keep scikit-learn's own path
            return False

    def predict(self, rows: np.ndarray) -> Prediction:
        """Labels and (for classifiers) probabilities of validated float64 rows. An overflow
        inside the estimator is not a warning per request: its non-finite answer is
        refused by the dataplane (OutputNotFinite). Typed rows (an object matrix, see
        :mod:`.typed`) that the estimator refuses (an unknown category, a value of the
        wrong type) are a BadRequest with its message."""
        with np.errstate(all="ignore"):
            if rows.dtype != object:
                # Numbers the validator passed: an estimator that raises on them fails
                # (500), which is what a canary's error-rate gate must see.
                return self._predict(rows)
            try:
                return self._predict(estimator_input(rows, self._text))
            except (ValueError, TypeError) as exc:  # scikit-learn refusing the values
                raise BadRequest("the model cannot take these values: "
                                 f"{' '.join(str(exc).split())[:300]}") from None

    def _predict(self, rows: np.ndarray) -> Prediction:
        est = self.estimator
        if self.info.has_proba:
            proba = self._forest_proba(rows) if self._forest else est.predict_proba(rows)
            if self._proba_decides and self._classes is not None:
                labels = self._classes.take(proba.argmax(axis=1)).tolist()
            else:
                labels = est.predict(rows).tolist()
            return Prediction(labels, proba.tolist())
        return Prediction(np.asarray(est.predict(rows)).tolist(), None)
