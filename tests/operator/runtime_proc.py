"""Real `modelship-runtime serve` processes standing in for pods, and traffic to them.

The rollout tests need pods whose /metrics the operator (or Prometheus) can scrape: each
`Runtime` is a real runtime process on a free loopback port, stopped by its own pid.
`Traffic` sends real prediction requests to some of them from a background thread, a
bounded number of times and for a bounded time.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx

# ports.py lives in tests/, which pytest puts on the path; scripts that import this
# module from elsewhere (benchmarks/operator) do not
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from ports import free_port

RUNTIME = Path(sys.executable).parent / "modelship-runtime"


class Runtime:
    """One `modelship-runtime serve` process; `start()` returns once /readyz answers 200."""

    def __init__(self, args: Sequence[str], log: Path, env: dict[str, str] | None = None) -> None:
        self.args = list(args)
        self.log = log
        # No drain unless asked: these stand-in pods have no router to wait for.
        self.env = {**os.environ, "MODELSHIP_LOG_LEVEL": "WARNING", "MODELSHIP_DRAIN_SECONDS": "0",
                    **(env or {})}
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def spawn(self) -> Runtime:
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                [str(RUNTIME), "serve", "--host", "127.0.0.1", "--port", str(self.port),
                 *self.args],
                stdout=out, stderr=subprocess.STDOUT, env=self.env,
            )
        return self

    def wait_ready(self, timeout: float = 120.0) -> Runtime:
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"runtime exited with {self.proc.returncode}:\n"
                                   + self.log.read_text(errors="replace")[-3000:])
            try:
                if httpx.get(f"{self.url}/readyz", timeout=1.0).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise TimeoutError(f"runtime at {self.url} not ready in {timeout}s")

    def start(self) -> Runtime:
        return self.spawn().wait_ready()

    def metrics(self) -> str:
        return httpx.get(f"{self.url}/metrics", timeout=5.0).text

    def stop(self) -> None:
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(15)


def start_all(runtimes: Sequence[Runtime]) -> None:
    """Start several runtimes at once (each takes seconds to import and load)."""
    for runtime in runtimes:
        runtime.spawn()
    for runtime in runtimes:
        runtime.wait_ready()


@dataclass
class Traffic:
    """Prediction requests to `urls` in turn from a thread, until stopped or bounded.

    `bodies(i)` gives the JSON body of the i-th request. Status codes are counted per URL.
    """

    urls: Sequence[str]
    bodies: Callable[[int], object]
    max_requests: int = 5000
    max_seconds: float = 60.0
    pause: float = 0.01
    counts: dict[str, dict[int, int]] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> Traffic:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        deadline = time.monotonic() + self.max_seconds
        with httpx.Client(timeout=5.0) as client:
            for i in range(self.max_requests):
                if self._stop.is_set() or time.monotonic() > deadline:
                    return
                url = self.urls[i % len(self.urls)]
                try:
                    code = client.post(f"{url}/predict", json=self.bodies(i)).status_code
                except httpx.HTTPError:
                    code = 0
                by_code = self.counts.setdefault(url, {})
                by_code[code] = by_code.get(code, 0) + 1
                if self.pause:
                    time.sleep(self.pause)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(15)

    def total(self, url: str) -> int:
        return sum(self.counts.get(url, {}).values())


# --- models the runtimes serve -----------------------------------------------------------

# A step that raises on some rows, defined outside any importable module so that
# cloudpickle stores it by value and the runtime process can load it without our tests.
_GUARD = '''
def guard(X):
    """Refuses rows with a sepal longer than 6.5 cm (a fifth of iris): the runtime
    answers 500 for them, as for any exception a model raises."""
    if (X[:, 0] > 6.5).any():
        raise ValueError("sepal too long for this model")
    return X
'''


def iris() -> tuple[object, object]:
    from sklearn.datasets import load_iris

    X, y = load_iris(return_X_y=True)
    return X, y


def good_model(c: float = 1.0) -> object:
    """A LogisticRegression on iris (C varies between two good versions)."""
    from sklearn.linear_model import LogisticRegression

    X, y = iris()
    return LogisticRegression(C=c, max_iter=1000).fit(X, y)


def flaky_model() -> object:
    """A pipeline that fails (raises) on a fifth of iris rows and predicts the rest."""
    import numpy as np
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import FunctionTransformer

    X, y = iris()
    pipe = make_pipeline(FunctionTransformer(), LogisticRegression(max_iter=1000)).fit(X, y)
    namespace: dict[str, object] = {"__name__": "modelship_test_flaky", "np": np}
    exec(_GUARD, namespace)
    pipe[0].func = namespace["guard"]  # type: ignore[index]
    return pipe


def shifted_model() -> object:
    """A LogisticRegression that never predicts setosa (trained with setosa relabelled as
    virginica): healthy requests, a prediction distribution far from a good model's."""
    import numpy as np
    from sklearn.linear_model import LogisticRegression

    X, y = iris()
    relabelled = np.where(np.asarray(y) == 0, 2, y)
    return LogisticRegression(max_iter=1000).fit(X, relabelled)


def save_model(estimator: object, directory: Path) -> Path:
    """`directory/model.pkl`, cloudpickled; a --model-dir the runtime serves."""
    import cloudpickle

    directory.mkdir(parents=True, exist_ok=True)
    (directory / "model.pkl").write_bytes(cloudpickle.dumps(estimator))
    return directory


def iris_rows() -> list[list[float]]:
    X, _ = iris()
    return [[float(v) for v in row] for row in X]  # type: ignore[attr-defined]
