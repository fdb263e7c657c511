"""The console script as a pod runs it: serve by alias, SIGTERM drains, failures exit with
their own code (docs/cli.md) and one line on stderr, nothing is left in the working
directory or $TMPDIR, and clients at their defaults (curl -d) are served."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from helpers import clean_env, free_port

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


@dataclass
class Sandbox:
    """An empty working directory and an empty $TMPDIR for one run of the script."""

    cwd: Path
    tmp: Path

    @property
    def env(self) -> dict[str, str]:
        return {"TMPDIR": str(self.tmp)}

    def assert_empty(self) -> None:
        assert sorted(p.name for p in self.cwd.iterdir()) == [], "the working directory"
        assert sorted(p.name for p in self.tmp.iterdir()) == [], "$TMPDIR"


@pytest.fixture
def sandbox(tmp_path: Path) -> Sandbox:
    box = Sandbox(tmp_path / "cwd", tmp_path / "tmp")
    box.cwd.mkdir()
    box.tmp.mkdir()
    return box


def run(*args: str, box: Sandbox, timeout: float = 120, **env: str
        ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([RUNTIME, *args], capture_output=True, text=True, timeout=timeout,
                          cwd=box.cwd, env=clean_env(**box.env, **env))


def failed_plainly(r: subprocess.CompletedProcess[str], code: int, fragment: str) -> None:
    """Exit ``code``, one line on stderr holding ``fragment``, no traceback anywhere."""
    assert r.returncode == code, r.stdout + r.stderr
    assert len(r.stderr.splitlines()) == 1, r.stderr
    assert r.stderr.startswith("modelship-runtime: ") and fragment in r.stderr, r.stderr
    assert "Traceback" not in r.stdout + r.stderr


@pytest.fixture
def start_server(tmp_path: Path) -> Iterator[Any]:
    procs: list[subprocess.Popen[bytes]] = []

    def start(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None
              ) -> tuple[str, subprocess.Popen[bytes]]:
        port = free_port()
        log = (tmp_path / f"serve-{port}.log").open("wb")
        proc = subprocess.Popen([RUNTIME, "serve", "--host", "127.0.0.1", "--port", str(port),
                                 *args], stdout=log, stderr=subprocess.STDOUT, cwd=cwd,
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
                                                     tmp_path: Path, sandbox: Sandbox) -> None:
    url, proc = start_server("--model-uri", "models:/ms-lr@champion", cwd=sandbox.cwd,
                             env={"MLFLOW_TRACKING_URI": registry.uri, **sandbox.env})
    pulled_into = [p.name for p in sandbox.tmp.iterdir()]
    assert len(pulled_into) == 1 and pulled_into[0].startswith("modelship-model-")
    r = httpx.post(f"{url}/predict", json={"features": registry.X[0].tolist()},
                   headers={"X-Request-ID": "cli-1"})
    assert r.status_code == 200
    assert r.headers["x-model-version"] == "1"
    assert r.json()["prediction"] == int(registry.lr_v1.predict(registry.X[:1])[0])
    assert httpx.get(f"{url}/v2/models/ms-lr").json()["versions"] == ["1"]
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 0
    sandbox.assert_empty()  # no mlflow.db, no pulled model left behind
    lines = [json.loads(x) for x in next(tmp_path.glob("serve-*.log")).read_text().splitlines()
             if x.startswith("{")]
    pulled = [x for x in lines if x["message"] == "model pulled"]
    assert pulled and pulled[0]["version"] == "1" and pulled[0]["alias"] == "champion"
    loaded = [x for x in lines if x["message"] == "model loaded"]
    assert loaded and loaded[0]["version"] == "1" and loaded[0]["model"] == "ms-lr"


def wait_until_read(port: int, count: int, timeout: float = 60.0) -> None:
    """Wait until ``count`` connections to ``port`` on loopback are established and the
    server has read everything sent on them (the kernel's receive queue is empty)."""
    deadline = time.monotonic() + timeout
    seen = 0
    while time.monotonic() < deadline:
        seen = 0
        for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
            local, _, state, queues = line.split()[1:5]
            if int(local.split(":")[1], 16) == port and state == "01":  # ESTABLISHED
                seen += int(queues.split(":")[1], 16) == 0
        if seen >= count:
            return
        time.sleep(0.02)
    raise AssertionError(f"{seen} of {count} requests read by the server in {timeout} s")


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
    # They predict one after another (0.4 s each): SIGTERM once the server has read all four.
    wait_until_read(int(url.rsplit(":", 1)[1]), 4)
    t0 = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    for t in threads:
        t.join(30)
    assert proc.wait(30) == 0
    assert results == [200, 200, 200, 200]
    assert time.monotonic() - t0 > 0.5  # the server waited for the queued predictions
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{url}/healthz", timeout=2)


def test_serve_refuses_pickle_when_told_to(registry: Any, pulled: Any, sandbox: Sandbox) -> None:
    model_dir = pulled("models:/ms-lr/2")  # cloudpickle
    r = run("serve", "--model-dir", str(model_dir), "--port", str(free_port()), box=sandbox,
            MODELSHIP_ALLOW_PICKLE="false")
    failed_plainly(r, 8, "model refused: model.pkl is serialized with cloudpickle")
    assert "set MODELSHIP_ALLOW_PICKLE=true to trust it" in r.stderr


def test_a_load_error_after_the_pull_removes_the_pulled_model(registry: Any,
                                                               sandbox: Sandbox) -> None:
    r = run("serve", "--model-uri", "models:/ms-lr/2", "--port", str(free_port()),
            box=sandbox, MODELSHIP_ALLOW_PICKLE="false", MLFLOW_TRACKING_URI=registry.uri)
    failed_plainly(r, 8, "model refused: model.pkl is serialized with cloudpickle")
    assert '"model pulled"' in r.stdout  # it did get as far as the temporary directory
    sandbox.assert_empty()


def test_serve_without_a_model_is_a_usage_error(sandbox: Sandbox) -> None:
    failed_plainly(run("serve", box=sandbox), 2, "give --model-dir or --model-uri")


def test_version_comes_from_the_installed_distribution(sandbox: Sandbox) -> None:
    import platform
    from importlib.metadata import version

    import modelship_runtime

    r = run("--version", box=sandbox)
    assert r.returncode == 0, r.stderr
    assert r.stdout == (f"modelship-runtime {version('modelship-runtime')} (scikit-learn "
                        f"{version('scikit-learn')}, Python {platform.python_version()})\n")
    assert version("modelship-runtime") == modelship_runtime.__version__


def test_version_without_distribution_metadata_falls_back_to_the_package(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from importlib import metadata

    import modelship_runtime
    from modelship_runtime.__main__ import version_string

    def missing(name: str) -> str:
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(metadata, "version", missing)
    assert version_string().startswith(f"modelship-runtime {modelship_runtime.__version__} "
                                       "(scikit-learn not installed, Python ")


@pytest.mark.parametrize(("args", "env", "fragment"), [
    (["serve", "--model-dir", "m", "--port", "70000"], {}, "70000 is not a port number"),
    (["serve", "--model-dir", "m"], {"MODELSHIP_PORT": "http"},
     "invalid setting MODELSHIP_PORT='http'"),
    (["serve", "--model-uri", "models:/iris"], {"MLFLOW_TRACKING_URI": "http://127.0.0.1:9"},
     "is not models:/NAME/VERSION, models:/NAME@ALIAS, runs:/RUN_ID/PATH"),
    (["serve", "--model-uri", "models:/iris/3"], {}, "no registry to pull from: set "
     "MLFLOW_TRACKING_URI"),
    (["pull", "--model-uri", "models:/iris/3", "--dest", "d"], {}, "set MLFLOW_TRACKING_URI"),
    (["serve", "--model-dir", "m"], {"MODELSHIP_API_KEYS_FILE": "/nonexistent/keys"},
     "MODELSHIP_API_KEYS_FILE /nonexistent/keys: No such file or directory"),
    (["serve", "--model-dir", "m"], {"MODELSHIP_API_KEYS_FILE": "/dev/null"},
     "MODELSHIP_API_KEYS_FILE /dev/null: holds no API key"),
    ([], {}, "the following arguments are required: command"),
])
def test_usage_errors_exit_2_and_write_nothing(sandbox: Sandbox, args: list[str],
                                               env: dict[str, str], fragment: str) -> None:
    """A models:/ URI without a tracking URI used to make MLflow create mlflow.db in the
    working directory; every usage error now leaves cwd and $TMPDIR as they were."""
    r = run(*args, box=sandbox, **env)
    assert r.returncode == 2, r.stdout + r.stderr
    assert fragment in r.stderr and "Traceback" not in r.stderr + r.stdout
    if "usage:" not in r.stderr:  # argparse's own errors print the usage first
        assert len(r.stderr.splitlines()) == 1, r.stderr
    sandbox.assert_empty()


def _garbage_joblib(d: Path) -> Path:
    (d / "model.joblib").write_bytes(b"not a pickle")
    return d


@pytest.mark.parametrize(("make", "fragment"), [
    (lambda d: d / "missing", "does not exist"),
    (lambda d: d, "has no MLmodel file and 0 model files"),
    (_garbage_joblib, "cannot load model.joblib (joblib)"),
])
def test_a_model_dir_that_does_not_load_exits_7(tmp_path: Path, sandbox: Sandbox,
                                                 make: Any, fragment: str) -> None:
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    r = run("serve", "--model-dir", str(make(model_dir)), "--port", str(free_port()),
            box=sandbox)
    failed_plainly(r, 7, fragment)


def test_a_port_in_use_exits_3_before_anything_is_pulled(local_models: Any,
                                                         sandbox: Sandbox) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        r = run("serve", "--model-dir", str(local_models.lr_dir), "--host", "127.0.0.1",
                "--port", str(port), box=sandbox)
        failed_plainly(r, 3, f"cannot listen on 127.0.0.1:{port}: Address already in use")
        r = run("serve", "--model-uri", "models:/ms-lr/1", "--host", "127.0.0.1", "--port",
                str(port), box=sandbox, MLFLOW_TRACKING_URI="http://127.0.0.1:9")
        failed_plainly(r, 3, "Address already in use")  # not 6: it did not try to pull
    sandbox.assert_empty()


@pytest.mark.parametrize("command", ["pull", "serve"])
def test_a_missing_model_exits_4_and_leaves_nothing(registry: Any, sandbox: Sandbox,
                                                    tmp_path: Path, command: str) -> None:
    dest = ["--dest", str(tmp_path / "dest")] if command == "pull" else []
    r = run(command, "--model-uri", "models:/ms-lr/99", *dest, box=sandbox,
            MLFLOW_TRACKING_URI=registry.uri, MODELSHIP_PULL_BACKOFF_SECONDS="30")
    failed_plainly(r, 4, "pull failed: not found: model 'ms-lr' version 99 does not exist")
    assert not (tmp_path / "dest").exists() or not any((tmp_path / "dest").iterdir())
    sandbox.assert_empty()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_during_the_pull_removes_the_temporary_directory(
        tmp_path: Path, sandbox: Sandbox, sig: signal.Signals) -> None:
    port = free_port()  # nobody listens: the pull retries with a 30 s backoff
    log = tmp_path / "serve.log"
    with log.open("wb") as out, subprocess.Popen(
            [RUNTIME, "serve", "--model-uri", "models:/m/1", "--port", str(free_port())],
            stdout=out, stderr=subprocess.PIPE, cwd=sandbox.cwd,
            env=clean_env(**sandbox.env, MLFLOW_TRACKING_URI=f"http://127.0.0.1:{port}",
                          MODELSHIP_PULL_BACKOFF_SECONDS="30")) as proc:
        deadline = time.monotonic() + 60
        while '"pull failed; retrying"' not in log.read_text():
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        assert [p.name[:16] for p in sandbox.tmp.iterdir()] == ["modelship-model-"]
        proc.send_signal(sig)
        assert proc.wait(30) == 128 + sig
        assert proc.stderr is not None
        assert proc.stderr.read() == b""
    assert "Traceback" not in log.read_text()
    sandbox.assert_empty()


def test_curl_at_its_defaults_against_the_console_script(local_models: Any, start_server: Any,
                                                         sandbox: Sandbox) -> None:
    """`curl -d` labels JSON as a form; every prediction route reads it as JSON, and a
    real form gets a 415 whose curl line works when run."""
    import shlex

    url, proc = start_server("--model-dir", str(local_models.lr_dir), cwd=sandbox.cwd,
                             env=sandbox.env)
    row = [round(float(x), 6) for x in local_models.X[0]]
    expected = int(local_models.lr.predict(np.array([row]))[0])

    def curl(*args: str) -> tuple[int, Any]:
        done = subprocess.run(["curl", "-sS", "-w", "\n%{http_code}", *args],
                              capture_output=True, text=True, timeout=30)
        assert done.returncode == 0, done.stderr
        body, code = done.stdout.rsplit("\n", 1)
        return int(code), json.loads(body)

    code, body = curl("-d", json.dumps({"features": row}), f"{url}/predict")
    assert (code, body["prediction"]) == (200, expected)
    code, body = curl("-d", json.dumps({"instances": [row]}), f"{url}/v1/models/lr:predict")
    assert (code, body) == (200, {"predictions": [expected]})
    v2 = {"inputs": [{"name": "x", "shape": [1, 8], "datatype": "FP64", "data": row}]}
    code, body = curl("-d", json.dumps(v2), f"{url}/v2/models/lr/infer")
    assert (code, body["outputs"][0]["data"]) == (200, [expected])
    code, body = curl("-d", "features=1&features=2", f"{url}/predict")
    assert code == 415
    assert "the body is sent as application/x-www-form-urlencoded" in body["error"]
    line = shlex.split(body["error"][body["error"].index("curl -H"):])
    code, body = curl(*line[1:])
    assert code == 200 and body["prediction"] in (0, 1)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 0
    sandbox.assert_empty()


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
