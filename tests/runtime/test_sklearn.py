"""Loading every serialization format MLflow writes, and plain joblib files."""

from __future__ import annotations

import pickle
import re
import shutil
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pytest
import yaml
from modelship_runtime.errors import ModelLoadError
from modelship_runtime.sklearn import SKLearnModel, find_model_file, load_estimator


def load(path: Path, *, allow_pickle: bool = True) -> SKLearnModel:
    model = SKLearnModel("m", "1", path, allow_pickle=allow_pickle)
    model.load_sync()
    return model


def same_predictions(model: SKLearnModel, estimator: Any, X: np.ndarray) -> None:
    pred = model.predict(X)
    assert pred.labels == estimator.predict(X).tolist()
    np.testing.assert_allclose(np.array(pred.probabilities), estimator.predict_proba(X))


def test_skops_from_the_registry_with_recorded_trusted_types(
        registry: Any, rf_dir: Path, lr_dir: Path) -> None:
    flavor = yaml.safe_load((rf_dir / "MLmodel").read_text())["flavors"]["sklearn"]
    assert flavor["serialization_format"] == "skops"
    assert flavor["skops_trusted_types"] == ["sklearn.tree._tree.Tree"]
    rf = load(rf_dir)
    assert rf.info.extra["serialization_format"] == "skops"
    assert (rf.info.n_features, rf.info.classes, rf.info.has_proba) == (8, [0, 1], True)
    assert rf.info.allow_nan is True
    same_predictions(rf, registry.rf_v1, registry.X[:50])
    lr = load(lr_dir)
    assert lr.info.allow_nan is False and lr.info.estimator == "LogisticRegression"
    same_predictions(lr, registry.lr_v1, registry.X[:50])


def test_cloudpickle_from_the_registry(registry: Any, pulled: Callable[[str], Path]) -> None:
    model_dir = pulled("models:/ms-lr/2")
    assert find_model_file(model_dir)[1] == "cloudpickle"
    same_predictions(load(model_dir), registry.lr_v2, registry.X[:20])
    with pytest.raises(ModelLoadError, match="serialized with cloudpickle"):
        load(model_dir, allow_pickle=False)


