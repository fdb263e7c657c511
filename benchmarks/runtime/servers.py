"""The servers under test: how each starts, where it predicts, what body it takes.

Each server speaks its own default protocol, the one its users would send:
modelship-runtime its `/predict` (seed format, which also returns probabilities; the
`modelship-v1` and `modelship-v2` targets are the same runtime sent KServe V1 and Open
Inference V2 requests, to compare its protocols with each other),
MLServer the Open Inference Protocol V2 (`/v2/models/{name}/infer`, FP64 tensor),
KServe its V1 `/v1/models/{name}:predict`, and the bare FastAPI baseline a plain
`{"instances": ...}` POST. Bodies carry the same rows, serialised by `json.dumps`.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path

from procs import free_port

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
VENVS = HERE / ".venvs"
PEERS = HERE / "peers"


@dataclass(frozen=True)
class ModelFiles:
    """One trained model in every form a server loads."""

    name: str
    joblib_path: Path
    mlflow_dir: Path | None
    n_features: int


@dataclass(frozen=True)
class Launch:
    """What `procs.Server` needs, plus where to send predictions."""

    argv: list[str]
    env: dict[str, str]
    predict_url: str
    #: where it serves gRPC (the Open Inference Protocol's), and Prometheus metrics
    grpc_port: int | None = None
    metrics_url: str | None = None


def base_env() -> dict[str, str]:
    """The caller's environment without anything that would leak a venv into a server."""
    env = {k: v for k, v in os.environ.items() if k not in {"VIRTUAL_ENV", "PYTHONPATH"}}
    env["PYTHONUNBUFFERED"] = "1"
    return env


class Target:
    """A server under test. Subclasses set the name, venv and protocol."""

    name = ""
    role = "peer"  # runtime | peer | baseline
    venv = ""
    #: scenarios this target runs (None: all)
    scenarios: tuple[str, ...] | None = None

    def python(self) -> Path:
        return VENVS / self.venv / "bin" / "python"

    def launch(self, model: ModelFiles, workdir: Path) -> Launch:
        raise NotImplementedError

    def body(self, rows: list[list[float]], single: bool) -> str:
        return json.dumps({"instances": rows})


class Modelship(Target):
    """modelship-runtime from a venv holding only what its `runtime` extra installs
    (the project's dev venv also has pandas and full MLflow, which scikit-learn and
    the import system would pick up and the runtime image does not carry)."""

    name = "modelship"
    role = "runtime"
    venv = "modelship"

    def launch(self, model: ModelFiles, workdir: Path) -> Launch:
        if model.mlflow_dir is None:
            raise RuntimeError("modelship needs the MLflow model directory (mlflow missing?)")
        port = free_port()
        argv = [
            str(VENVS / self.venv / "bin" / "modelship-runtime"),
            "serve",
            "--model-dir",
            str(model.mlflow_dir),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ]
        env = base_env()
        env["MODELSHIP_MODEL_NAME"] = model.name
        env["MODELSHIP_DRAIN_SECONDS"] = "0"  # no router in front: stop at SIGTERM
        # gRPC stays on, as by default, on a port of its own: several runtimes run at once
        grpc_port = free_port()
        env["MODELSHIP_GRPC_PORT"] = str(grpc_port)
        return Launch(argv, env, f"http://127.0.0.1:{port}/predict", grpc_port,
                      f"http://127.0.0.1:{port}/metrics")

    def body(self, rows: list[list[float]], single: bool) -> str:
        if single:
            return json.dumps({"features": rows[0]})
        return json.dumps({"instances": rows})


class ModelshipV1(Modelship):
    """The same runtime answering KServe V1 `POST /v1/models/NAME:predict`."""

    name = "modelship-v1"
    role = "protocol"

    def launch(self, model: ModelFiles, workdir: Path) -> Launch:
        launch = super().launch(model, workdir)
        url = launch.predict_url.replace("/predict", f"/v1/models/{model.name}:predict")
        return dataclasses.replace(launch, predict_url=url)

    def body(self, rows: list[list[float]], single: bool) -> str:
        return json.dumps({"instances": rows})


