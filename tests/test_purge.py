"""GDPR purge: `mlflow-amnesia purge` and `forget --purge`.

A purge deletes files for good, and the registry copies of conftest's `registry_copy` share
their artifact files, so one module fixture (`story`) plays the whole scenario once, in a fixed
order, on this module's own tiny training run (conftest's `trained`), and records what it saw:

1. refusals that must delete nothing (a finetune child still needs the steps, an alias, an
   unpurged ancestor), each on its own copy of the registry;
2. train -> amnesiac forget (v2) -> dry run -> a purge of v1 killed halfway -> the re-run that
   finishes it -> a re-run that finds nothing to do;
3. a further `forget --purge` from v2 (v3; v2 purged).

The tests assert on those observations and inspect what is left on disk and in the registry.
They share one training run plus five forgets (~30 s of CPU), hence `slow`.
"""

from __future__ import annotations

import contextlib
import io
import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from helpers import KEY, MODEL, invoke

N_IMAGES = 64


@contextlib.contextmanager
def _registry(db: Path, cwd: Path):
    """Point MLflow (and the CLI) at the sqlite registry ``db``; artifacts stay where they are."""
    import mlflow

    old = mlflow.get_tracking_uri(), mlflow.get_registry_uri()
    mp = pytest.MonkeyPatch()
    mp.setenv("MLFLOW_AMNESIA_QUIET", "1")
    mp.setenv("MLFLOW_AMNESIA_KEY", KEY)
    mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{db}")
    mp.setenv("MLFLOW_REGISTRY_URI", f"sqlite:///{db}")
    mp.chdir(cwd)
    mlflow.set_tracking_uri(f"sqlite:///{db}")
    mlflow.set_registry_uri(f"sqlite:///{db}")
    try:
        yield
    finally:
        mp.undo()
        mlflow.set_tracking_uri(old[0])
        mlflow.set_registry_uri(old[1])


def _snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """Every artifact file under ``root`` (size, mtime): equal snapshots = nothing written or deleted."""
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(root.rglob("*"))
            if p.is_file() and ".db" not in p.name and p.name != "ids.txt"}


def _ids(n: int, version: int | None = None) -> list[str]:
    args = ["records", "--model", MODEL, "--limit", str(n)] + (["--version", str(version)] if version else [])
    return invoke(*args).output.split()


def _write(d: Path, ids: list[str], name: str = "ids.txt") -> str:
    p = d / name
    p.write_text("\n".join(ids) + "\n")
    return str(p)


def _forget(ids_file: str, *extra: str):
    return invoke("forget", "--model", MODEL, "--records", ids_file, "--yes", "--no-audit", *extra)


def _purge(*args: str):
    return invoke("purge", "--model", MODEL, *args, ok=False)


def _tags(version: int) -> dict:
    from mlflow_amnesia.mlflow import registry

    return dict(registry.client().get_model_version(MODEL, str(version)).tags)


