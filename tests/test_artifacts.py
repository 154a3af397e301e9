"""Nothing read from a model version's artifacts runs code, allocates unboundedly, or ends in a
traceback: a tampered or damaged file is refused with one line naming the version's file.

The registry is the shared ``trained`` one (digits, small CNN); each test tampers with a file of
v1 and restores it (the artifacts are shared by the module's tests).
"""

from __future__ import annotations

import io
import json
import sys
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlparse

import mlflow
import numpy as np
import pytest
import torch
from helpers import MODEL, invoke

from mlflow_amnesia.mlflow import flavor
from mlflow_amnesia.errors import IndexFormatError, InputError, ManifestFormatError, PurgedVersionError

URI = f"models:/{MODEL}/1"
ENV = "MLFLOW_AMNESIA_ALLOWED_BUILDERS"


def _version_dir(version: int = 1) -> Path:
    from mlflow_amnesia.mlflow import registry

    c = registry.client()
    mv = c.get_model_version(MODEL, str(version))
    return Path(urlparse(c.get_logged_model(mv.source.rsplit("/", 1)[-1]).artifact_location).path)


@contextmanager
def tampered(rel: str, data: bytes | None):
    """Replace ``data/<rel>`` of v1 with ``data`` (None: delete it) for the block, then restore it."""
    p = _version_dir() / "data" / rel
    saved = p.read_bytes() if p.exists() else None
    try:
        if data is None:
            p.unlink()
        else:
            p.write_bytes(data)
        yield p
    finally:
        if saved is None:
            p.unlink(missing_ok=True)
        else:
            p.write_bytes(saved)


def _original(rel: str) -> bytes:
    return (_version_dir() / "data" / rel).read_bytes()


def _one_line_refusal(r, *needles: str) -> str:
    assert r.exit_code == 1, r.output
    assert "Traceback" not in r.output, r.output
    lines = [ln for ln in r.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), r.output
    for n in needles:
        assert n in r.output, (n, r.output)
    return lines[0]


def _cli(command: str, tmp_path: Path):
    ids = tmp_path / "ids.txt"
    ids.write_text("digits:1\n")
    args = {
        "verify": ("verify", "--model", MODEL),
        "records": ("records", "--model", MODEL, "--limit", "2"),
        "audit": ("audit", "--model", MODEL, "--accuracy-only"),
        "forget": ("forget", "--model", MODEL, "--records", str(ids), "--dry-run", "--no-audit"),
    }[command]
    return invoke(*args, ok=False)


def _npy(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, a, allow_pickle=False)
    return buf.getvalue()


def _npy_claiming(shape: tuple, dtype: str, payload: bytes = b"") -> bytes:
    """A .npy file whose header claims ``shape`` of ``dtype`` but holds only ``payload``."""
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": dtype, "fortran_order": False, "shape": shape})
    return buf.getvalue() + payload


# --------------------------------------------------------------------------------------------
# defect 3: a builder named by data/arch.json is never imported or called on load


def _cnn_arch() -> dict:
    return json.loads(_original("arch.json"))


