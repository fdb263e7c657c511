"""KServe peer: `kserve.ModelServer` with default settings and a small `kserve.Model`.

The model class follows KServe's own sklearnserver (load a joblib file, `predict` on
the V1 `instances`; a V2 request, over REST or gRPC, arrives as an `InferRequest` and is
read and answered with KServe's own helpers, as sklearnserver does). Runs inside
benchmarks/runtime/.venvs/kserve, never imported by the project. The only change to
KServe's defaults: ModelServer hard-codes 0.0.0.0 (REST) and [::] (gRPC) as listen
addresses, and the benchmark binds loopback only, so both are rewritten to 127.0.0.1
before the server starts.

    python kserve_server.py --model_name light --model_file model.joblib \
        --http_port 8080 --grpc_port 8081
"""

from __future__ import annotations

import argparse
from typing import Any

import grpc.aio._server as grpc_aio_server
import joblib
import kserve
import numpy as np
import uvicorn
from kserve.model_server import parser as kserve_parser
from kserve.protocol.infer_type import InferRequest
from kserve.utils.utils import get_predict_input, get_predict_response

_LOOPBACK = "127.0.0.1"
_UvicornConfig = uvicorn.Config


class _LoopbackConfig(_UvicornConfig):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs["host"] = _LOOPBACK
        super().__init__(*args, **kwargs)


_add_insecure_port = grpc_aio_server.Server.add_insecure_port


def _loopback_port(self: Any, address: str) -> int:
    return _add_insecure_port(self, f"{_LOOPBACK}:{address.rsplit(':', 1)[1]}")  # type: ignore[no-any-return]


uvicorn.Config = _LoopbackConfig  # type: ignore[misc]
grpc_aio_server.Server.add_insecure_port = _loopback_port


class SKLearnModel(kserve.Model):  # type: ignore[misc]
    def __init__(self, name: str, model_file: str) -> None:
        super().__init__(name)
        self.model_file = model_file
        self._model: Any = None

    def load(self) -> bool:
        self._model = joblib.load(self.model_file)
        self.ready = True
        return True

    def predict(
        self, payload: dict[str, Any] | InferRequest, headers: dict[str, str] | None = None
    ) -> Any:
        if isinstance(payload, InferRequest):
            result = self._model.predict(get_predict_input(payload))
            return get_predict_response(payload, result, self.name)
        inputs = np.asarray(payload["instances"])
        return {"predictions": self._model.predict(inputs).tolist()}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(parents=[kserve_parser])
    parser.add_argument("--model_file", required=True)
    args, _ = parser.parse_known_args()
    model = SKLearnModel(args.model_name, args.model_file)
    model.load()
    kserve.ModelServer().start([model])