@pytest.fixture(scope="module")
def story(trained, tmp_path_factory):
    import mlflow

    from mlflow_amnesia.jobs import purge as purge_mod
    from mlflow_amnesia.mlflow import registry
    from mlflow_amnesia.learning.data import load_dataset
    from mlflow_amnesia.mlflow.flavor import PurgedVersionError, load_model
    from mlflow_amnesia.jobs.lineage import lineage_rows, render_text
    from mlflow_amnesia.mlflow.runs import load_state
    from mlflow_amnesia.recording.store import DeltaStore

    base = tmp_path_factory.mktemp("purge")
    o = SimpleNamespace()
    images = load_dataset("digits").x[:N_IMAGES].numpy()

    # 1a. A finetune child keeps the steps that saw the records: purging v1 is refused.
    db = base / "finetune.db"
    shutil.copy(trained / "mlflow.db", db)
    with _registry(db, base):
        _forget(_write(base, _ids(3), "finetune.txt"), "--method", "finetune")
        before = _snapshot(trained)
        o.finetune_refusal = _purge("--version", "1", "--yes")
        mlflow.MlflowClient().set_registered_model_alias(MODEL, "production", "1")
        o.alias_refusal = _purge("--version", "1", "--yes")
        o.finetune_unchanged = before == _snapshot(trained)
        o.finetune_v1_tags = _tags(1)

    # 2. The main story: v2 forgets three records by rolling back the steps that saw them.
    main = base / "main.db"
    shutil.copy(trained / "mlflow.db", main)
    with _registry(main, base):
        o.ids_a = _ids(3)
        _forget(_write(base, o.ids_a, "a.txt"))

        # 1b. An unpurged ancestor still holds the records: purging v2 alone is refused.
        chain = base / "chain.db"
        shutil.copy(main, chain)
        with _registry(chain, base):
            _forget(_write(base, _ids(3), "chain.txt"))
            before = _snapshot(trained)
            o.ancestor_refusal = _purge("--version", "2", "--yes")
            o.both_dry_run = _purge("--version", "1", "--version", "2", "--dry-run")
            o.chain_unchanged = before == _snapshot(trained)

        v1, v2 = load_model(f"models:/{MODEL}/1"), load_model(f"models:/{MODEL}/2")
        o.v1_state = {k: t.clone() for k, t in v1.module.state_dict().items()}
        o.v2_state = {k: t.clone() for k, t in v2.module.state_dict().items()}
        o.params = [k for k, _ in v1.module.named_parameters()]  # BatchNorm running stats roll back decayed
        o.v2_pred_before = v2.predict_proba(images)
        o.v2_pyfunc_before = np.asarray(mlflow.pyfunc.load_model(f"models:/{MODEL}/2").predict(images, params={"input": "normalized"}))
        o.store_url = v1.segments[0].store_url
        o.rolled = sorted(int(s) for s in v2.rolled_back)
        store = DeltaStore.open(o.store_url, key=bytes.fromhex(KEY))
        o.chunk_files = [Path(o.store_url, f) for s in o.rolled for f in store.chunk_files(s)]
        o.chunks_existed = all(p.is_file() for p in o.chunk_files)
        o.v1_run = registry.client().get_model_version(MODEL, "1").run_id
        o.v1_location = Path(registry.client().get_model_version_download_uri(MODEL, "1"))
        o.optimizer_state = Path(o.store_url).parent / "training" / "optimizer_state.pt"
        o.optimizer_state_existed = o.optimizer_state.is_file()
        png = base / "inversion.png"  # what `train --audit` logs: an inversion of v1's weights
        png.write_bytes(b"\x89PNG\r\n\x1a\n" + o.v1_state[next(iter(o.v1_state))].numpy().tobytes())
        mlflow.MlflowClient().log_artifact(o.v1_run, str(png), "audit")

        before = _snapshot(trained)
        o.dry_run = _purge("--version", "1", "--dry-run")
        o.dry_run_unchanged = before == _snapshot(trained)

        # A purge killed after the chunks, before the model artifacts.
        real_delete = purge_mod._delete

        def crash(*a, **k):
            raise RuntimeError("simulated crash")

        purge_mod._delete = crash
        try:
            with pytest.raises(RuntimeError, match="simulated crash"):
                purge_mod.purge(MODEL, [1], yes=True)
        finally:
            purge_mod._delete = real_delete
        o.crash_chunks_gone = not any(p.exists() for p in o.chunk_files)
        o.crash_weights_left = (o.v1_location / "data" / "weights.pt").is_file()
        o.crash_tags = _tags(1)
        with pytest.raises(PurgedVersionError) as e:
            load_model(f"models:/{MODEL}/1")
        o.crash_load_error = str(e.value)
        o.crash_lineage = render_text(MODEL, lineage_rows(MODEL))

        o.rerun = _purge("--version", "1", "--yes")
        o.noop = _purge("--version", "1", "--yes")
        o.verify_v2 = invoke("verify", "--model", MODEL, "--version", "2", ok=False)

        v2 = load_model(f"models:/{MODEL}/2")
        o.v2_pred_after = v2.predict_proba(images)
        o.v2_pyfunc_after = np.asarray(mlflow.pyfunc.load_model(f"models:/{MODEL}/2").predict(images, params={"input": "normalized"}))
        initial = load_state(str(Path(o.store_url).parent / "training" / "initial_state.pt"), key=bytes.fromhex(KEY))
        left = DeltaStore.open(o.store_url, key=bytes.fromhex(KEY))
        sums = left.sum(left.steps)
        o.rebuilt = {k: initial[k].double().numpy() + sums[k].reshape(initial[k].shape) for k in sums}
        o.v1_purged_tags = _tags(1)

        # 3. Forget again from the child and purge the version it supersedes in the same command.
        o.ids_b = [i for i in _ids(6) if i not in o.ids_a][:3]
        o.steps_b = sorted(int(t) for t in v2.segments[0].open_index(bytes.fromhex(KEY)).steps_for(o.ids_b))
        o.chunks_b = [Path(o.store_url, f) for t in o.steps_b if t not in o.rolled for f in left.chunk_files(t)]
        o.forget_purge = invoke("forget", "--model", MODEL, "--records", _write(base, o.ids_b, "b.txt"), "--yes",
                                "--no-audit", "--purge")
        v3 = load_model(f"models:/{MODEL}/3")
        o.v3_rolled = sorted(int(s) for s in v3.rolled_back)
        o.chunks_b_gone = bool(o.chunks_b) and not any(p.exists() for p in o.chunks_b)
        o.v3_pred = v3.predict_proba(images)
        o.v2_tags = _tags(2)
    o.main_db, o.base = main, base
    return o


