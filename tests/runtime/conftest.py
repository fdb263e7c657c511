"""Real parts for the runtime tests: an MLflow server, a Redis server, live HTTP apps.

The MLflow server is a real ``mlflow server`` process (sqlite backend, local artifact
root served through its proxy) started once per session on a free loopback port; the
session trains and registers the models every test uses. Apps are served by uvicorn on
a thread over real TCP, and Redis is a real ``redis-server`` process each test may kill.
Every process is stopped by its own pid (its own process group, for MLflow's workers).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import uvicorn

sys.path.insert(0, str(Path(__file__).parent))  # the helpers module beside this file

from helpers import free_port, wait_http

BIN = Path(sys.executable).parent
N_FEATURES = 8


def stop(proc: subprocess.Popen[bytes], *, group: bool = False, grace: float = 10) -> None:
    """Terminate a process we started (and its group), then kill it if it lingers."""
    if proc.poll() is not None:
        return
    if group:
        os.killpg(proc.pid, signal.SIGTERM)
    else:
        proc.terminate()
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        if group:
            os.killpg(proc.pid, signal.SIGKILL)
        else:
            proc.kill()
        proc.wait(10)


@dataclass
class Registry:
    """The session's MLflow server and what it holds."""

    uri: str
    X: np.ndarray
    y: np.ndarray
    lr_v1: Any  # LogisticRegression, skops, alias "champion"
    lr_v2: Any  # LogisticRegression(C=0.01), cloudpickle
    rf_v1: Any  # RandomForestClassifier, skops with trusted Tree
    run_id: str = ""  # the run that logged all three
    lr_v1_model_id: str = ""  # MLflow 3's logged model of lr_v1 (models:/m-...)


_MLFLOW: dict[str, Any] = {}


