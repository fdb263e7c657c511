"""Baseline for scale: a bare FastAPI endpoint that just calls predict.

No validation beyond FastAPI's own, no metrics, no logging middleware: what a user
writes in ten lines. `/predict` takes `{"instances": [[...], ...]}` and answers
`{"predictions": [...]}`; `/constant` answers a constant, to show what the HTTP
stack alone costs. uvicorn with its defaults, one process, loopback only.

    python bare_server.py --model-file model.joblib --port 8080
"""

from __future__ import annotations

import argparse
from typing import Any

import joblib
import numpy as np
import uvicorn
from fastapi import FastAPI, Request

app = FastAPI()
_model: Any = None


@app.post("/predict")
async def predict(request: Request) -> dict[str, Any]:
    body = await request.json()
    return {"predictions": _model.predict(np.asarray(body["instances"])).tolist()}


@app.post("/constant")
async def constant(request: Request) -> dict[str, Any]:
    await request.body()
    return {"predictions": [0]}


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--model-file", required=True)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    _model = joblib.load(args.model_file)
    uvicorn.run(app, host="127.0.0.1", port=args.port)
