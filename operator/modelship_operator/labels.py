"""The labels every child carries, and the selectors built from them.

Label *values* go through :func:`naming.label_value`, so a ModelDeployment name longer
than 63 characters or an MLflow model name with spaces still gives valid labels. Code
that finds children by label must therefore select on :func:`deployment_selector`
(the cleaned value), never on the raw name.
"""

from __future__ import annotations

from modelship_operator.naming import label_value

NAME = "app.kubernetes.io/name"
INSTANCE = "app.kubernetes.io/instance"
COMPONENT = "app.kubernetes.io/component"
MANAGED_BY = "app.kubernetes.io/managed-by"
DEPLOYMENT = "modelship.io/deployment"
MODEL = "modelship.io/model"
MODEL_VERSION = "modelship.io/model-version"

APP_NAME = "modelship-runtime"
MANAGER = "modelship"

# app.kubernetes.io/component values.
PREDICTOR = "predictor"  # the pods and what sizes or guards them
ENDPOINT = "endpoint"  # what routes traffic to them: Service, Ingress, HTTPRoute


def standard(md_name: str, model_name: str, component: str) -> dict[str, str]:
    """The labels of every child of one ModelDeployment."""
    return {
        NAME: APP_NAME,
        INSTANCE: label_value(md_name),
        COMPONENT: component,
        MANAGED_BY: MANAGER,
        DEPLOYMENT: label_value(md_name),
        MODEL: label_value(model_name),
    }


def deployment_selector(md_name: str) -> dict[str, str]:
    """Selects every pod (and every child) of one ModelDeployment, all versions."""
    return {DEPLOYMENT: label_value(md_name)}


def version_selector(md_name: str, version: str) -> dict[str, str]:
    """Selects the pods of one model version of one ModelDeployment."""
    return {DEPLOYMENT: label_value(md_name), MODEL_VERSION: label_value(version)}
