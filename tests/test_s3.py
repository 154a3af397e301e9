"""The delta store, the training state and MLflow tracking on S3-compatible object storage.

A real S3 API (moto in server mode, on a free localhost port) serves every test; s3fs talks
to it over HTTP exactly as to AWS or MinIO. Only ``MLFLOW_S3_ENDPOINT_URL`` points at it, as
an MLflow user configures it: the store must find the endpoint from there. The server's
request log shows which objects each operation fetched.
"""

from __future__ import annotations

import logging
import os
import re
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("s3fs")
pytest.importorskip("moto.server")

from helpers import invoke  # noqa: E402

from mlflow_amnesia.errors import InputError, StoreError  # noqa: E402
from mlflow_amnesia.keys import load_key  # noqa: E402
from mlflow_amnesia.recording.store import DeltaStore  # noqa: E402

LAYOUT = [
    {"name": "w1", "shape": [64, 40], "dtype": "float32"},
    {"name": "b1", "shape": [64], "dtype": "float32"},
    {"name": "w2", "shape": [30, 64], "dtype": "float32"},
    {"name": "b2", "shape": [30], "dtype": "float32"},
]
PART_BYTES = 8200  # two parts per step: [w1] (10.2 KB, alone) and [b1, w2, b2] (8.1 KB)


class _RequestLog(logging.Handler):
    """The moto server's access log (werkzeug), as (method, path) pairs."""

    _LINE = re.compile(r'"([A-Z]+) (/[^ ?]*)(?:\?\S*)? HTTP')

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.requests: list[tuple[str, str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        m = self._LINE.search(re.sub(r"\x1b\[[0-9;]*m", "", record.getMessage()))  # without colours
        if m:
            self.requests.append((m.group(1), m.group(2)))

    def clear(self) -> None:
        self.requests = []

    def paths(self, method: str) -> list[str]:
        return [p for m, p in self.requests if m == method]


@pytest.fixture(scope="module")
def moto_server():
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    log = _RequestLog()
    wz = logging.getLogger("werkzeug")
    old_level = wz.level
    wz.addHandler(log)
    wz.setLevel(logging.INFO)
    yield f"http://{host}:{port}", log
    wz.removeHandler(log)
    wz.setLevel(old_level)
    server.stop()


def _aws_env(endpoint: str, tmp: Path) -> dict[str, str]:
    return {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_CONFIG_FILE": str(tmp / "no-aws-config"),
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp / "no-aws-credentials"),
        "AWS_EC2_METADATA_DISABLED": "true",
        "MLFLOW_S3_ENDPOINT_URL": endpoint,  # the one setting an MLflow user has; fsspec is not told
    }


@pytest.fixture
def s3(moto_server, monkeypatch, tmp_path):
    """A fresh bucket on the S3 server; yields (bucket, request log, s3fs filesystem)."""
    import boto3
    import s3fs

    endpoint, log = moto_server
    for k, v in _aws_env(endpoint, tmp_path).items():
        monkeypatch.setenv(k, v)
    for k in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "FSSPEC_S3_ENDPOINT_URL", "AWS_PROFILE"):
        monkeypatch.delenv(k, raising=False)
    bucket = f"amnesia-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket=bucket)
    fs = s3fs.S3FileSystem(endpoint_url=endpoint, skip_instance_cache=True)
    log.clear()
    yield bucket, log, fs