@pytest.fixture
def main_registry(story):
    """This module's main registry (after the whole story), for read-only checks."""
    with _registry(story.main_db, story.base):
        yield story


# ---------------------------------------------------------------------------------------------
# what a purge erases


@pytest.mark.slow
def test_purged_weights_cannot_be_downloaded_or_loaded(main_registry):
    import mlflow

    from mlflow_amnesia.mlflow import registry
    from mlflow_amnesia.mlflow.flavor import PurgedVersionError, load_model

    uri = registry.client().get_model_version_download_uri(MODEL, "1")
    with pytest.raises(Exception):
        mlflow.artifacts.download_artifacts(artifact_uri=f"{uri}/data/weights.pt")
    with pytest.raises(PurgedVersionError, match=r"v1 was purged .*load v2"):
        load_model(f"models:/{MODEL}/1")
    with pytest.raises(PurgedVersionError):
        mlflow.pyfunc.load_model(f"models:/{MODEL}/1")
    assert not main_registry.optimizer_state.exists() and main_registry.optimizer_state_existed
    run_files = [f.path for f in mlflow.MlflowClient().list_artifacts(main_registry.v1_run, "audit")]
    assert run_files == [], "the inversion grid of the purged weights must go"


@pytest.mark.slow
def test_rolled_back_chunks_are_gone_and_the_store_refuses_them(main_registry):
    from mlflow_amnesia.recording.store import DeltaStore, PurgedStepsError

    s = main_registry
    assert s.rolled and s.chunks_existed
    assert not any(p.exists() for p in s.chunk_files)
    store = DeltaStore.open(s.store_url, key=bytes.fromhex(KEY))
    assert set(s.rolled) <= set(store.purged_steps)
    with pytest.raises(PurgedStepsError) as e:
        store.read(s.rolled[0])
    assert e.value.steps == [s.rolled[0]]
    with pytest.raises(PurgedStepsError):
        store.sum(s.rolled)
    assert store.verify() == []  # no chunk file of a purged step left behind
    kept = [t for t in store.steps if t not in s.rolled]
    store.read(kept[0])  # the steps no purge touched stay readable


@pytest.mark.slow
def test_what_is_left_cannot_rebuild_the_purged_weights(main_registry):
    """initial weights + every delta left = the child (v2), no longer the purged v1 (f32 codec:
    before the purge they summed to v1 within float32 rounding)."""
    s = main_registry
    far_from_v1 = max(float(np.abs(s.rebuilt[k] - s.v1_state[k].double().numpy()).max()) for k in s.params)
    near_v2 = max(float(np.abs(s.rebuilt[k] - s.v2_state[k].double().numpy()).max()) for k in s.params)
    assert near_v2 < 1e-5 < far_from_v1


def _tensors_in(path: Path) -> list[np.ndarray]:
    """Every tensor/array a file holds, as torch.load or np.load (no pickle) read it."""
    raw = path.read_bytes()
    for load in (lambda: torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True),
                 lambda: np.load(io.BytesIO(raw), allow_pickle=False)):
        try:
            obj = load()
        except Exception:  # noqa: BLE001 - not this format
            continue
        out: list[np.ndarray] = []

        def walk(x):
            if isinstance(x, torch.Tensor):
                out.append(x.detach().cpu().numpy())
            elif isinstance(x, np.ndarray):
                out.append(x)
            elif isinstance(x, dict):
                for v in x.values():
                    walk(v)
            elif isinstance(x, (list, tuple)):
                for v in x:
                    walk(v)

        walk(obj)
        return out
    return []