@pytest.fixture
def evil_module(tmp_path, monkeypatch):
    """A module on sys.path that creates a marker file when it is imported and when it is called."""
    marker = tmp_path / "MARKER"
    name = f"amnesia_evil_{abs(hash(str(tmp_path))) % 10**8}"
    (tmp_path / f"{name}.py").write_text(
        "from pathlib import Path\n"
        f"Path({str(marker)!r}).touch()\n"
        "def build(**kwargs):\n"
        f"    Path({str(marker)!r}).touch()\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    yield name, marker
    sys.modules.pop(name, None)


@pytest.fixture(params=["os:system", "module on sys.path"])
def hostile_arch(request, evil_module, tmp_path):
    """A data/arch.json naming a builder that would create a marker file; yields (arch bytes, marker)."""
    if request.param == "os:system":
        marker = tmp_path / "MARKER-system"
        spec = {"arch": "builder", "builder": "os:system", "kwargs": {"command": f"touch {marker}"}}
    else:
        name, marker = evil_module
        spec = {"arch": "builder", "builder": f"{name}:build", "kwargs": {}}
    return json.dumps(spec).encode(), marker, spec["builder"]


def test_load_model_and_pyfunc_never_import_a_builder_the_artifact_names(registry_copy, hostile_arch):
    arch, marker, builder = hostile_arch
    with tampered("arch.json", arch):
        with pytest.raises(InputError, match=rf"{ENV}={builder}") as e:
            flavor.load_model(URI)
        assert "data/arch.json" in str(e.value) and "mlflow_amnesia.architectures" in str(e.value)
        with pytest.raises(InputError, match=ENV):
            mlflow.pyfunc.load_model(URI)
        with pytest.raises(InputError, match=ENV):  # the pyfunc loader itself, on the downloaded files
            flavor._load_pyfunc(mlflow.artifacts.download_artifacts(URI))
    assert not marker.exists()
    assert not any(m.startswith("amnesia_evil_") for m in sys.modules)


@pytest.mark.parametrize("command", ["verify", "records", "audit", "forget"])
def test_cli_commands_never_import_a_builder_the_artifact_names(registry_copy, hostile_arch, command, tmp_path):
    arch, marker, builder = hostile_arch
    with tampered("arch.json", arch):
        r = _cli(command, tmp_path)
    _one_line_refusal(r, "data/arch.json", f"{ENV}={builder}")
    assert not marker.exists()


@pytest.fixture
def good_builder(tmp_path, monkeypatch):
    """A module on sys.path building the same small CNN as the trained version (import noted)."""
    name = f"amnesia_good_{abs(hash(str(tmp_path))) % 10**8}"
    (tmp_path / f"{name}.py").write_text(
        "from mlflow_amnesia.models import SmallCNN\n"
        "IMPORTED = True\n"
        "def build(in_channels, num_classes, image_size):\n"
        "    hw = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)\n"
        "    return SmallCNN(in_channels, num_classes, hw)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    yield f"{name}:build"
    sys.modules.pop(name, None)


def test_an_allowed_builder_loads_and_an_unallowed_one_says_how_to_allow_it(registry_copy, good_builder, monkeypatch, tmp_path):
    cnn = _cnn_arch()
    spec = {"arch": "builder", "builder": good_builder,
            "kwargs": {k: cnn[k] for k in ("in_channels", "num_classes", "image_size")}}
    want = flavor.load_model(URI)
    x = np.zeros((2, *want.info["input_shape"]), np.float32)
    with tampered("arch.json", json.dumps(spec).encode()):
        with pytest.raises(InputError, match=rf"set {ENV}={good_builder}"):
            flavor.load_model(URI)
        assert good_builder.split(":")[0] not in sys.modules
        # the explicit allow-list of load_model, then the environment variable the CLI honours too
        got = flavor.load_model(URI, builders=[good_builder])
        np.testing.assert_array_equal(got.predict_proba(x), want.predict_proba(x))
        monkeypatch.setenv(ENV, f"other.module:fn, {good_builder}")
        assert flavor.load_model(URI).arch == spec
        assert invoke("verify", "--model", MODEL).exit_code == 0
        monkeypatch.setenv(ENV, "not a builder name")
        with pytest.raises(InputError, match=rf"{ENV}.*'not a builder name'.*module:function"):
            flavor.load_model(URI)
        monkeypatch.delenv(ENV)
        # an installed entry point in the architectures group is allowed, by its name or its target
        dist = tmp_path / "good_archs-1.0.dist-info"
        dist.mkdir()
        (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: good-archs\nVersion: 1.0\n")
        (dist / "entry_points.txt").write_text(f"[mlflow_amnesia.architectures]\ngood = {good_builder}\n")
        assert flavor.load_model(URI).arch == spec
    with tampered("arch.json", json.dumps({**spec, "builder": "good"}).encode()):
        assert flavor.load_model(URI).arch["builder"] == "good"


def test_a_version_trained_with_a_typed_builder_needs_it_allowed_to_load(good_builder, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    invoke("train", "--arch", good_builder, "--epochs", "1", "--batch-size", "256", "--codec", "f32",
           "--no-audit", "--model-name", "typed")
    r = invoke("verify", "--model", "typed", ok=False)
    _one_line_refusal(r, f"{ENV}={good_builder}")
    monkeypatch.setenv(ENV, good_builder)
    assert invoke("verify", "--model", "typed").exit_code == 0


@pytest.mark.parametrize("arch", [
    {"arch": "cnn", "in_channels": 1, "num_classes": 10, "image_size": [1 << 20, 1 << 20]},
    {"arch": "cnn", "in_channels": 1, "num_classes": 10**12, "image_size": 8},
    {"arch": "resnet18", "stem": "cifar", "in_channels": 1 << 40, "num_classes": 10},
])
def test_an_architecture_the_weights_do_not_fit_is_refused_before_it_is_built(registry_copy, arch):
    with tampered("arch.json", json.dumps(arch).encode()):
        with pytest.raises(InputError, match=rf"data/weights.pt of {URI} does not fit data/arch.json .* in the architecture"):
            flavor.load_model(URI)


# --------------------------------------------------------------------------------------------
# defect 10: damaged files of a version are one-line errors naming the file


def _info_with(**changes) -> bytes:
    info = json.loads(_original("amnesia.json"))
    info.update(changes)
    return json.dumps(info).encode()


def _segment_with(**changes) -> bytes:
    info = json.loads(_original("amnesia.json"))
    info["segments"][0].update(changes)
    return json.dumps(info).encode()


def _two_segments_overlapping() -> bytes:
    info = json.loads(_original("amnesia.json"))
    s = dict(info["segments"][0])
    info["segments"].append({**s, "role": "repair", "first_step": s["last_step"], "last_step": s["last_step"] + 3})
    return json.dumps(info).encode()


# (file under data/, how to damage it, error class, text the message must hold)
DAMAGED = {
    "amnesia.json truncated": ("amnesia.json", lambda b: b[: len(b) // 2], InputError, "not valid JSON"),
    "amnesia.json a list": ("amnesia.json", lambda b: b"[1, 2]", InputError, "not a JSON object"),
    "amnesia.json deep nesting": ("amnesia.json", lambda b: b"[" * 100_000, InputError, "not valid JSON"),
    "format_version a string": ("amnesia.json", lambda b: _info_with(format_version="2x"), InputError, "format_version"),
    "segment step a string": ("amnesia.json", lambda b: _segment_with(first_step="0"), InputError, "first_step"),
    "segment ends before it starts": ("amnesia.json", lambda b: _segment_with(last_step=-5), InputError, "last_step"),
    "segments overlap": ("amnesia.json", lambda b: _two_segments_overlapping(), InputError, "overlap"),
    "input_shape garbage": ("amnesia.json", lambda b: _info_with(input_shape="big"), InputError, "input_shape"),
    "recipe epochs absurd": ("amnesia.json", lambda b: _info_with(recipe={"epochs": 10**15}), InputError, "epochs"),
    "history not a list": ("amnesia.json", lambda b: _info_with(history={"a": 1}), InputError, "history"),
    "dataset spec not text": ("amnesia.json", lambda b: _info_with(dataset={"spec": 3}), InputError, "dataset"),
    "weights.pt truncated": ("weights.pt", lambda b: b[: len(b) // 2], InputError, "data/weights.pt"),
    "weights.pt garbage": ("weights.pt", lambda b: b"garbage" * 10, InputError, "data/weights.pt"),
    "weights.pt of another shape": ("weights.pt", lambda b: _torch({"x": torch.zeros(3)}), InputError, "does not fit"),
    "rolled_back.npy garbage": ("rolled_back.npy", lambda b: b"garbage", InputError, "data/rolled_back.npy"),
    "rolled_back.npy truncated": ("rolled_back.npy", lambda b: _npy(np.arange(5, dtype=np.int64))[:-3], InputError, "truncated"),
    "rolled_back.npy floats": ("rolled_back.npy", lambda b: _npy(np.array([1.5])), InputError, "int64"),
    "rolled_back.npy 2-D": ("rolled_back.npy", lambda b: _npy(np.zeros((2, 2), np.int64)), InputError, "1-D"),
    "rolled_back.npy unknown step": ("rolled_back.npy", lambda b: _npy(np.array([10**9], np.int64)), InputError, "not steps of"),
    "rolled_back.npy repeats": ("rolled_back.npy", lambda b: _npy(np.array([3, 3], np.int64)), InputError, "increasing"),
    "rolled_back.npy huge claim": ("rolled_back.npy", lambda b: _npy_claiming((10**12,), "<i8"), InputError, "truncated"),
    "rolled_back.npy pickled objects": ("rolled_back.npy", lambda b: _npy_claiming((1,), "|O", b"\x80\x04N."), InputError, "int64"),
    "forgotten.npy garbage": ("forgotten.npy", lambda b: b"\x93NUMPY garbage", InputError, "data/forgotten.npy"),
    "forgotten.npy rows of 8": ("forgotten.npy", lambda b: _npy(np.zeros((3, 8), np.uint8)), InputError, "(n, 16)"),
    "forgotten.npy int64": ("forgotten.npy", lambda b: _npy(np.zeros((3, 16), np.int64)), InputError, "uint8"),
    "forgotten.npy huge claim": ("forgotten.npy", lambda b: _npy_claiming((10**11, 16), "|u1"), InputError, "truncated"),
    "record index garbage": ("segments/0/record_index.bin", lambda b: b"garbage", IndexFormatError, "data/segments/0/record_index.bin"),
    "record index truncated": ("segments/0/record_index.bin", lambda b: b[:100], IndexFormatError, "data/segments/0/record_index.bin"),
    "record index missing": ("segments/0/record_index.bin", None, InputError, "data/segments/0/record_index.bin"),
    "manifest missing": ("segments/0/manifest.json", None, InputError, "data/segments/0/manifest.json"),
    "weights missing": ("weights.pt", None, InputError, "data/weights.pt"),
    "arch.json garbage": ("arch.json", lambda b: b"{", InputError, "data/arch.json"),
}


def _torch(obj) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def _damage(rel, how) -> bytes | None:
    return None if how is None else how(_original(rel))


@pytest.mark.parametrize("case", list(DAMAGED))
def test_a_damaged_file_is_refused_by_load_model_naming_it(registry_copy, case):
    rel, how, err, needle = DAMAGED[case]
    with tampered(rel, _damage(rel, how)):
        with pytest.raises(err) as e:
            flavor.load_model(URI)
    msg = str(e.value)
    assert needle in msg and f"data/{rel}" in msg and URI in msg, msg
    assert "\n" not in msg


CLI_CASES = ["amnesia.json truncated", "weights.pt truncated", "rolled_back.npy garbage", "forgotten.npy garbage",
             "record index garbage", "segments overlap"]


@pytest.mark.parametrize("command", ["verify", "records", "forget"])
@pytest.mark.parametrize("case", CLI_CASES)
def test_a_damaged_file_is_one_line_from_the_cli(registry_copy, case, command, tmp_path):
    rel, how, _, needle = DAMAGED[case]
    with tampered(rel, _damage(rel, how)):
        r = _cli(command, tmp_path)
    _one_line_refusal(r, f"data/{rel}", needle)


@pytest.mark.parametrize("command", ["verify", "forget"])
def test_a_garbled_manifest_copy_is_one_line_naming_it(registry_copy, command, tmp_path):
    with tampered("segments/0/manifest.json", b"{not json"):
        r = _cli(command, tmp_path)
        if command == "verify":  # a report: each segment's finding, then the error line
            assert r.exit_code == 1 and "Traceback" not in r.output and "data/segments/0/manifest.json" in r.output, r.output
        else:
            _one_line_refusal(r, "data/segments/0/manifest.json")
        assert flavor.load_model(URI).segments[0].manifest == b"{not json"  # loading reads no manifest
        with pytest.raises(ManifestFormatError, match=r"data/segments/0/manifest.json"):
            flavor.load_model(URI).segments[0].open_store()


@pytest.mark.parametrize("tomb", [b"[1, 2]", b"{", b'{"model_name": "x\\ny", "version": [1]}', b"[" * 100_000])
def test_a_garbled_tombstone_still_refuses_loading_in_one_line(registry_copy, tomb, tmp_path):
    with tampered("purged.json", tomb):
        with pytest.raises(PurgedVersionError) as e:
            flavor.load_model(URI)
        assert "\n" not in str(e.value)
        r = _cli("verify", tmp_path)  # a tombstone without the purged tag: a purge to finish, and the command
        assert r.exit_code == 1 and "Traceback" not in r.output and "mlflow-amnesia purge --model" in r.output, r.output


def test_an_index_listing_other_steps_than_its_segment_is_refused(registry_copy):
    with tampered("amnesia.json", _segment_with(last_step=_segment_last() + 5)):
        with pytest.raises(IndexFormatError, match=r"data/segments/0/record_index.bin.*steps"):
            flavor.load_model(URI)


def _segment_last() -> int:
    return int(json.loads(_original("amnesia.json"))["segments"][0]["last_step"])


def test_purge_reads_a_version_through_the_same_checks(registry_copy):
    from mlflow_amnesia.jobs.purge import _Registry

    with tampered("rolled_back.npy", b"garbage"):
        with pytest.raises(InputError, match=rf"data/rolled_back.npy of {MODEL} v1"):
            _Registry(MODEL).meta(1)
    with tampered("amnesia.json", _two_segments_overlapping()):
        with pytest.raises(InputError, match=rf"data/amnesia.json of {MODEL} v1.*overlap"):
            _Registry(MODEL).meta(1)
    with tampered("forgotten.npy", _npy(np.zeros((2, 8), np.uint8))):
        with pytest.raises(InputError, match=rf"data/forgotten.npy of {MODEL} v1.*\(n, 16\)"):
            _Registry(MODEL).meta(1).forgotten()
    m = _Registry(MODEL).meta(1)  # intact: the same values load_model reads
    am = flavor.load_model(URI)
    np.testing.assert_array_equal(m.rolled_back, am.rolled_back)
    np.testing.assert_array_equal(m.forgotten(), am.forgotten)
    assert [s["store_url"] for s in m.segments] == [s.store_url for s in am.segments]
