"""One atomic writer with full durability for every file the package writes and trusts (issue 14).

A whole-file write on local disk must fsync the file before it is renamed into place and fsync
the directory after, or a power cut can leave the old name pointing at nothing (a rename is
durable only once its directory is). The writers of a store manifest, a record index, a phase's
training files and a shadow-model set are checked here by watching ``os.fsync``.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

KEY = bytes(range(32))


@pytest.fixture
def durability(monkeypatch):
    """Records, per file renamed into place, whether it was fsync'ed before and its directory after."""
    events: list[tuple[str, str]] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append(("fsync", os.path.realpath(os.readlink(f"/proc/self/fd/{fd}"))))
        return real_fsync(fd)

    def replace(src, dst, *a, **k):
        events.append(("replace", os.path.realpath(os.fspath(src)) + " -> " + os.path.realpath(os.fspath(dst))))
        return real_replace(src, dst, *a, **k)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)

    def check(target) -> None:
        target = os.path.realpath(os.fspath(target))
        moves = [i for i, (kind, what) in enumerate(events) if kind == "replace" and what.endswith(" -> " + target)]
        assert moves, f"{target} was not written through a temp file and a rename: {events}"
        i = moves[-1]
        src = events[i][1].split(" -> ")[0]
        assert ("fsync", src) in events[:i], f"{target}: the temp file was not fsync'ed before the rename"
        assert ("fsync", os.path.dirname(target)) in events[i + 1:], f"{target}: the directory was not fsync'ed after the rename"

    return check


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc to name fsync'ed files")
def test_a_store_manifest_is_written_durably(tmp_path, durability):
    from mlflow_amnesia.recording.store import DeltaStore

    st = DeltaStore.create(str(tmp_path / "s"), layout=[{"name": "w", "shape": [4]}], codec="f32", key=KEY)
    st.append(0, {"w": np.ones(4, np.float32)})
    st.close()
    durability(tmp_path / "s" / "manifest.json")


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc to name fsync'ed files")
def test_a_record_index_and_the_training_files_are_written_durably(tmp_path, durability):
    from mlflow_amnesia.recording.index import RecordIndexBuilder
    from mlflow_amnesia.mlflow.runs import save_array, save_state

    b = RecordIndexBuilder(KEY)
    b.add(0, ["a", "b"])
    b.build().save(str(tmp_path / "index.bin"))
    durability(tmp_path / "index.bin")
    save_state(str(tmp_path / "training" / "initial_state.pt"), {"w": torch.zeros(2)}, key=KEY)
    durability(tmp_path / "training" / "initial_state.pt")
    save_array(str(tmp_path / "training" / "batch_order.npy"), np.arange(4).reshape(1, 4), key=KEY)
    durability(tmp_path / "training" / "batch_order.npy")


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc to name fsync'ed files")
def test_a_shadow_set_is_written_durably(tmp_path, durability):
    from mlflow_amnesia.audit.shadow import ShadowSet

    s = ShadowSet(fingerprint="f", arch_spec={"arch": "cnn", "in_channels": 1, "num_classes": 2, "image_size": 8}, recipe={}, seed=0, pool=np.arange(3),
                  membership=np.zeros((2, 3), bool), phi=np.zeros((2, 3), np.float32),
                  states=[{"w": torch.zeros(1)}, {"w": torch.ones(1)}])
    s.save(tmp_path / "shadows")
    for name in ("pool.npy", "membership.npy", "phi.npy", "shadow-000.pt", "shadow-001.pt", "shadows.json"):
        durability(tmp_path / "shadows" / name)
    assert not [p for p in (tmp_path / "shadows").iterdir() if ".tmp" in p.name]


def test_url_to_fs_and_the_writer_have_one_home():
    """Every module resolves URLs and writes whole files through mlflow_amnesia.fs."""
    import ast
    from pathlib import Path

    import mlflow_amnesia

    root = Path(mlflow_amnesia.__file__).parent
    found = []
    for f in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(f.read_text(), str(f))):
            if isinstance(node, ast.FunctionDef) and node.name == "url_to_fs" and f.name != "fs.py":
                found.append(f"{f.relative_to(root)}: defines url_to_fs")
            if isinstance(node, ast.ImportFrom) and any(a.name == "url_to_fs" for a in node.names) \
                    and (node.module or "").split(".")[-1] != "fs":
                found.append(f"{f.relative_to(root)}:{node.lineno}: imports url_to_fs from {node.module}")
            if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "fsync" and f.name not in ("fs.py", "keys.py", "tracking.py"):
                found.append(f"{f.relative_to(root)}:{node.lineno}: an fsync of its own")
    assert not found, "\n".join(found)