def _holds_weights(root: Path, state: dict) -> list[str]:
    """Files under ``root`` holding any tensor of ``state`` (parsed, or as raw float32 bytes)."""
    ref = {k: v.numpy() for k, v in state.items() if v.dtype.is_floating_point and v.numel() >= 16}
    hits = []
    for p in sorted(root.rglob("*")):
        if not p.is_file():
            continue
        raw = p.read_bytes()
        if any(a.tobytes() in raw for a in ref.values()):
            hits.append(f"{p} (raw bytes)")
            continue
        for t in _tensors_in(p):
            if any(t.shape == a.shape and np.array_equal(t, a) for a in ref.values()):
                hits.append(f"{p} (tensor)")
                break
    return hits


@pytest.mark.slow
def test_no_downloadable_artifact_of_the_purged_version_holds_its_weights(main_registry, tmp_path):
    import mlflow

    s = main_registry
    model_dir = Path(mlflow.artifacts.download_artifacts(f"models:/{MODEL}/1", dst_path=str(tmp_path / "model")))
    run_dir = Path(mlflow.artifacts.download_artifacts(run_id=s.v1_run, dst_path=str(tmp_path / "run")))
    assert (model_dir / "data" / "amnesia.json").is_file() and (run_dir / "amnesia" / "deltas" / "manifest.json").is_file()
    assert _holds_weights(tmp_path, s.v1_state) == []
    # The scan finds the weights where they are: a copy of the purged state dict.
    torch.save(s.v1_state, tmp_path / "control.pt")
    assert _holds_weights(tmp_path, s.v1_state) == [f"{tmp_path / 'control.pt'} (raw bytes)"]


# ---------------------------------------------------------------------------------------------
# what it keeps and who is unaffected


@pytest.mark.slow
def test_verify_of_the_child_passes_without_the_purged_chunks(story):
    """The child rolled those steps back and never reads them again: not a damaged store."""
    assert story.verify_v2.exit_code == 0, story.verify_v2.output
    assert "rolled-back step(s) without chunks" in story.verify_v2.output


@pytest.mark.slow
def test_child_loads_and_predicts_exactly_as_before(story):
    np.testing.assert_array_equal(story.v2_pred_after, story.v2_pred_before)
    np.testing.assert_array_equal(story.v2_pyfunc_after, story.v2_pyfunc_before)


@pytest.mark.slow
def test_forget_from_the_child_still_works_and_purges_with_it(story):
    assert "v3 (parent v2" in story.forget_purge.output and "purged digits-cnn v2" in story.forget_purge.output
    assert set(story.v3_rolled) == set(story.rolled) | set(story.steps_b)  # purged steps are never read again
    assert story.chunks_b_gone
    assert story.v2_tags["amnesia.purged"] and story.v2_tags["amnesia.superseded_by"] == "3"
    assert not np.array_equal(story.v3_pred, story.v2_pred_after)


@pytest.mark.slow
def test_tags_tombstone_and_lineage_keep_the_version(main_registry):
    from mlflow_amnesia.mlflow import registry
    from mlflow_amnesia.jobs.lineage import lineage_rows, render_text

    t = main_registry.v1_purged_tags
    assert t["amnesia.superseded_by"] == "2" and t["amnesia.method"] == "train"
    assert t["amnesia.purge_started"] <= t["amnesia.purged"].split(";")[0]
    assert "data/weights.pt" in t["amnesia.purged"] and f"{len(main_registry.rolled)} step(s)" in t["amnesia.purged"]
    mv = registry.client().get_model_version(MODEL, "1")
    assert mv.description.startswith("**Purged**") and "trained by mlflow-amnesia" in mv.description
    tomb = json.loads((main_registry.v1_location / "data" / "purged.json").read_text())
    assert tomb["completed_at"] and tomb["superseded_by"] == 2 and "data/weights.pt" in tomb["deleted_files"]
    for kept in ("MLmodel", "data/amnesia.json", "data/segments/0/record_index.bin", "data/forgotten.npy"):
        assert (main_registry.v1_location / kept).is_file(), kept
    rows = {r["version"]: r for r in lineage_rows(MODEL)}
    assert sorted(rows) == [1, 2, 3] and rows[1]["purged"] and rows[2]["purged"] and not rows[3]["purged"]
    text = render_text(MODEL, list(rows.values()))
    assert "v1 [purged " in text and "v3: amnesiac" in text


# ---------------------------------------------------------------------------------------------
# refusals delete nothing


@pytest.mark.slow
def test_purging_the_latest_version_is_refused(main_registry):
    r = _purge("--version", "3", "--yes")
    assert r.exit_code == 1 and "v3 is not superseded" in r.output and "--purge" in r.output
    assert _tags(3).get("amnesia.purge_started") is None