def test_pickle_format(local_models: Any, tmp_path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import mlflow.sklearn

        mlflow.sklearn.save_model(local_models.lr, tmp_path / "p", serialization_format="pickle",
                                  pip_requirements=[])
    assert find_model_file(tmp_path / "p")[1] == "pickle"
    same_predictions(load(tmp_path / "p"), local_models.lr, local_models.X[:20])
    with pytest.raises(ModelLoadError, match="serialized with pickle"):
        load(tmp_path / "p", allow_pickle=False)


def test_plain_joblib_file_and_directory(local_models: Any, tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    joblib.dump(local_models.rf, tmp_path / "d" / "model.joblib")
    same_predictions(load(tmp_path / "d"), local_models.rf, local_models.X[:20])
    same_predictions(load(tmp_path / "d" / "model.joblib"), local_models.rf, local_models.X[:20])
    with pytest.raises(ModelLoadError, match="serialized with joblib"):
        load(tmp_path / "d", allow_pickle=False)


def test_regressor_has_values_and_no_probabilities(tmp_path: Path) -> None:
    from sklearn.linear_model import Ridge

    X = np.arange(30, dtype=float).reshape(10, 3)
    est = Ridge().fit(X, X.sum(axis=1))
    with (tmp_path / "model.pkl").open("wb") as f:
        pickle.dump(est, f)
    model = load(tmp_path)
    assert model.info.classes is None and model.info.has_proba is False
    assert model.info.label_datatype == "FP64"
    pred = model.predict(X[:2])
    assert pred.probabilities is None
    np.testing.assert_allclose(pred.labels, est.predict(X[:2]))


def test_string_labels(tmp_path: Path) -> None:
    from sklearn.linear_model import LogisticRegression

    X = np.array([[0.0], [1.0], [2.0], [3.0]])
    est = LogisticRegression().fit(X, ["cat", "cat", "dog", "dog"])
    joblib.dump(est, tmp_path / "m.joblib")
    model = load(tmp_path)
    assert model.info.label_datatype == "BYTES" and model.info.classes == ["cat", "dog"]
    assert model.predict(np.array([[0.0], [3.0]])).labels == ["cat", "dog"]


@pytest.mark.parametrize(("setup", "message"), [
    (lambda d: None, "no MLmodel file and 0 model files"),
    (lambda d: (d / "a.joblib").write_bytes(b"x") and (d / "b.pkl").write_bytes(b"x"),
     "2 model files"),
    (lambda d: (d / "MLmodel").write_text("flavors:\n  python_function: {}\n"),
     "has no sklearn flavour"),
    (lambda d: (d / "MLmodel").write_text("flavors:\n  sklearn: {pickled_model: m.skops, "
                                          "serialization_format: skops}\n"), "does not exist"),
    (lambda d: (d / "MLmodel").write_text("flavors:\n  sklearn: {pickled_model: m.bin, "
                                          "serialization_format: onnx}\n") and
     (d / "m.bin").write_bytes(b"x"), "unknown serialization_format 'onnx'"),
    (lambda d: (d / "m.joblib").write_bytes(b"not a pickle"), "cannot load m.joblib"),
])
def test_unloadable_directories_say_why(tmp_path: Path, setup: Callable[[Path], object],
                                        message: str) -> None:
    setup(tmp_path)
    with pytest.raises(ModelLoadError, match=message):
        load_estimator(tmp_path, allow_pickle=True)


@pytest.mark.parametrize("kind", ["RandomForestClassifier", "ExtraTreesClassifier"])
def test_forest_fast_path_is_bit_for_bit_predict_proba(tmp_path: Path, kind: str) -> None:
    from sklearn import ensemble
    from sklearn.datasets import make_classification

    X, y = make_classification(n_samples=300, n_features=6, n_informative=4, n_classes=3,
                               random_state=2)
    est = getattr(ensemble, kind)(n_estimators=15, max_depth=6, random_state=0).fit(X, y)
    joblib.dump(est, tmp_path / "f.joblib")
    model = load(tmp_path)
    assert model.info.extra["forest_fast_path"] is True
    rows = np.random.default_rng(5).normal(size=(70, 6)) * 2
    for n in (1, 7, 70):
        pred = model.predict(rows[:n])
        assert np.array_equal(np.array(pred.probabilities), est.predict_proba(rows[:n]))
        assert pred.labels == est.predict(rows[:n]).tolist()


def test_forest_inside_a_pipeline_uses_scikit_learn(tmp_path: Path, local_models: Any) -> None:
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    pipe = make_pipeline(StandardScaler(), local_models.rf).fit(local_models.X, local_models.y)
    joblib.dump(pipe, tmp_path / "p.joblib")
    model = load(tmp_path)
    assert model.info.extra["forest_fast_path"] is False
    same_predictions(model, pipe, local_models.X[:30])


def _saved_with(src: Path, dest: Path, *, mlmodel: str | None, requirement: str | None
                ) -> Path:
    """A copy of the model directory ``src`` that says another scikit-learn made it."""
    shutil.copytree(src, dest)
    spec = yaml.safe_load((dest / "MLmodel").read_text())
    if mlmodel is None:
        spec["flavors"]["sklearn"].pop("sklearn_version", None)
    else:
        spec["flavors"]["sklearn"]["sklearn_version"] = mlmodel
    (dest / "MLmodel").write_text(yaml.safe_dump(spec))
    if requirement is not None:
        (dest / "requirements.txt").write_text(f"mlflow==3.1.0\n{requirement}\nnumpy<3\n")
    return dest


@pytest.mark.parametrize(("mlmodel", "requirement", "saved"), [
    ("1.0.2", None, "1.0.2"),
    (None, "scikit-learn==1.3.0", "1.3.0"),
    (None, "scikit_learn == 1.2.2 ; python_version >= '3.8'", "1.2.2"),
])
def test_a_model_saved_with_another_scikit_learn_is_served_with_a_warning(
        local_models: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture,
        mlmodel: str | None, requirement: str | None, saved: str) -> None:
    from importlib.metadata import version

    have = version("scikit-learn")
    assert saved != have
    model_dir = _saved_with(local_models.lr_dir, tmp_path / "m", mlmodel=mlmodel,
                            requirement=requirement)
    with caplog.at_level("WARNING", logger="modelship_runtime"):
        model = load(model_dir)
    warned = [r for r in caplog.records if r.levelname == "WARNING"]
    assert len(warned) == 1, caplog.text
    assert f"saved with scikit-learn {saved}; this runtime has scikit-learn {have}" \
        in warned[0].getMessage()
    assert (warned[0].artifact_sklearn_version, warned[0].runtime_sklearn_version) == (  # type: ignore[attr-defined]
        saved, have)
    assert model.info.extra["sklearn_version"] == saved
    same_predictions(model, local_models.lr, local_models.X[:5])


def test_a_model_saved_with_this_scikit_learn_loads_without_a_warning(
        local_models: Any, caplog: pytest.LogCaptureFixture) -> None:
    from importlib.metadata import version

    spec = yaml.safe_load((local_models.lr_dir / "MLmodel").read_text())
    assert spec["flavors"]["sklearn"]["sklearn_version"] == version("scikit-learn")
    with caplog.at_level("WARNING", logger="modelship_runtime"):
        load(local_models.lr_dir)
    assert not [r for r in caplog.records if r.levelname == "WARNING"], caplog.text


def test_a_load_error_names_both_scikit_learn_versions(local_models: Any,
                                                        tmp_path: Path) -> None:
    from importlib.metadata import version

    model_dir = _saved_with(local_models.lr_dir, tmp_path / "m", mlmodel="0.24.2",
                            requirement=None)
    model_file = yaml.safe_load((model_dir / "MLmodel").read_text())["flavors"]["sklearn"][
        "pickled_model"]
    (model_dir / model_file).write_bytes(b"not a model")
    with pytest.raises(ModelLoadError, match=rf"saved with scikit-learn 0\.24\.2; this "
                       rf"runtime has {re.escape(version('scikit-learn'))}"):
        load(model_dir)
