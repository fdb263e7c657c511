"""API keys follow their Secret without a restart: kubelet's ``..data`` symlink swap is
seen within about a second, a key file that cannot be used keeps the old keys (logged and
counted), and at start it is a one-line exit 2."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from helpers import metric

RUNTIME = str(Path(sys.executable).parent / "modelship-runtime")
ROW = {"features": [0.1] * 8}


class SecretVolume:
    """A directory laid out as kubelet mounts a Secret: ``KEY -> ..data/KEY``,
    ``..data -> ..<timestamp>``, updated by writing a new timestamped directory and
    renaming a new ``..data`` link over the old one (atomic)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir()
        self.generation = 0

    def publish(self, files: dict[str, bytes]) -> None:
        self.generation += 1
        data = self.root / f"..2026_11_28_10_00_{self.generation:02d}.000000001"
        data.mkdir()
        for name, content in files.items():
            (data / name).write_bytes(content)
        tmp = self.root / "..data_tmp"
        tmp.symlink_to(data.name)
        os.replace(tmp, self.root / "..data")
        for name in files:
            link = self.root / name
            if not link.is_symlink():
                link.symlink_to(f"..data/{name}")


def status(url: str, key: str) -> int:
    return httpx.post(f"{url}/predict", json=ROW, headers={"X-API-Key": key}).status_code


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout}s: {what}")
        time.sleep(0.05)


@pytest.fixture(scope="module")
def rotating(local_models: Any, serve: Callable[..., str],
             tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, SecretVolume]]:
    from modelship_runtime import RuntimeSettings, create_app

    volume = SecretVolume(tmp_path_factory.mktemp("secret") / "keys")
    volume.publish({"alice": b"key-old-1\n", "bob": b"key-bob\n"})
    settings = RuntimeSettings(model_dir=local_models.lr_dir, model_name="rot",
                               api_keys_file=volume.root)
    yield serve(create_app(settings)), volume


def test_a_rotated_secret_is_used_without_a_restart(
        rotating: tuple[str, SecretVolume]) -> None:
    url, volume = rotating
    assert (status(url, "key-old-1"), status(url, "key-bob"), status(url, "key-new-2")) == \
        (200, 200, 401)
    assert metric(url, "modelship_api_keys") == 2
    assert "modelship_rate_limit_backend{" not in httpx.get(f"{url}/metrics").text  # off
    volume.publish({"alice": b"key-new-2\n", "bob": b"key-bob\n"})
    wait_for(lambda: status(url, "key-new-2") == 200, "the new key is accepted")
    assert status(url, "key-old-1") == 401
    assert status(url, "key-bob") == 200
    assert metric(url, "modelship_api_key_reloads_total", result="ok") >= 1

    # A Secret value that is not UTF-8: the keys in force stay, the failure is counted.
    errors = metric(url, "modelship_api_key_reloads_total", result="error")
    volume.publish({"alice": b"\xff\xfekey\n", "bob": b"key-bob\n"})
    wait_for(lambda: metric(url, "modelship_api_key_reloads_total", result="error")
             == errors + 1, "the bad reload is counted")
    assert (status(url, "key-new-2"), status(url, "key-bob")) == (200, 200)
    assert metric(url, "modelship_api_keys") == 2

    # Fixed again: the next good Secret is used.
    volume.publish({"alice": b"key-third\n"})
    wait_for(lambda: status(url, "key-third") == 200, "the fixed Secret is used")
    assert (status(url, "key-new-2"), status(url, "key-bob")) == (401, 401)


def test_the_keyring_compares_every_key_and_names_keys_by_digest(tmp_path: Path) -> None:
    from modelship_runtime.auth import KeyRing

    (tmp_path / "k").write_text("alpha\nbeta\n")
    ring = KeyRing(tmp_path / "k")
    a, b = ring.match(b"alpha"), ring.match(b"beta")
    assert a is not None and b is not None and a != b
    assert "alpha" not in a and len(a) == 16
    assert ring.match(b"alph") is None and ring.match(b"") is None
    assert ring.match(b"alpha\x00") is None


@pytest.mark.parametrize(("content", "fragment"), [
    (b"good-key\n\xff\xfe\n", "not UTF-8 text (byte 0xff at offset 9)"),
    (b"key\x01withcontrol\n", "line 1 holds a control character"),
    (b"\n  \n", "holds no API key"),
])
def test_an_unusable_key_file_at_start_is_one_line_and_exit_2(
        tmp_path: Path, local_models: Any, content: bytes, fragment: str) -> None:
    (tmp_path / "keys").write_bytes(content)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MODELSHIP_", "MLFLOW_"))}
    r = subprocess.run([RUNTIME, "serve", "--model-dir", str(local_models.lr_dir), "--port",
                        "8080"], capture_output=True, text=True, timeout=120,
                       env={**env, "MODELSHIP_API_KEYS_FILE": str(tmp_path / "keys"),
                            "MODELSHIP_GRPC_PORT": "0"})
    assert r.returncode == 2, r.stdout + r.stderr
    assert len(r.stderr.splitlines()) == 1 and "Traceback" not in r.stdout + r.stderr
    assert r.stderr.startswith("modelship-runtime: MODELSHIP_API_KEYS_FILE ") and \
        fragment in r.stderr, r.stderr