def _delta(step: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(step)
    return {t["name"]: (rng.standard_normal(t["shape"]) * 1e-3).astype(np.float32) for t in LAYOUT}


_KEY = bytes(range(32))  # the record key the stores and training files here are sealed with


def _objects(fs, prefix: str) -> list[str]:
    fs.invalidate_cache()
    return sorted(p.removeprefix(prefix + "/") for p in fs.find(prefix))


def test_store_lives_in_the_bucket_and_round_trips(s3):
    bucket, log, fs = s3
    url = f"s3://{bucket}/run/deltas"
    deltas = {s: _delta(s) for s in range(5)}
    with DeltaStore.create(url, layout=LAYOUT, codec="f32", part_bytes=PART_BYTES, key=_KEY) as st:
        for s, d in deltas.items():
            st.append(s, d, meta={"lr": 0.1})
    # manifest + 2 chunks per step; the commit markers were folded into the manifest and deleted
    assert _objects(fs, f"{bucket}/run/deltas") == ["chunks/" + f"{s}.{p}.zst" for s in range(5) for p in (0, 1)] + [
        "manifest.json"
    ]
    assert not [p for p in log.paths("PUT") if ".tmp" in p]  # whole-object PUTs, never temp + rename
    assert not [m for m, _ in log.requests if m == "POST"]  # no copy (an S3 "move"), no multipart

    st = DeltaStore.open(url, key=_KEY)
    assert st.steps == list(range(5)) and st.step_meta(2) == {"lr": 0.1}
    for s, d in deltas.items():
        got = st.read(s)
        for k in d:
            np.testing.assert_array_equal(got[k], d[k])

    # resume appending: committed steps survive, debris (a chunk without a marker) is removed
    fs.pipe_file(f"{bucket}/run/deltas/chunks/7.0.zst", b"left over by a killed writer")
    with DeltaStore.open(url, mode="a", key=_KEY) as st:
        st.append(5, _delta(5))
    assert "chunks/7.0.zst" not in _objects(fs, f"{bucket}/run/deltas")
    assert DeltaStore.open(url, key=_KEY).steps == list(range(6))


def test_a_sum_downloads_only_the_chunks_of_its_steps(s3):
    bucket, log, fs = s3
    url = f"s3://{bucket}/run/deltas"
    deltas = {s: _delta(s) for s in range(12)}
    with DeltaStore.create(url, layout=LAYOUT, codec="int8", part_bytes=PART_BYTES, key=_KEY) as st:
        for s, d in deltas.items():
            st.append(s, d)
        manifest = st.manifest_bytes()

    log.clear()
    st = DeltaStore.open(url, manifest=manifest, key=_KEY)  # what a forget does: the version's manifest copy
    assert log.requests == []  # opening reads nothing from the bucket
    S = [1, 6, 7, 10]
    total = st.sum(S)
    expected = sorted(f"/{bucket}/run/deltas/{f}" for s in S for f in st.chunk_files(s))
    assert sorted(log.paths("GET")) == expected and len(expected) == 2 * len(S)
    assert [m for m, _ in log.requests] == ["GET"] * len(expected)  # no listing, no HEAD, nothing else
    assert st.stats.chunks_read == len(expected) and st.stats.bytes_read == st.size(S).stored
    assert st.stats.bytes_read < st.size().stored / 2  # a third of the store's bytes for a third of its steps
    for k in total:
        want = sum(np.asarray(st.read(s)[k], np.float64) for s in S)
        np.testing.assert_array_equal(total[k], want)


def test_a_missing_bucket_is_an_error_and_no_bucket_is_created(s3):
    bucket, log, fs = s3
    missing = f"no-such-{uuid.uuid4().hex[:10]}"
    with pytest.raises(StoreError, match=rf"cannot create a delta store at s3://{missing}/deltas.*never creates buckets"):
        DeltaStore.create(f"s3://{missing}/deltas", layout=LAYOUT, key=_KEY)
    from mlflow_amnesia.mlflow.runs import save_state

    with pytest.raises(InputError, match=rf"cannot write s3://{missing}/training/x.pt"):
        save_state(f"s3://{missing}/training/x.pt", {"w": np.zeros(3)}, key=_KEY)
    fs.invalidate_cache()
    assert missing not in [b.rstrip("/") for b in fs.ls("")]
    assert "PUT" not in [m for m, p in log.requests if p.rstrip("/") == f"/{missing}"]  # no CreateBucket


def test_training_state_round_trips_with_single_puts(s3):
    import torch

    from mlflow_amnesia.mlflow.runs import load_array, load_state, save_array, save_state

    bucket, log, fs = s3
    base = f"s3://{bucket}/run/training"
    state = {"w": torch.arange(6.0).reshape(2, 3), "n": torch.tensor(3)}
    save_state(f"{base}/initial_state.pt", state, key=_KEY)
    save_array(f"{base}/batch_order.npy", np.arange(10, dtype=np.int32).reshape(2, 5), key=_KEY)
    assert _objects(fs, f"{bucket}/run/training") == ["batch_order.npy", "initial_state.pt"]
    assert log.paths("PUT") == [f"/{bucket}/run/training/initial_state.pt", f"/{bucket}/run/training/batch_order.npy"]
    got = load_state(f"{base}/initial_state.pt", key=_KEY)
    assert torch.equal(got["w"], state["w"]) and int(got["n"]) == 3
    np.testing.assert_array_equal(load_array(f"{base}/batch_order.npy", key=_KEY), np.arange(10).reshape(2, 5))
    with pytest.raises(InputError, match="does not exist"):
        load_state(f"{base}/optimizer_state.pt", key=_KEY)


def test_explicit_fsspec_endpoint_wins_over_mlflows(s3, monkeypatch):
    from mlflow_amnesia.recording.fs import url_to_fs

    bucket, _, _ = s3
    fs, path = url_to_fs(f"s3://{bucket}/x", {"endpoint_url": "http://127.0.0.1:9"})
    assert fs.endpoint_url == "http://127.0.0.1:9" and path == f"{bucket}/x"
    fs, _ = url_to_fs(f"s3://{bucket}/x")
    assert fs.endpoint_url == os.environ["MLFLOW_S3_ENDPOINT_URL"]
    monkeypatch.delenv("MLFLOW_S3_ENDPOINT_URL")
    fs, _ = url_to_fs(f"s3://{bucket}/x")
    assert fs.endpoint_url is None  # botocore's own resolution (AWS_ENDPOINT_URL_S3, or AWS)


# ------------------------------------------------------------------------------------------
# MLflow tracking server (SQL backend) + S3 artifact root: train and forget through the CLI


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def mlflow_server(s3, tmp_path, monkeypatch):
    """``mlflow server`` with a sqlite backend and ``s3://<bucket>/mlartifacts`` as artifact root."""
    import mlflow
    import requests

    bucket, _, _ = s3
    port = _free_port()
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true"}
    cmd = [
        sys.executable, "-m", "mlflow", "server",
        "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}",
        "--default-artifact-root", f"s3://{bucket}/mlartifacts",
        "--no-serve-artifacts",  # clients read and write s3:// directly (so does the delta store)
        "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
    ]
    log = open(tmp_path / "server.log", "w")
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            if proc.poll() is not None:
                raise AssertionError(f"mlflow server exited: {(tmp_path / 'server.log').read_text()[-3000:]}")
            try:
                if requests.get(f"{uri}/health", timeout=10).status_code == 200:
                    break
            except requests.RequestException:  # not listening yet, or still starting its workers
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"mlflow server did not start: {(tmp_path / 'server.log').read_text()[-3000:]}")
            time.sleep(0.5)
        for k in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"):
            monkeypatch.setenv(k, uri)
        mlflow.set_tracking_uri(uri)
        mlflow.set_registry_uri(uri)
        monkeypatch.chdir(tmp_path)
        yield uri
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