def _start_mlflow(root: Path) -> None:
    exe = BIN / "mlflow"
    if not exe.exists() or _MLFLOW:
        return
    port = free_port()
    log = (root / "server.log").open("wb")
    proc = subprocess.Popen(
        [str(exe), "server", "--backend-store-uri", f"sqlite:///{root}/mlflow.db",
         "--artifacts-destination", str(root / "artifacts"), "--serve-artifacts",
         "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    _MLFLOW.update(proc=proc, log=log, uri=f"http://127.0.0.1:{port}")


def pytest_collection_finish(session: pytest.Session) -> None:
    """Start MLflow as soon as tests needing it are collected (it takes ~10-30 s to come
    up), so tests that do not need it run meanwhile."""
    if any("mlflow_server" in getattr(item, "fixturenames", ()) for item in session.items):
        _start_mlflow(session.config._tmp_path_factory.mktemp("mlflow"))  # type: ignore[attr-defined]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Run tests that need the registry last, giving MLflow time to start."""
    items.sort(key=lambda item: "mlflow_server" in getattr(item, "fixturenames", ()))


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real ``mlflow server`` (sqlite, served artifacts) on a free port; its URI."""
    if not (BIN / "mlflow").exists():
        pytest.skip("the mlflow CLI is missing (pip install mlflow; make setup installs it)")
    _start_mlflow(tmp_path_factory.mktemp("mlflow"))
    proc: subprocess.Popen[bytes] = _MLFLOW["proc"]
    try:
        wait_http(f"{_MLFLOW['uri']}/health", 120, proc)
        yield str(_MLFLOW["uri"])
    finally:
        stop(proc, group=True, grace=2)  # its workers take long to exit; nothing to save
        _MLFLOW["log"].close()


@pytest.fixture(scope="session")
def registry(mlflow_server: str) -> Iterator[Registry]:
    """Train and register ms-lr v1 (skops, @champion), v2 (cloudpickle) and ms-rf v1."""
    from sklearn.datasets import make_classification
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.linear_model import LogisticRegression

    old = os.environ.get("MLFLOW_TRACKING_URI")
    os.environ["MLFLOW_TRACKING_URI"] = mlflow_server
    with warnings.catch_warnings():
        # MLflow's own import and logging emit deprecation and user warnings that are
        # none of our business; the runtime under test never imports MLflow's logging.
        warnings.simplefilter("ignore")
        import mlflow
        import mlflow.sklearn
        from mlflow import MlflowClient

        mlflow.set_tracking_uri(mlflow_server)
        X, y = make_classification(n_samples=400, n_features=N_FEATURES, n_informative=5,
                                   random_state=0)
        lr1 = LogisticRegression(max_iter=1000).fit(X, y)
        lr2 = LogisticRegression(C=0.01, max_iter=1000).fit(X, y)
        rf1 = RandomForestClassifier(n_estimators=20, max_depth=5, random_state=0).fit(X, y)
        with mlflow.start_run() as run:
            info = mlflow.sklearn.log_model(lr1, name="lr1", registered_model_name="ms-lr",
                                            pip_requirements=[], await_registration_for=0)
            mlflow.sklearn.log_model(lr2, name="lr2", registered_model_name="ms-lr",
                                     serialization_format="cloudpickle",
                                     pip_requirements=[], await_registration_for=0)
            mlflow.sklearn.log_model(rf1, name="rf1", registered_model_name="ms-rf",
                                     skops_trusted_types=["sklearn.tree._tree.Tree"],
                                     pip_requirements=[], await_registration_for=0)
        MlflowClient().set_registered_model_alias("ms-lr", "champion", "1")
    try:
        yield Registry(mlflow_server, X, y, lr1, lr2, rf1, run.info.run_id, info.model_id)
    finally:
        if old is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = old


@pytest.fixture(scope="session")
def pulled(registry: Registry, tmp_path_factory: pytest.TempPathFactory
           ) -> Callable[[str], Path]:
    """Pull a ``models:/`` URI once per session with the runtime's own pull; its dir."""
    from modelship_runtime.pull import pull

    cache: dict[str, Path] = {}

    def get(uri: str) -> Path:
        if uri not in cache:
            dest = tmp_path_factory.mktemp("model")
            pull(uri, dest, attempts=3, backoff_seconds=0.2)
            cache[uri] = dest
        return cache[uri]

    return get


@pytest.fixture(scope="session")
def lr_dir(pulled: Callable[[str], Path]) -> Path:
    """ms-lr pulled through the champion alias (version 1)."""
    return pulled("models:/ms-lr@champion")


@pytest.fixture(scope="session")
def rf_dir(pulled: Callable[[str], Path]) -> Path:
    """ms-rf version 1."""
    return pulled("models:/ms-rf/1")


class ServerThread:
    """An ASGI app served by uvicorn on a thread, over real TCP."""

    def __init__(self, app: Any) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_config=None,
                                access_log=False, lifespan="on", http="httptools")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> ServerThread:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(15)


@pytest.fixture(scope="session")
def serve() -> Iterator[Callable[..., str]]:
    """Serve an app on a thread for the rest of the session; returns its base URL."""
    servers: list[ServerThread] = []

    def start(app: Any) -> str:
        s = ServerThread(app).__enter__()
        servers.append(s)
        return s.url

    yield start
    for s in servers:
        s.__exit__()


@pytest.fixture(scope="session")
def lr_url(lr_dir: Path, serve: Callable[..., str]) -> str:
    """ms-lr@champion served with default settings."""
    from modelship_runtime import RuntimeSettings, create_app

    return serve(create_app(RuntimeSettings(model_dir=lr_dir)))


@pytest.fixture(scope="session")
def rf_url(rf_dir: Path, serve: Callable[..., str]) -> str:
    """ms-rf/1 served with default settings."""
    from modelship_runtime import RuntimeSettings, create_app

    return serve(create_app(RuntimeSettings(model_dir=rf_dir)))


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """A real redis-server on a free port: (URL, process) — tests may kill it."""
    exe = shutil.which("redis-server")
    if exe is None:
        pytest.skip("redis-server is missing (apt-get install redis-server; make setup does)")
    port = free_port()
    proc = subprocess.Popen(
        [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", str(tmp_path)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
                s.sendall(b"PING\r\n")
                if s.recv(16).startswith(b"+PONG"):
                    break
        except OSError:
            pass
        if time.monotonic() > deadline or proc.poll() is not None:
            stop(proc)
            raise RuntimeError("redis-server did not start")
        time.sleep(0.05)
    try:
        yield f"redis://127.0.0.1:{port}/0", proc
    finally:
        stop(proc)


@dataclass
class LocalModels:
    """Models trained here and saved as MLflow model directories, no registry needed."""

    X: np.ndarray
    y: np.ndarray
    lr: Any
    rf: Any
    lr_dir: Path
    rf_dir: Path


@pytest.fixture(scope="session")
def local_models(tmp_path_factory: pytest.TempPathFactory) -> LocalModels:
    """LogisticRegression and RandomForest saved with mlflow.sklearn.save_model (skops)."""
    from sklearn.datasets import make_classification
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.linear_model import LogisticRegression

    X, y = make_classification(n_samples=300, n_features=N_FEATURES, n_informative=5,
                               random_state=1)
    lr = LogisticRegression(max_iter=1000).fit(X, y)
    rf = RandomForestClassifier(n_estimators=10, max_depth=4, random_state=0).fit(X, y)
    root = tmp_path_factory.mktemp("local")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # MLflow's import-time deprecation noise
        import mlflow.sklearn

        mlflow.sklearn.save_model(lr, root / "lr", pip_requirements=[])
        mlflow.sklearn.save_model(rf, root / "rf", pip_requirements=[],
                                  skops_trusted_types=["sklearn.tree._tree.Tree"])
    return LocalModels(X, y, lr, rf, root / "lr", root / "rf")


@pytest.fixture(scope="session")
def strict_url(local_models: LocalModels, serve: Callable[..., str]) -> str:
    """The local LogisticRegression with small limits: 10 rows, 4 KiB bodies."""
    from modelship_runtime import RuntimeSettings, create_app

    settings = RuntimeSettings(model_dir=local_models.lr_dir, model_name="strict",
                               model_version="7", max_rows=10, max_body_bytes=4096)
    return serve(create_app(settings))