@pytest.mark.slow
def test_refused_while_a_finetune_child_needs_the_steps(story):
    r = story.finetune_refusal
    assert r.exit_code == 1
    assert "v2 needs" in r.output and "has not rolled these steps back" in r.output and "nothing was deleted" in r.output
    assert story.finetune_unchanged
    assert not {"amnesia.purged", "amnesia.purge_started"} & set(story.finetune_v1_tags)


@pytest.mark.slow
def test_refused_while_an_alias_points_at_the_version(story):
    assert story.alias_refusal.exit_code == 1 and "alias(es) production" in story.alias_refusal.output


@pytest.mark.slow
def test_refused_while_an_unpurged_ancestor_holds_the_records(story):
    r = story.ancestor_refusal
    assert r.exit_code == 1 and "v1 needs" in r.output and "superseded but not purged" in r.output
    assert f"mlflow-amnesia purge --model {MODEL} --version 1 --version 2" in r.output
    assert story.both_dry_run.exit_code == 0 and "v1: superseded by v2" in story.both_dry_run.output
    assert "v2: superseded by v3" in story.both_dry_run.output
    assert story.chain_unchanged


# ---------------------------------------------------------------------------------------------
# dry run, crash, re-run


@pytest.mark.slow
def test_dry_run_lists_deletions_with_sizes_and_deletes_nothing(story):
    out = story.dry_run.output
    assert story.dry_run.exit_code == 0 and story.dry_run_unchanged
    assert "data/weights.pt (" in out and "KB)" in out and "audit/inversion.png" in out
    assert f"the deltas of {len(story.rolled)} step(s) ({len(story.chunk_files)} chunk file(s)" in out
    assert "optimizer_state.pt" in out


@pytest.mark.slow
def test_a_killed_purge_refuses_loading_and_the_rerun_finishes_it(story):
    assert story.crash_chunks_gone and story.crash_weights_left
    assert "amnesia.purge_started" in story.crash_tags and "amnesia.purged" not in story.crash_tags
    assert "not finished" in story.crash_load_error and "--version 1" in story.crash_load_error
    assert "purge not finished" in story.crash_lineage
    assert story.rerun.exit_code == 0 and "purged digits-cnn v1" in story.rerun.output
    assert story.noop.exit_code == 0 and "already purged, nothing left to delete" in story.noop.output


def test_purge_help_says_what_is_and_is_not_erased():
    out = invoke("purge", "--help").output
    for needle in ("ERASED", "KEPT", "weights", "optimizer state", "record indexes", "shadow", "--dry-run"):
        assert needle in out, needle
    assert "--purge" in invoke("forget", "--help").output


def test_an_artifact_store_that_cannot_delete_fails_the_purge_clearly(tmp_path):
    """MLflow's base ArtifactRepository.delete_artifacts silently does nothing: a purge must
    notice the file is still there and say so, never report success."""
    from mlflow.store.artifact.local_artifact_repo import LocalArtifactRepository

    from mlflow_amnesia.jobs import purge as purge_mod
    from mlflow_amnesia.errors import StoreError

    class NoDelete(LocalArtifactRepository):
        def delete_artifacts(self, artifact_path=None):
            pass

    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "weights.pt").write_bytes(b"weights")
    with pytest.raises(StoreError, match=r"did not delete data/weights.pt: NoDelete does not support deleting"):
        purge_mod._delete(NoDelete(str(tmp_path)), [("data/weights.pt", 7)], "m v1")
    purge_mod._delete(LocalArtifactRepository(str(tmp_path)), [("data/weights.pt", 7)], "m v1")
    assert not (tmp_path / "data" / "weights.pt").exists()


def test_kept_files_are_lineage_metadata_only():
    """The allowlist of what a purge keeps: weights and input examples are never on it."""
    from mlflow_amnesia.mlflow.flavor import TOMBSTONE
    from mlflow_amnesia.jobs.purge import KEEP, _kept

    assert f"data/{TOMBSTONE}" in KEEP and _kept("data/segments/0/record_index.bin") and _kept("MLmodel")
    for gone in ("data/weights.pt", "input_example.json", "serving_input_example.json", "data/new_file.bin"):
        assert not _kept(gone), gone


def _small_store(url: str, steps: int = 3) -> None:
    from mlflow_amnesia.recording.store import DeltaStore

    with DeltaStore.create(url, layout=[{"name": "w", "shape": [4]}], codec="f32", key=None) as st:
        for t in range(steps):
            st.append(t, {"w": np.full(4, t, np.float32)})