class ModelshipV2(Modelship):
    """The same runtime answering Open Inference V2 `POST /v2/models/NAME/infer` with the
    body MLServer is sent (one FP64 tensor)."""

    name = "modelship-v2"
    role = "protocol"

    def launch(self, model: ModelFiles, workdir: Path) -> Launch:
        launch = super().launch(model, workdir)
        url = launch.predict_url.replace("/predict", f"/v2/models/{model.name}/infer")
        return dataclasses.replace(launch, predict_url=url)

    def body(self, rows: list[list[float]], single: bool) -> str:
        return MLServer().body(rows, single)


class MLServer(Target):
    name = "mlserver"
    venv = "mlserver"

    def launch(self, model: ModelFiles, workdir: Path) -> Launch:
        repo = workdir / "mlserver-repo" / model.name
        repo.mkdir(parents=True, exist_ok=True)
        (repo / "model-settings.json").write_text(
            json.dumps(
                {
                    "name": model.name,
                    "implementation": "mlserver_sklearn.SKLearnModel",
                    "parameters": {"uri": str(model.joblib_path)},
                }
            )
        )
        port, grpc_port, metrics_port = free_port(), free_port(), free_port()
        env = base_env()
        env.update(
            MLSERVER_HOST="127.0.0.1",
            MLSERVER_HTTP_PORT=str(port),
            MLSERVER_GRPC_PORT=str(grpc_port),
            MLSERVER_METRICS_PORT=str(metrics_port),
        )
        argv = [str(VENVS / self.venv / "bin" / "mlserver"), "start", str(repo)]
        return Launch(argv, env, f"http://127.0.0.1:{port}/v2/models/{model.name}/infer",
                      grpc_port, f"http://127.0.0.1:{metrics_port}/metrics")

    def body(self, rows: list[list[float]], single: bool) -> str:
        flat = [x for row in rows for x in row]
        tensor = {
            "name": "input-0",
            "shape": [len(rows), len(rows[0])],
            "datatype": "FP64",
            "data": flat,
        }
        return json.dumps({"inputs": [tensor]})


class KServe(Target):
    name = "kserve"
    venv = "kserve"

    def launch(self, model: ModelFiles, workdir: Path) -> Launch:
        port, grpc_port = free_port(), free_port()
        argv = [
            str(self.python()),
            str(PEERS / "kserve_server.py"),
            "--model_name",
            model.name,
            "--model_file",
            str(model.joblib_path),
            "--http_port",
            str(port),
            "--grpc_port",
            str(grpc_port),
        ]
        return Launch(argv, base_env(), f"http://127.0.0.1:{port}/v1/models/{model.name}:predict",
                      grpc_port, f"http://127.0.0.1:{port}/metrics")


class BareFastAPI(Target):
    name = "fastapi-bare"
    role = "baseline"
    venv = "bare"
    path = "/predict"

    def launch(self, model: ModelFiles, workdir: Path) -> Launch:
        port = free_port()
        argv = [
            str(self.python()),
            str(PEERS / "bare_server.py"),
            "--model-file",
            str(model.joblib_path),
            "--port",
            str(port),
        ]
        return Launch(argv, base_env(), f"http://127.0.0.1:{port}{self.path}")


class ConstantFastAPI(BareFastAPI):
    """The bare stack answering a constant: the HTTP cost alone, light model runs only."""

    name = "fastapi-constant"
    path = "/constant"
    scenarios = ("single-c8",)


TARGETS: dict[str, Target] = {
    t.name: t
    for t in (
        Modelship(),
        ModelshipV1(),
        ModelshipV2(),
        MLServer(),
        KServe(),
        BareFastAPI(),
        ConstantFastAPI(),
    )
}
PEER_NAMES = ("mlserver", "kserve")
