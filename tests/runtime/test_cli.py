"""The console script as a pod runs it: serve by alias, SIGTERM drains, failures exit."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

RUNTIME = str(Path(sys.executable).parent / "modelship-runtime")

SLOW_MODEL = '''
import time
import numpy as np

class SlowModel:
    """Takes 0.4 s per predict call, so requests are in flight when SIGTERM lands."""
    n_features_in_ = 8

    def predict(self, X):
        time.sleep(0.4)
        return np.zeros(len(X), dtype=np.int64)
'''


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def start_server(tmp_path: Path) -> Iterator[Any]:
    procs: list[subprocess.Popen[bytes]] = []

    def start(*args: str, env: dict[str, str] | None = None) -> tuple[str, subprocess.Popen[bytes]]:
        port = free_port()
        log = (tmp_path / f"serve-{port}.log").open("wb")
        proc = subprocess.Popen([RUNTIME, "serve", "--host", "127.0.0.1", "--port", str(port),
                                 *args], stdout=log, stderr=subprocess.STDOUT,
                                env={**os.environ, **(env or {})})
        procs.append(proc)
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 90
        while True:
            try:
                if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                    return url, proc
            except httpx.HTTPError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError((tmp_path / f"serve-{port}.log").read_text())
            time.sleep(0.1)

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def test_serve_by_alias_reports_the_resolved_version(registry: Any, start_server: Any,
                                                     tmp_path: Path) -> None:
    url, proc = start_server("--model-uri", "models:/ms-lr@champion",
                             env={"MLFLOW_TRACKING_URI": registry.uri})
    r = httpx.post(f"{url}/predict", json={"features": registry.X[0].tolist()},
                   headers={"X-Request-ID": "cli-1"})
    assert r.status_code == 200
    assert r.headers["x-model-version"] == "1"
    assert r.json()["prediction"] == int(registry.lr_v1.predict(registry.X[:1])[0])
    assert httpx.get(f"{url}/v2/models/ms-lr").json()["versions"] == ["1"]
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 0
    lines = [json.loads(x) for x in next(tmp_path.glob("serve-*.log")).read_text().splitlines()
             if x.startswith("{")]
    pulled = [x for x in lines if x["message"] == "model pulled"]
    assert pulled and pulled[0]["version"] == "1" and pulled[0]["alias"] == "champion"
    loaded = [x for x in lines if x["message"] == "model loaded"]
    assert loaded and loaded[0]["version"] == "1" and loaded[0]["model"] == "ms-lr"


def test_sigterm_finishes_in_flight_requests(tmp_path: Path, start_server: Any) -> None:
    import joblib

    (tmp_path / "slowmodel.py").write_text(SLOW_MODEL)
    sys.path.insert(0, str(tmp_path))
    try:
        import slowmodel

        model_dir = tmp_path / "slow"
        model_dir.mkdir()
        joblib.dump(slowmodel.SlowModel(), model_dir / "model.joblib")
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("slowmodel", None)
    url, proc = start_server("--model-dir", str(model_dir),
                             env={"PYTHONPATH": str(tmp_path), "MODELSHIP_MICROBATCH": "false",
                                  "MODELSHIP_DRAIN_SECONDS": "0"})  # closes at once
    results: list[int | str] = []

    def call() -> None:
        try:
            r = httpx.post(f"{url}/predict", json={"features": [1.0] * 8}, timeout=30)
            results.append(r.status_code)
        except httpx.HTTPError as exc:
            results.append(type(exc).__name__)

    threads = [threading.Thread(target=call) for _ in range(4)]
    for t in threads:
        t.start()
    time.sleep(0.5)  # all four are read; they predict one after another (0.4 s each)
    t0 = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    for t in threads:
        t.join(30)
    assert proc.wait(30) == 0
    assert results == [200, 200, 200, 200]
    assert time.monotonic() - t0 > 0.5  # the server waited for the queued predictions
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{url}/healthz", timeout=2)


def test_serve_refuses_pickle_when_told_to(registry: Any, pulled: Any) -> None:
    model_dir = pulled("models:/ms-lr/2")  # cloudpickle
    r = subprocess.run([RUNTIME, "serve", "--model-dir", str(model_dir), "--port",
                        str(free_port())], capture_output=True, text=True, timeout=60,
                       env={**os.environ, "MODELSHIP_ALLOW_PICKLE": "false"})
    assert r.returncode != 0
    assert "serialized with cloudpickle" in r.stdout + r.stderr
    assert "MODELSHIP_ALLOW_PICKLE" in r.stdout + r.stderr


def test_serve_without_a_model_is_a_usage_error() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODELSHIP_MODEL")}
    r = subprocess.run([RUNTIME, "serve"], capture_output=True, text=True, timeout=60, env=env)
    assert r.returncode == 2
    assert "give --model-dir or --model-uri" in r.stderr


def test_serving_does_not_import_mlflow(rf_dir: Path) -> None:
    code = (
        "import asyncio, sys\n"
        "from pathlib import Path\n"
        "from modelship_runtime import RuntimeSettings, create_app\n"
        f"app = create_app(RuntimeSettings(model_dir=Path({str(rf_dir)!r})))\n"
        "asyncio.run(app.state.plane.model.load())\n"
        "assert app.state.plane.model.ready\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'mlflow'))\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"
