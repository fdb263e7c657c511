"""The modelship runtime: a lean inference server for versioned MLflow scikit-learn models."""

from __future__ import annotations

__version__ = "0.1.0"