@pytest.mark.slow
def test_train_and_forget_against_a_tracking_server_with_an_s3_artifact_root(s3, mlflow_server, tmp_path):
    import mlflow_amnesia

    bucket, log, fs = s3
    invoke("train", "--dataset", "digits", "--arch", "cnn", "--epochs", "1", "--batch-size", "64", "--no-audit")
    v1 = mlflow_amnesia.load_model("models:/digits-cnn/1")
    store_url = v1.segments[0].store_url
    assert store_url.startswith(f"s3://{bucket}/mlartifacts/") and store_url.endswith("/artifacts/amnesia/deltas")
    prefix = store_url.removeprefix("s3://")
    chunks = [p for p in _objects(fs, prefix) if p.endswith(".zst")]
    assert len(chunks) == v1.total_steps > 0  # one part per step of this small CNN, in the bucket
    training = _objects(fs, prefix.removesuffix("/deltas") + "/training")
    assert training == ["batch_order.npy", "initial_state.pt", "optimizer_state.pt"]

    ids = invoke("records", "--model", "digits-cnn", "--limit", "2").output.split()
    assert len(ids) == 2
    (tmp_path / "ids.txt").write_text("\n".join(ids) + "\n")
    log.clear()
    invoke("forget", "--model", "digits-cnn", "--records", str(tmp_path / "ids.txt"), "--yes", "--no-audit")

    v2 = mlflow_amnesia.load_model("models:/digits-cnn/2")
    rolled = sorted(int(s) for s in v2.rolled_back)
    assert rolled and len(rolled) < v1.total_steps
    # the forget fetched exactly the rolled-back steps' chunks from the store
    fetched = sorted(p for p in log.paths("GET") if p.startswith(f"/{prefix}/chunks/"))
    assert fetched == sorted(f"/{prefix}/chunks/{s}.0.zst" for s in rolled)
    # v2's weights are v1's minus those steps' deltas
    sums = v2.segments[0].open_store(load_key()).sum(rolled)
    for name, t in v1.module.state_dict().items():
        if name in sums:
            want = t.double().numpy() - sums[name]
            np.testing.assert_allclose(v2.module.state_dict()[name].double().numpy(), want, rtol=0, atol=1e-6)
