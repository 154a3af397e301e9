"""Types for a recorded phase and for version metadata (issue 14): Phase, Segment.base_url,
VersionInfo, and the version's file layout written once."""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

import mlflow_amnesia
from mlflow_amnesia.errors import InputError

PACKAGE = Path(mlflow_amnesia.__file__).parent


def _path_constants(names: tuple[str, ...], allowed: set[str]) -> list[str]:
    """Non-docstring string constants of the package (f-string pieces too) that spell a path ending
    in one of ``names``, outside the modules in ``allowed`` (paths relative to the package)."""
    pattern = re.compile(r"^[\w/{}.:-]*(" + "|".join(re.escape(n) for n in names) + r")$")
    found = []
    for f in sorted(PACKAGE.rglob("*.py")):
        rel = f.relative_to(PACKAGE).as_posix()
        if rel in allowed:
            continue
        tree = ast.parse(f.read_text(), str(f))
        docs = {id(n.body[0].value) for n in ast.walk(tree)
                if isinstance(n, (ast.Module, ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef)) and n.body
                and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant)}
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docs \
                    and pattern.match(node.value):
                found.append(f"{rel}:{node.lineno}: {node.value!r}")
    return found


def test_a_phase_knows_its_urls_and_nobody_else_spells_them():
    from mlflow_amnesia.recording.phase import Phase

    p = Phase("s3://b/run/amnesia/")
    assert p.base_url == "s3://b/run/amnesia" and p.deltas_url == "s3://b/run/amnesia/deltas"
    assert p.file_url("batch_order.npy") == "s3://b/run/amnesia/training/batch_order.npy"
    assert Phase.of_store_url("/x/deltas") == Phase("/x") and Phase.of_store_url("/x/mystore") is None
    assert Phase.of_training_url("/x/training") == Phase("/x")
    with pytest.raises(InputError, match="not a training file"):
        p.file_url("weights.pt")
    found = _path_constants(("/deltas", "/training", "training/", "initial_state.pt", "batch_order.npy",
                             "optimizer_state.pt"), {"recording/phase.py"})
    assert not found, "a phase's URLs spelled out outside mlflow_amnesia.phase:\n" + "\n".join(found)


def test_the_layout_of_a_versions_files_is_written_once():
    found = _path_constants(("amnesia.json", "rolled_back.npy", "forgotten.npy", "weights.pt", "arch.json",
                             "record_index.bin", "purged.json"), {"version/files.py"})
    assert not found, "a version's file paths spelled out outside mlflow_amnesia.version.files:\n" + "\n".join(found)


def test_a_segment_records_its_base_and_an_old_one_derives_it_once_when_read():
    from mlflow_amnesia.recording.phase import Phase, Segment

    new = Segment("train", "/r/amnesia/deltas", 0, 9, base_url="/r/amnesia")
    assert new.to_json()["base_url"] == "/r/amnesia" and new.phase == Phase("/r/amnesia")
    old = Segment.from_json({"role": "train", "store_url": "/r/amnesia/deltas", "first_step": 0, "last_step": 9})
    assert old.base_url == "/r/amnesia" and old.phase.training_url == "/r/amnesia/training"
    by_hand = Segment.from_json({"role": "train", "store_url": "memory://mine", "first_step": 0, "last_step": 9})
    assert by_hand.phase is None and "base_url" not in by_hand.to_json()


def _info_json(**extra) -> bytes:
    return json.dumps({"format_version": 1, "input_shape": [1, 8, 8], "num_classes": 10, "codec": "f32",
                       "recipe": {"epochs": 1, "batch_size": 8, "lr": 0.1, "momentum": 0.0, "weight_decay": 0.0,
                                  "seed": 0},
                       "segments": [{"role": "train", "store_url": "/r/a/deltas", "first_step": 0, "last_step": 3}],
                       "history": [{"method": "train"}], **extra}).encode()


def test_version_info_is_typed_keeps_unknown_keys_and_checks_like_before():
    from mlflow_amnesia.version.info import VersionInfo

    info = VersionInfo.parse(_info_json(a_later_field={"kept": True}), "data/amnesia.json of m v1")
    assert info.codec == "f32" and info.num_classes == 10 and info.recipe["batch_size"] == 8
    assert info.segments[0].base_url == "/r/a" and info.last_request == {"method": "train"}
    assert info.to_json()["a_later_field"] == {"kept": True}  # unknown keys survive a round trip
    assert info["codec"] == "f32" and info.get("key_id") is None  # read access by key, as the dict was read
    with pytest.raises(InputError, match=r"data/amnesia.json of m v1 has format version 2; .*Upgrade"):
        VersionInfo.parse(_info_json(format_version=2), "data/amnesia.json of m v1")
    with pytest.raises(InputError, match="recipe.batch_size is 0, not an integer in 1"):
        VersionInfo.parse(_info_json(recipe={"batch_size": 0}), "data/amnesia.json of m v1")


def test_a_saved_version_loads_with_typed_info_and_its_segments_bases(tmp_path):
    from mlflow_amnesia.mlflow.flavor import AmnesiaModel, load_model, save_model
    from mlflow_amnesia.recording.index import RecordIndexBuilder
    from mlflow_amnesia.learning.models import build_model
    from mlflow_amnesia.recording.phase import Segment
    from mlflow_amnesia.recording.store import DeltaStore
    from mlflow_amnesia.version.info import VersionInfo

    key = bytes(range(32))
    arch = {"arch": "cnn", "in_channels": 1, "num_classes": 3, "image_size": 8}
    module = build_model(arch, seed=0)
    url = str(tmp_path / "phase" / "deltas")
    st = DeltaStore.create(url, layout=[{"name": "w", "shape": [2]}], codec="f32", key=key)
    st.append(0, {"w": np.zeros(2, np.float32)})
    st.close()
    b = RecordIndexBuilder(key)
    b.add(0, ["x"])
    seg = Segment("train", url, 0, 0, manifest=st.manifest_bytes(), index=b.build().to_bytes())
    am = AmnesiaModel(module=module, arch=arch, segments=[seg],
                      info={"input_shape": [1, 8, 8], "num_classes": 3, "codec": "f32", "later": 1})
    assert isinstance(am.info, VersionInfo) and am.info.extra == {"later": 1}
    save_model(am, tmp_path / "saved")
    saved = json.loads((tmp_path / "saved" / "data" / "amnesia.json").read_text())
    assert saved["segments"][0]["base_url"] == str(tmp_path / "phase") and saved["later"] == 1
    back = load_model(str(tmp_path / "saved"))
    assert isinstance(back.info, VersionInfo) and back.info.codec == "f32" and back.info.extra == {"later": 1}
    assert back.segments[0].phase.base_url == str(tmp_path / "phase")
    assert torch.equal(back.module.state_dict()["classifier.3.bias"], module.state_dict()["classifier.3.bias"])
