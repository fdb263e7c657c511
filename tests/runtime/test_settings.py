"""Settings come from MODELSHIP_ variables; the Redis URL also from plain REDIS_URL."""

from __future__ import annotations

from pathlib import Path

import pytest
from modelship_runtime.settings import RuntimeSettings
from pydantic import ValidationError


def test_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("REDIS_URL", "MODELSHIP_REDIS_URL", "MODELSHIP_PORT", "MODELSHIP_MICROBATCH"):
        monkeypatch.delenv(var, raising=False)
    s = RuntimeSettings()
    assert (s.port, s.host, s.microbatch, s.redis_url) == (8080, "0.0.0.0", True, None)
    assert s.allow_pickle is True and s.api_keys_file is None


def test_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODELSHIP_PORT", "9000")
    monkeypatch.setenv("MODELSHIP_MICROBATCH", "false")
    monkeypatch.setenv("MODELSHIP_MODEL_DIR", "/models/iris")
    monkeypatch.setenv("MODELSHIP_ALLOW_PICKLE", "0")
    monkeypatch.setenv("REDIS_URL", "redis://r:6379/0")
    s = RuntimeSettings()
    assert (s.port, s.microbatch, s.allow_pickle) == (9000, False, False)
    assert s.model_dir == Path("/models/iris")
    assert s.redis_url == "redis://r:6379/0"
    monkeypatch.setenv("MODELSHIP_REDIS_URL", "redis://other:6379/1")
    assert RuntimeSettings().redis_url == "redis://other:6379/1"


def test_every_setting_is_documented() -> None:
    import ast
    import inspect

    import modelship_runtime.settings as mod

    tree = ast.parse(inspect.getsource(mod))
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef))
    body = cls.body
    for i, node in enumerate(body):
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) \
                and node.target.id != "model_config":
            doc = body[i + 1] if i + 1 < len(body) else None
            assert isinstance(doc, ast.Expr) and isinstance(doc.value, ast.Constant), \
                node.target.id
    assert len(RuntimeSettings.model_fields) >= 20


@pytest.mark.parametrize(("var", "value"), [("MODELSHIP_PORT", "0"),
                                            ("MODELSHIP_MAX_BATCH_SIZE", "0"),
                                            ("MODELSHIP_MICROBATCH_MAX_WAIT_MS", "-1")])
def test_invalid_values_are_refused(monkeypatch: pytest.MonkeyPatch, var: str,
                                    value: str) -> None:
    monkeypatch.setenv(var, value)
    with pytest.raises(ValidationError):
        RuntimeSettings()
