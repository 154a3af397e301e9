"""The mlflow_amnesia flavor, walking the usual flavor checklist."""

from __future__ import annotations

import shutil

import mlflow
import numpy as np
import pytest
import torch

from mlflow_amnesia.mlflow import flavor
from mlflow_amnesia.mlflow.flavor import AmnesiaModel, Segment


def _tiny_model(tmp_path) -> AmnesiaModel:
    from mlflow_amnesia.recording.index import RecordIndexBuilder
    from mlflow_amnesia.keys import load_key
    from mlflow_amnesia.learning.models import build_model
    from mlflow_amnesia.recording.recorder import state_layout
    from mlflow_amnesia.recording.store import DeltaStore

    arch = {"arch": "cnn", "in_channels": 1, "num_classes": 10, "image_size": 8}
    torch.manual_seed(0)
    module = build_model(arch)
    url = str(tmp_path / "store")
    key = load_key(create=True)
    store = DeltaStore.create(url, layout=state_layout(module), codec="f32", key=key)
    b = RecordIndexBuilder(key)
    for step in range(3):
        store.append(
            step, {k: torch.randn_like(v) * 1e-3 for k, v in module.state_dict().items() if v.is_floating_point()}
        )
        b.add(step, [f"r{step}a", f"r{step}b"])
    store.close()
    seg = Segment("train", url, 0, 2, manifest=store.manifest_bytes(), index=b.build().to_bytes())
    info = {"input_shape": [1, 8, 8], "num_classes": 10, "codec": "f32", "recipe": {}, "dataset": {}, "split": {}}
    return AmnesiaModel(module=module, arch=arch, info=info, segments=[seg])


def test_save_load_round_trip(tmp_path):
    m = _tiny_model(tmp_path)
    flavor.save_model(m, tmp_path / "saved")
    back = flavor.load_model(str(tmp_path / "saved"))
    for k, v in m.module.state_dict().items():
        assert torch.equal(v, back.module.state_dict()[k])
    assert back.arch == m.arch
    assert back.segments[0].manifest == m.segments[0].manifest
    assert back.segments[0].index == m.segments[0].index


def test_weights_are_not_pickled(tmp_path):
    m = _tiny_model(tmp_path)
    flavor.save_model(m, tmp_path / "saved")
    # weights_only loading is what load_model uses; a pickled module object would fail it
    state = torch.load(tmp_path / "saved" / "data" / "weights.pt", weights_only=True)
    assert set(state) == set(m.module.state_dict())


def test_pyfunc_equals_native_and_signature(tmp_path):
    m = _tiny_model(tmp_path)
    flavor.save_model(m, tmp_path / "saved")
    pf = mlflow.pyfunc.load_model(str(tmp_path / "saved"))
    x = np.random.default_rng(0).normal(size=(5, 1, 8, 8)).astype(np.float32)
    probs = pf.predict(x, params={"input": "normalized"}).filter(like="prob_").to_numpy()
    np.testing.assert_allclose(probs, m.predict_proba(x), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(probs.sum(1), 1.0, rtol=1e-5)
    sig = pf.metadata.signature
    assert sig is not None and sig.params.to_dict()[0]["name"] == "input"
    assert (tmp_path / "saved" / "input_example.json").exists() or pf.metadata.saved_input_example_info
    # a version that records no normalisation takes no raw pixels: it says what to send
    with pytest.raises(mlflow.exceptions.MlflowException, match="records no normalisation"):
        pf.predict(x)


def test_log_model_registers_and_load_reads_no_chunk(tmp_path):
    m = _tiny_model(tmp_path)
    with mlflow.start_run():
        info = flavor.log_model(m, name="model", registered_model_name="tiny")
    assert int(info.registered_model_version) == 1
    # delete the whole delta store: loading a version must not need any chunk
    shutil.rmtree(tmp_path / "store")
    back = flavor.load_model("models:/tiny/1")
    x = np.zeros((2, 1, 8, 8), np.float32)
    np.testing.assert_allclose(back.predict_proba(x), m.predict_proba(x), rtol=1e-6)


def test_other_flavor_is_a_clear_error(tmp_path):
    from mlflow_amnesia.errors import InputError

    class M(mlflow.pyfunc.PythonModel):
        def predict(self, context, model_input):
            return model_input

    mlflow.pyfunc.save_model(tmp_path / "other", python_model=M())
    with pytest.raises(InputError, match="not an mlflow_amnesia model.*python_function"):
        flavor.load_model(str(tmp_path / "other"))


def test_wrong_input_shape(tmp_path):
    from mlflow_amnesia.errors import InputError

    m = _tiny_model(tmp_path)
    with pytest.raises(InputError, match=r"expected images shaped \(N, 1, 8, 8\)"):
        m.predict_proba(np.zeros((2, 3, 8, 8), np.float32))
