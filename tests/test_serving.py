"""`mlflow models serve` on loopback: raw pixels in (``inputs`` and ``dataframe_split``), the
native model's predictions out, classes named; with ``--env-manager local`` and, slow, with the
default environment manager, which rebuilds the model's environment from its requirements
(this package's wheel inside the model, everything else from the package index)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import mlflow
import numpy as np
import pytest
from flavor_helpers import digits_model, raw_digits

from mlflow_amnesia.mlflow import flavor

REPO = Path(__file__).resolve().parents[1]
MLFLOW = str(Path(sys.executable).with_name("mlflow"))
PROBS = [f"prob_{c}" for c in range(10)]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """``mlflow models serve -m URI`` on 127.0.0.1, stopped (its process group) on exit."""

    def __init__(self, uri: str, env: dict, *, env_manager: str | None, timeout: float, log: Path) -> None:
        self.port = _free_port()
        cmd = [MLFLOW, "models", "serve", "-m", uri, "--host", "127.0.0.1", "--port", str(self.port)]
        if env_manager:
            cmd += ["--env-manager", env_manager]
        self.log = log
        self.started = time.monotonic()
        self.proc = subprocess.Popen(
            cmd, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True
        )
        self.ready_after = self._wait(timeout)

    def _wait(self, timeout: float) -> float:
        while time.monotonic() - self.started < timeout:
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"mlflow models serve exited {self.proc.returncode}: {self.log.read_text()[-3000:]}"
                )
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/ping", timeout=2) as r:
                    if r.status == 200:
                        return time.monotonic() - self.started
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.5)
        raise AssertionError(f"mlflow models serve not ready after {timeout:.0f} s: {self.log.read_text()[-3000:]}")

    def post(self, payload: dict) -> tuple[int, dict]:
        req = urllib.request.Request(
            f"http://127.0.0.1:{self.port}/invocations",
            data=json.dumps(payload).encode(),
            headers={"Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read() or b"{}")

    def stop(self) -> None:
        import signal

        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


def _registered(tmp_path: Path, name: str):
    am, records = digits_model(tmp_path)
    with mlflow.start_run():
        flavor.log_model(am, name=f"{name}-v1", registered_model_name=name)
    return am, records


def _env(**extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(MLFLOW_TRACKING_URI=mlflow.get_tracking_uri(), MLFLOW_REGISTRY_URI=mlflow.get_registry_uri(), **extra)
    return env


def _check_raw_predictions(server: Server, am, records) -> None:
    images, _ = raw_digits()
    native = am.predict_proba(records.x[-64:])
    flat = images.reshape(len(images), -1)
    payloads = {
        "inputs, (N, 8, 8) floats 0..16": {"inputs": images.tolist()},
        "inputs, (N, 1, 8, 8) ints": {"inputs": images.astype(int)[:, None].tolist()},
        "dataframe_split, 64 pixel columns": {
            "dataframe_split": {"columns": [f"pixel_{i}" for i in range(64)], "data": flat.astype(int).tolist()}
        },
    }
    for what, payload in payloads.items():
        status, body = server.post(payload)
        assert status == 200, (what, body)
        rows = body["predictions"]
        assert [r["label_index"] for r in rows] == native.argmax(1).tolist(), what
        assert [r["label"] for r in rows] == [str(i) for i in native.argmax(1)], what
        np.testing.assert_allclose([[r[p] for p in PROBS] for r in rows], native, rtol=1e-5, atol=1e-6, err_msg=what)
    # the normalised tensor path, named by a param
    status, body = server.post({"inputs": records.x[-64:].numpy().tolist(), "params": {"input": "normalized"}})
    assert status == 200, body
    np.testing.assert_allclose([[r[p] for p in PROBS] for r in body["predictions"]], native, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_serve_raw_pixels_with_the_local_environment(tmp_path):
    am, records = _registered(tmp_path, "served")
    server = Server(
        "models:/served/1", _env(PYTHONPATH=str(REPO)), env_manager="local", timeout=180, log=tmp_path / "serve.log"
    )
    try:
        _check_raw_predictions(server, am, records)
        # normalised tensors sent as raw pixels: a 400 saying what to send, not a wrong answer
        status, body = server.post({"inputs": records.x[:4].numpy().tolist()})
        assert status == 400 and "raw pixels of this model lie in 0..16" in body["message"], body
        status, body = server.post({"inputs": [[1, 2, 3]]})
        assert status == 400 and "expected images shaped (N, 1, 8, 8)" in body["message"], body
        # the README's curl command, as typed (its port aside): one raw digit, the class named
        block = (REPO / "README.md").read_text().split("<!-- serve-command -->", 1)[1].split("```")[1]
        serve, wait, curl = [ln for ln in block.splitlines()[1:] if ln.strip()]
        assert "mlflow models serve -m models:/digits-resnet/1 --env-manager local" in serve and "ping" in wait
        out = subprocess.run(["bash", "-c", curl.replace("5001", str(server.port))], capture_output=True, text=True, timeout=60)
        (row,) = json.loads(out.stdout)["predictions"]
        image = np.asarray(json.loads(curl.split("-d '", 1)[1].rstrip("'"))["inputs"])
        assert row["label_index"] == int(am.predict_raw(image).argmax()) and row["label"] == str(row["label_index"])
    finally:
        server.stop()


@pytest.mark.slow
def test_serve_with_the_default_environment_manager(tmp_path):
    """MLflow builds the model's virtualenv from its requirements (this package's wheel from the
    model, the rest from the index): no ``--env-manager local``, no PYTHONPATH, no checkout.
    Measured on the 2-core build machine: docs/ARCHITECTURE.md, "Serving"."""
    if os.environ.get("MLFLOW_AMNESIA_SERVE_VENV") != "1":
        pytest.skip(
            "set MLFLOW_AMNESIA_SERVE_VENV=1 to run it: MLflow installs torch 2.14.1 with its CUDA wheels "
            "(6.2 GB) into a fresh virtualenv, 16 min on the loaded 2-core build machine"
        )
    if shutil.which("pyenv") is None and not (Path.home() / ".pyenv" / "bin" / "pyenv").exists():
        pytest.skip("the virtualenv environment manager needs pyenv (MLflow's requirement)")
    am, records = _registered(tmp_path, "rebuilt")
    envs = tmp_path / "envs"
    env = _env(MLFLOW_ENV_ROOT=str(envs))
    env["PATH"] = f"{Path.home() / '.pyenv' / 'bin'}:{env.get('PATH', '')}"
    server = None
    try:
        server = Server("models:/rebuilt/1", env, env_manager=None, timeout=3000, log=tmp_path / "serve.log")
        print(f"default env manager: serving after {server.ready_after:.0f} s")
        _check_raw_predictions(server, am, records)
        # the environment holds this package from the model's wheel, not from a checkout
        log = (tmp_path / "serve.log").read_text()
        assert "Successfully installed" in log and "mlflow-amnesia-0.1.0+" in log
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(envs, ignore_errors=True)  # 6 GB: never left behind
