"""Register two versions of the demo model in MLflow: iris-classifier versions 1 and 2.

    MLFLOW_TRACKING_URI=http://localhost:5000 python scripts/demo/register_models.py

Both are scikit-learn LogisticRegressions on the iris data set, saved with skops (the
runtime loads them without unpickling); version 2 is trained with stronger
regularisation, so its predictions differ a little. Idempotent: versions that exist
are left alone.
"""

from __future__ import annotations

import mlflow
import mlflow.sklearn
from mlflow import MlflowClient
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression

NAME = "iris-classifier"


def main() -> None:
    client = MlflowClient()
    existing = {int(v.version) for v in client.search_model_versions(f"name='{NAME}'")}
    features, labels = load_iris(return_X_y=True)
    mlflow.set_experiment("modelship-demo")
    for version, regularisation in ((1, 1.0), (2, 0.05)):
        if version in existing:
            print(f"{NAME} version {version} exists")
            continue
        model = LogisticRegression(C=regularisation, max_iter=500).fit(features, labels)
        with mlflow.start_run(run_name=f"iris-v{version}"):
            mlflow.log_param("C", regularisation)
            mlflow.sklearn.log_model(model, name="model", registered_model_name=NAME,
                                     input_example=features[:2])
        print(f"registered {NAME} version {version} (C={regularisation})")
    client.set_registered_model_alias(NAME, "champion", "1")


if __name__ == "__main__":
    main()
