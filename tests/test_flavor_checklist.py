"""The mlflow_amnesia flavor against the checklist small flavors keep (mlflavors): save/load round
trip, pyfunc equals native, signature and input example, log_model registers, bad input is a
clear error, load in a fresh process; and MLflow's own flavor arguments (environments, code_paths,
the flavor configuration read back). Serving over HTTP: tests/test_serving.py."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import warnings
import zipfile
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
import yaml
from flavor_helpers import digits_model, raw_digits
from mlflow.exceptions import MlflowException

from mlflow_amnesia.errors import InputError
from mlflow_amnesia.mlflow import flavor

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    import os

    os.environ.setdefault("MLFLOW_AMNESIA_KEY", "11" * 32)
    return digits_model(tmp_path_factory.mktemp("digits"))


@pytest.fixture
def saved(model, tmp_path):
    am, _ = model
    flavor.save_model(am, tmp_path / "m")
    return tmp_path / "m"


def _native(am, records, n=64):
    return am.predict_proba(records.x[-n:])


def test_save_load_round_trip(model, saved):
    am, _ = model
    back = flavor.load_model(str(saved))
    for k, v in am.module.state_dict().items():
        assert torch.equal(v, back.module.state_dict()[k])
    assert back.arch == am.arch and back.info.dataset == am.info.dataset and back.info.classes == am.info.classes
    assert [s.index for s in back.segments] == [s.index for s in am.segments]
    np.testing.assert_array_equal(back.example, am.example)  # carried to a forget's child


def test_pyfunc_equals_native_on_raw_pixels_in_every_shape(model, saved):
    am, records = model
    pf = mlflow.pyfunc.load_model(str(saved))
    native = _native(am, records)
    images, _ = raw_digits()
    probs = [f"prob_{c}" for c in range(10)]
    for x in (
        images,  # scikit-learn's (N, 8, 8) floats 0..16
        images.astype(np.uint8)[:, None],  # (N, 1, 8, 8) uint8
        images.reshape(len(images), -1).astype(np.int64),  # flat ints
    ):
        out = pf.predict(x)
        assert list(out.columns) == ["label", "label_index", *probs]
        np.testing.assert_allclose(out[probs].to_numpy(), native, rtol=1e-5, atol=1e-7)
        assert (out["label_index"].to_numpy() == native.argmax(1)).all()
        assert (out["label"].to_numpy() == np.array([str(i) for i in native.argmax(1)])).all()
    # the normalised tensor path stays: the network's own input
    out = pf.predict(records.x[-64:].numpy(), params={"input": "normalized"})
    np.testing.assert_array_equal(out[probs].to_numpy(), native)
    # a DataFrame of pixel columns (what dataframe_split becomes) too
    import pandas as pd

    df = pd.DataFrame(images.reshape(len(images), -1), columns=[f"p{i}" for i in range(64)])
    np.testing.assert_allclose(pf.predict(df)[probs].to_numpy(), native, rtol=1e-5, atol=1e-7)
    # the model's accuracy on raw pixels is its accuracy on the normalised tensors
    y = records.y[-64:].numpy()
    assert (pf.predict(images)["label_index"].to_numpy() == y).mean() == (native.argmax(1) == y).mean()


def test_signature_params_and_a_real_input_example(model, saved):
    am, records = model
    pf = mlflow.pyfunc.load_model(str(saved))
    sig = pf.metadata.signature
    assert sig.inputs is None  # any of the shapes and dtypes above; the metadata spells them out
    assert sig.outputs.input_names() == ["label", "label_index", *[f"prob_{c}" for c in range(10)]]
    assert sig.params.to_dict() == [
        {"name": "input", "type": "string", "default": "raw", "shape": None},
        {"name": "output", "type": "string", "default": "table", "shape": None},
    ]
    # the table's parts alone, by param or by model_config at load (mlflow.models.evaluate's classifier wants labels)
    images, _ = raw_digits(8)
    native = am.predict_raw(images)
    np.testing.assert_array_equal(pf.predict(images, params={"output": "label_index"}), native.argmax(1))
    np.testing.assert_array_equal(pf.predict(images, params={"output": "probabilities"}), native)
    labels = mlflow.pyfunc.load_model(str(saved), model_config={"output": "label"}).predict(images)
    assert labels.tolist() == [str(i) for i in native.argmax(1)]
    described = pf.metadata.metadata["mlflow_amnesia"]["input"]
    assert described["raw_range"] == [0, 16.0] and "flat (N, 64)" in described["accepts"]
    example = np.asarray(json.loads((saved / "input_example.json").read_text()))  # MLflow writes an ndarray bare
    assert example.shape == (2, 1, 8, 8) and example.min() >= 0 and 8 < example.max() <= 16
    # a class mean, not a record: no digits image equals it
    raw = np.rint((records.x.numpy() * 0.37605 + 0.30526) * 16)
    assert not any(np.array_equal(raw[i], example[0]) for i in range(len(raw)))
    # the serving example MLflow shows in the UI predicts the classes it averages
    serving = json.loads((saved / "serving_input_example.json").read_text())
    out = pf.predict(np.asarray(serving["inputs"]))
    assert list(out["label"]) == ["0", "1"]


def test_log_model_registers_and_loads_by_uri(model, tmp_path):
    am, records = model
    with mlflow.start_run():
        info = flavor.log_model(am, name="digits-v1", registered_model_name="tiny")
    assert int(info.registered_model_version) == 1
    mlflow.MlflowClient().set_registered_model_alias("tiny", "production", "1")
    for uri in ("models:/tiny/1", "models:/tiny@production", info.model_uri):
        back = flavor.load_model(uri)
        np.testing.assert_array_equal(back.predict_proba(records.x[:8]), am.predict_proba(records.x[:8]))
    reqs = (Path(mlflow.artifacts.download_artifacts("models:/tiny/1")) / "requirements.txt").read_text().split()
    assert reqs[0].startswith("wheels/mlflow_amnesia-") and f"mlflow=={mlflow.__version__}" in reqs


@pytest.mark.parametrize(
    ("x", "params", "message"),
    [
        (np.zeros((2, 3, 8, 8)), None, r"expected images shaped \(N, 1, 8, 8\) or flat \(N, 64\) or \(N, 8, 8\)"),
        (np.full((2, 8, 8), 17.0), None, r"raw pixels of this model lie in 0\.\.16"),
        (np.full((2, 8, 8), -0.8), None, r"params=\{'input': 'normalized'\}"),
        (np.full((2, 8, 8), np.nan), None, "NaN or infinite"),
        (np.array([["a"] * 64]), None, "as numbers"),
        (np.zeros((2, 64)), {"input": "scaled"}, "use 'raw' or 'normalized'"),
        (np.zeros((2, 64)), {"output": "logits"}, "'output' is 'logits': use one of 'table', 'label_index'"),
    ],
)
def test_bad_input_is_a_clear_error(saved, x, params, message):
    pf = mlflow.pyfunc.load_model(str(saved))
    with pytest.raises(MlflowException, match=message) as e:
        pf.predict(x, params=params)
    assert "\n" not in str(e.value.message)


@pytest.mark.slow
def test_load_in_a_fresh_process(model, saved):
    am, records = model
    code = (
        "import sys, numpy as np, mlflow\n"
        "from sklearn.datasets import load_digits\n"
        "out = mlflow.pyfunc.load_model(sys.argv[1]).predict(load_digits().images[-64:])\n"
        "print(','.join(map(str, out['label_index'])))\n"
    )
    r = subprocess.run(
        [sys.executable, "-c", code, str(saved)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**__import__("os").environ, "PYTHONPATH": str(REPO)},
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip().splitlines()[-1] == ",".join(map(str, _native(am, records).argmax(1)))


def test_environment_arguments_as_mlflow_flavors_have_them(model, tmp_path):
    am, _ = model
    default = flavor.get_default_pip_requirements()
    assert default[0].startswith("wheels/mlflow_amnesia-0.") and default[0].endswith("-py3-none-any.whl")
    assert f"torch=={torch.__version__.split('+')[0]}" in default
    assert {"name", "dependencies"} <= set(flavor.get_default_conda_env())

    flavor.save_model(am, tmp_path / "extra", extra_pip_requirements=["scikit-learn"])
    reqs = (tmp_path / "extra" / "requirements.txt").read_text().split()
    assert reqs[: len(default)] == default and reqs[-1] == "scikit-learn"
    conda = yaml.safe_load((tmp_path / "extra" / "conda.yaml").read_text())
    assert "scikit-learn" in conda["dependencies"][-1]["pip"]

    flavor.save_model(am, tmp_path / "own", pip_requirements=["torch", "mlflow-amnesia"])
    assert (tmp_path / "own" / "requirements.txt").read_text().split()[-2:] == ["torch", "mlflow-amnesia"]

    env = {"name": "x", "channels": ["conda-forge"], "dependencies": ["python=3.11", {"pip": ["mlflow", "torch"]}]}
    flavor.save_model(am, tmp_path / "conda", conda_env=env)
    assert yaml.safe_load((tmp_path / "conda" / "conda.yaml").read_text()) == env
    with pytest.raises(ValueError, match="Only one of `conda_env`"):
        flavor.save_model(am, tmp_path / "both", conda_env=env, pip_requirements=["torch"])

    helper = tmp_path / "my_helpers.py"
    helper.write_text("X = 1\n")
    flavor.save_model(am, tmp_path / "code", code_paths=[str(helper)])
    assert (tmp_path / "code" / "code" / "my_helpers.py").is_file()
    conf = yaml.safe_load((tmp_path / "code" / "MLmodel").read_text())["flavors"]
    assert conf["mlflow_amnesia"]["code"] == conf["python_function"]["code"] == "code"


def test_the_wheel_in_the_model_is_this_package(saved, tmp_path):
    wheel = next((saved / "wheels").glob("*.whl"))
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        meta = next(n for n in names if n.endswith(".dist-info/METADATA"))
        assert "mlflow_amnesia/mlflow/flavor.py" in names and "mlflow_amnesia/py.typed" in names
        assert "Requires-Dist: torch" in z.read(meta).decode()
        assert z.read("mlflow_amnesia/mlflow/flavor.py") == (REPO / "mlflow_amnesia/mlflow/flavor.py").read_bytes()
    target = tmp_path / "site"
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--no-deps",
            "--no-index",
            "--quiet",
            "--target",
            str(target),
            str(wheel),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert (target / "mlflow_amnesia" / "mlflow" / "wheel.py").is_file()


def test_the_wheel_keeps_its_metadata_beside_a_source_trees_egg_info(tmp_path, monkeypatch):
    """`pip install -e .` leaves ``mlflow_amnesia.egg-info`` (no METADATA) in the checkout; run from
    there (`python -m ...`, `mlflow run . --env-manager local`) the checkout is first on sys.path and
    importlib finds that egg-info first. The model's wheel must still carry the installed METADATA
    (its Requires-Dist is what pip installs where the model is served), not an empty file."""
    from mlflow_amnesia.mlflow import wheel

    egg = tmp_path / "mlflow_amnesia.egg-info"
    egg.mkdir()
    (egg / "PKG-INFO").write_text("Metadata-Version: 2.1\nName: mlflow-amnesia\nVersion: 0.0.1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    wheel.package_wheel.cache_clear()
    try:
        built = wheel.package_wheel()
    finally:
        wheel.package_wheel.cache_clear()
    with zipfile.ZipFile(io.BytesIO(built.data)) as z:
        meta = z.read(next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))).decode()
    assert "Requires-Dist: torch" in meta and f"Version: {built.version}" in meta


def test_flavor_configuration_is_read_back(saved):
    mlmodel = saved / "MLmodel"
    conf = yaml.safe_load(mlmodel.read_text())
    conf["flavors"]["mlflow_amnesia"]["torch_version"] = "1.13.0"
    mlmodel.write_text(yaml.safe_dump(conf))
    with pytest.warns(UserWarning, match=r"saved with torch 1\.13\.0 and is loaded with torch"):
        flavor.load_model(str(saved))
    conf["flavors"]["mlflow_amnesia"]["format_version"] = 2
    mlmodel.write_text(yaml.safe_dump(conf))
    with pytest.raises(InputError, match="flavor format 2, which this release .format 1. cannot read: upgrade"):
        flavor.load_model(str(saved))
    with pytest.raises(InputError, match="flavor format 2"):
        mlflow.pyfunc.load_model(str(saved))
    conf["flavors"]["mlflow_amnesia"].update(format_version="one", torch_version=str(torch.__version__))
    mlmodel.write_text(yaml.safe_dump(conf))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(InputError, match="format 'one'.*damaged"):
            flavor.load_model(str(saved))


def test_the_superseded_check_never_creates_a_database(saved, tmp_path, monkeypatch):
    """A model from the registry served where no registry is: it loads, silently, and no empty
    sqlite database is left where it was served."""
    (saved / "registered_model_meta").write_text("model_name: gone\nmodel_version: '1'\n")
    db = tmp_path / "elsewhere" / "mlflow.db"
    db.parent.mkdir()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{db}")
    monkeypatch.setenv("MLFLOW_REGISTRY_URI", f"sqlite:///{db}")
    mlflow.set_tracking_uri(f"sqlite:///{db}")
    mlflow.set_registry_uri(f"sqlite:///{db}")
    with warnings.catch_warnings():
        warnings.simplefilter("error", flavor.SupersededVersionWarning)
        assert flavor.warn_if_superseded(saved, str(saved)) is None
        mlflow.pyfunc.load_model(str(saved))
    assert not db.exists()