def test_the_plan_lists_chunk_files_of_steps_a_killed_purge_already_marked(tmp_path):
    """The store's manifest says purged, chunks/ still holds the files: there is work left, and
    the plan (hence `--dry-run`, and the re-run) knows it from a listing."""
    from mlflow_amnesia.jobs.purge import PurgePlan, _plan_store
    from mlflow_amnesia.recording.store import DeltaStore

    url = str(tmp_path / "run" / "deltas")
    _small_store(url)
    with DeltaStore.open(url, mode="a") as st:
        st._rm = lambda paths: (_ for _ in ()).throw(RuntimeError("killed"))
        with pytest.raises(RuntimeError):
            st.purge([1])
    s = _plan_store(url, [1, 2])
    assert s.steps == [2] and s.already == 1 and [f for f, _ in s.leftovers] == ["chunks/1.0.zst"]
    plan = PurgePlan("m", [], [s])
    assert not plan.complete and "1 chunk file(s)" in plan.describe() and "already marked purged" in plan.describe()
    assert plan.bytes == s.bytes + s.leftovers[0][1]


def test_a_store_whose_manifest_is_gone_is_not_gone_while_its_chunks_are_there(tmp_path):
    from mlflow_amnesia.jobs.purge import PurgePlan, _plan_store

    url = str(tmp_path / "run" / "deltas")
    _small_store(url)
    (tmp_path / "run" / "deltas" / "manifest.json").unlink()
    s = _plan_store(url, [0, 2])
    assert s.missing and [f for f, _ in s.leftovers] == ["chunks/0.0.zst", "chunks/2.0.zst"]
    assert not PurgePlan("m", [], [s]).complete and "gone already" not in PurgePlan("m", [], [s]).describe()
    for f in (tmp_path / "run" / "deltas" / "chunks").iterdir():
        f.unlink()
    s = _plan_store(url, [0, 2])
    assert s.missing and s.leftovers == [] and PurgePlan("m", [], [s]).complete


def test_a_plan_is_complete_only_with_the_tag_the_tombstone_and_the_note():
    from mlflow_amnesia.jobs.purge import PurgePlan, VersionPurge

    def plan(**kw):
        done = dict(purged_at="2026-01-01T00:00:00Z", described=True, tombstone_done=True)
        return PurgePlan("m", [VersionPurge(1, 2, "amnesiac", 3, "/nowhere", **{**done, **kw})], [])

    assert plan().complete
    for missing in ({"purged_at": None}, {"described": False}, {"tombstone_done": False}):
        assert not plan(**missing).complete, missing


@pytest.mark.slow
def test_a_retrain_child_needs_no_old_chunk_and_the_records_steps_are_purged(tmp_path):
    """A retrain trains a new store without the records: nothing rolled the old steps back, yet
    no live version needs them, so purging v1 deletes the old store's steps that saw them."""
    from mlflow_amnesia.mlflow.flavor import load_model
    from mlflow_amnesia.recording.store import DeltaStore, PurgedStepsError

    with _registry(tmp_path / "mlflow.db", tmp_path):
        invoke("train", "--arch", "cnn", "--epochs", "1", "--batch-size", "64", "--codec", "f32", "--no-audit")
        ids = _ids(2)
        v1 = load_model(f"models:/{MODEL}/1")
        old = v1.segments[0].store_url
        saw = sorted(int(s) for s in v1.segments[0].open_index(bytes.fromhex(KEY)).steps_for(ids))
        _forget(_write(tmp_path, ids), "--method", "retrain")
        v2 = load_model(f"models:/{MODEL}/2")
        assert v2.segments[0].store_url != old and len(v2.rolled_back) == 0
        before = v2.predict_proba(np.zeros((4, 1, 8, 8), np.float32))

        r = _purge("--version", "1", "--yes")
        assert r.exit_code == 0, r.output
        store = DeltaStore.open(old, key=bytes.fromhex(KEY))
        assert saw and store.purged_steps == saw
        with pytest.raises(PurgedStepsError):
            store.read(saw[0])
        assert DeltaStore.open(v2.segments[0].store_url, key=bytes.fromhex(KEY)).purged_steps == []
        after = load_model(f"models:/{MODEL}/2").predict_proba(np.zeros((4, 1, 8, 8), np.float32))
        np.testing.assert_array_equal(after, before)
