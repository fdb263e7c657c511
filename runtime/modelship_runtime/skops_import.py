"""``skops.io``, imported without the list of every scikit-learn estimator it builds.

At import, ``skops.io._trusted_types`` calls scikit-learn's ``all_estimators()``, which
imports every public scikit-learn module (about 180 more modules, 70-110 ms of CPU on the
development machine, a tenth of a cold start's imports) to list the estimators skops
trusts by default. The runtime never relies on that list: it decides itself which types
a skops file may build (:func:`modelship_runtime.trust.split_types` trusts every class
defined in scikit-learn outside its tests and vendored code, a superset of
``all_estimators()``), from the types :func:`skops.io.get_untrusted_types` names. With
the list empty those are a few more names, each decided by the same rule, so what loads
and what is refused are unchanged; a test holds the superset claim.
"""

from __future__ import annotations

import sys
from types import ModuleType
from typing import Any


def import_skops_io() -> ModuleType:
    """``skops.io``; the first import skips skops' call of ``all_estimators()``."""
    loaded = sys.modules.get("skops.io")
    if loaded is not None:
        return loaded
    import sklearn.utils

    real = sklearn.utils.all_estimators

    def no_estimators(type_filter: Any = None) -> list[tuple[str, type]]:
        return []

    sklearn.utils.all_estimators = no_estimators
    try:
        import skops.io  # noqa: F401
    finally:
        sklearn.utils.all_estimators = real
    return sys.modules["skops.io"]
