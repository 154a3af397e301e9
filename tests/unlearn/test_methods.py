"""The unlearning methods side by side: what each one feeds, what it records, what it registers.

Every method is run through the CLI at least once on a tiny trained registry (digits, small CNN,
2 epochs of 23 steps, f32 codec); the exactness checks (retrain reproduces training, replay's
batches, refusal before any change) also run at the function level.
"""

from __future__ import annotations

import math
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from mlflow_amnesia.learning import training
from mlflow_amnesia.errors import InputError

from helpers import MODEL, invoke

BATCH = 64


# ------------------------------------------------------------------------------------- helpers


def _ids(n: int) -> list[str]:
    return invoke("records", "--model", MODEL, "--limit", str(n)).output.split()


def _forget(tmp: Path, ids: list[str], *args: str, ok: bool = True):
    p = tmp / f"ids-{len(list(tmp.glob('ids-*')))}.txt"
    p.write_text("\n".join(ids) + "\n")
    return invoke("forget", "--model", MODEL, "--records", str(p), "--yes", "--no-audit", *args, ok=ok)


def _load(version: int):
    from mlflow_amnesia.mlflow.flavor import load_model

    return load_model(f"models:/{MODEL}/{version}")


def _data(am):
    from mlflow_amnesia.learning.data import Split, rebuild

    recs = rebuild(am.info["dataset"])
    return recs, Split.from_json(am.info["split"], recs)


def _key() -> bytes:
    from mlflow_amnesia.keys import load_key

    return load_key()


def _tags(version: int) -> dict:
    from mlflow_amnesia.mlflow import registry

    return registry.resolve_version(MODEL, version=version).tags


def _capture_training(monkeypatch) -> list[dict]:
    """Record what every training loop is fed (data, labels, orders, ids), then run it."""
    calls: list[dict] = []
    real = training.run_epochs

    def spy(model, optimizer, x, y, orders, **kw):
        labels = kw.get("targets") if kw.get("targets") is not None else y
        calls.append({"x": x, "labels": labels, "orders": [np.asarray(o) for o in orders], "ids": kw.get("ids")})
        return real(model, optimizer, x, y, orders, **kw)

    monkeypatch.setattr(training, "run_epochs", spy)
    return calls


def _state_equal(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def _ctx(am, phase: Path, *, ids=(), records=None, options=None, steps=()):
    from mlflow_amnesia.keys import hash_ids
    from mlflow_amnesia.unlearn import ForgetContext

    def gone():
        raise InputError("the data at /nowhere is not the data this model was trained on")

    key = _key()
    return ForgetContext(
        model=am, key=key, target_hashes=hash_ids(list(ids), key), steps=np.asarray(steps, np.int64),
        load_records=(lambda: records) if records is not None else gone, phase_base=lambda: str(phase),
        run_id="test", options=dict(options or {}),
    )


def _order_batches(am, steps) -> dict[int, np.ndarray]:
    """The training batches of ``steps`` cut from v1's recorded batch order."""
    from mlflow_amnesia.mlflow.runs import load_array

    order = load_array(f"{am.info['training_url']}/batch_order.npy", key=_key())
    per = math.ceil(order.shape[1] / BATCH)
    return {int(s): order[s // per, (s % per) * BATCH : (s % per + 1) * BATCH] for s in steps}


# ------------------------------------------------------------------------------------- relabel


def test_wrong_labels_never_equal_the_true_label_and_reach_every_other_class():
    from mlflow_amnesia.unlearn.relabel import wrong_labels

    y = np.arange(10_000) % 10
    w = wrong_labels(y, 10, np.random.default_rng(1))
    assert (w != y).all() and w.min() == 0 and w.max() == 9
    for c in range(10):
        assert set(w[y == c].tolist()) == set(range(10)) - {c}
    with pytest.raises(InputError, match="at least 2 classes"):
        wrong_labels(np.zeros(3, np.int64), 1, np.random.default_rng(0))


def test_relabel_replaces_records_by_wrongly_labelled_copies(registry_copy, monkeypatch):
    calls = _capture_training(monkeypatch)
    ids = _ids(3)
    _forget(registry_copy, ids, "--method", "relabel", "--copies", "3")

    v1 = _load(1)
    recs, sp = _data(v1)
    y, n = recs.y.numpy(), len(recs)
    fpos = set(recs.positions_of(ids).tolist())
    (call,) = calls
    labels = call["labels"].numpy()
    assert len(call["orders"]) == 1  # --epochs default 1
    for order in call["orders"]:
        real, copies = order[order < n], order[order >= n]
        # every retained record once, with its true label; the forgotten records never as themselves
        assert sorted(real.tolist()) == sorted(set(sp.train.tolist()) - fpos)
        np.testing.assert_array_equal(labels[real], y[real])
        # each forgotten record as exactly 3 copies, each with a label that is not its own
        src = recs.positions_of([call["ids"][p] for p in copies])
        assert Counter(src.tolist()) == {p: 3 for p in fpos}
        assert (labels[copies] != y[src]).all()
        assert torch.equal(call["x"][copies], recs.x[src])

    tags = _tags(2)
    assert tags["amnesia.method"] == "relabel" and tags["amnesia.parent_version"] == "1"
    assert tags["amnesia.n_records"] == "3" and len(tags["amnesia.forget_request"]) >= 32
    v2 = _load(2)
    assert [s.role for s in v2.segments] == ["train", "relabel"]
    seg = v2.segments[1]
    assert seg.first_step == v1.next_step
    assert seg.n_steps == math.ceil((len(sp.train) - 3 + 9) / BATCH)
    assert not _state_equal(v1.module, v2.module)


def test_relabel_a_class_relabels_each_example_once(registry_copy, monkeypatch):
    from mlflow_amnesia.learning.data import class_records

    calls = _capture_training(monkeypatch)
    invoke("forget", "--model", MODEL, "--class", "3", "--method", "relabel", "--no-audit")
    v1 = _load(1)
    recs, sp = _data(v1)
    members = np.intersect1d(class_records(recs, 3), sp.train)
    (call,) = calls
    order, n = call["orders"][0], len(recs)
    real, copies = order[order < n], order[order >= n]
    assert not np.isin(real, members).any()
    src = recs.positions_of([call["ids"][p] for p in copies])
    assert sorted(src.tolist()) == sorted(members.tolist())  # once each, whatever --copies says
    assert (call["labels"].numpy()[copies] != 3).all()
    assert _tags(2)["amnesia.n_records"] == str(len(members))


# ------------------------------------------------------------------------------------ finetune


def test_finetune_never_feeds_a_record_forgotten_along_the_lineage(registry_copy, monkeypatch):
    ids = _ids(6)
    a, b = ids[:3], ids[3:]
    _forget(registry_copy, a)  # v2: amnesiac
    calls = _capture_training(monkeypatch)
    _forget(registry_copy, b, "--method", "finetune")  # v3

    v1, v3 = _load(1), _load(3)
    recs, sp = _data(v1)
    gone = recs.positions_of(ids)
    (call,) = calls
    assert len(call["orders"]) == 1
    assert sorted(call["orders"][0].tolist()) == sorted(np.setdiff1d(sp.train, gone).tolist())

    assert [s.role for s in v3.segments] == ["train", "finetune"]
    seg = v3.segments[1]
    assert seg.first_step == v1.next_step and seg.n_steps == math.ceil((len(sp.train) - 6) / BATCH)
    idx = seg.open_index(_key())
    assert not idx.contains(ids).any()
    assert idx.contains([recs.ids[p] for p in np.setdiff1d(sp.train, gone)[:50]]).all()
    tags = _tags(3)
    assert tags["amnesia.method"] == "finetune" and tags["amnesia.parent_version"] == "2"
    assert tags["amnesia.n_records"] == "3" and tags["amnesia.steps_rolled_back"] == "0"
    # v2's rollback is kept: finetune continues from v2's weights
    assert set(v3.rolled_back.tolist()) == set(_load(2).rolled_back.tolist()) != set()


# ------------------------------------------------------------------------------------- retrain


def test_retrain_of_nothing_reproduces_the_trained_model_bit_for_bit(registry_copy, tmp_path):
    from mlflow_amnesia.learning.models import build_model
    from mlflow_amnesia.unlearn.retrain import load_retrain_inputs, retrain

    v1 = _load(1)
    recs, sp = _data(v1)
    inputs = load_retrain_inputs(v1.info, v1.arch, recs, sp, np.zeros(0, np.int64), module=v1.module, key=_key())
    module = build_model(v1.arch)  # fresh random weights: retrain must reset them
    seg, _ = retrain(module, inputs, base_url=str(tmp_path / "phase"), codec="f32", key=_key())
    assert _state_equal(module, v1.module)
    assert (seg.first_step, seg.last_step) == (0, v1.segments[0].last_step)
    # same batches, so the same record index
    assert seg.index == v1.segments[0].index


def test_retrain_excludes_the_lineage_and_its_version_can_be_forgotten_from(registry_copy, trained):
    from mlflow_amnesia.mlflow.runs import load_array, load_state

    ids = _ids(9)
    a, b, c = ids[:3], ids[3:6], ids[6:]
    _forget(registry_copy, a)  # v2 amnesiac
    _forget(registry_copy, b, "--method", "retrain")  # v3
    v1, v3 = _load(1), _load(3)
    recs, sp = _data(v1)
    gone = recs.positions_of(a + b)

    tags = _tags(3)
    assert tags["amnesia.method"] == "retrain" and tags["amnesia.parent_version"] == "2"
    assert tags["amnesia.n_records"] == "3" and tags["amnesia.n_records_total"] == "6"
    assert [s.role for s in v3.segments] == ["retrain"] and len(v3.rolled_back) == 0
    seg = v3.segments[0]
    n_kept = len(sp.train) - 6
    assert seg.first_step == 0 and seg.n_steps == 2 * math.ceil(n_kept / BATCH)  # the recipe's 2 epochs
    idx = seg.open_index(_key())
    assert not idx.contains(a + b).any()
    assert idx.n_records == n_kept
    # its order is the recorded one minus every forgotten record
    recorded = load_array(f"{v1.info['training_url']}/batch_order.npy", key=_key())
    kept = load_array(seg.store_url.rsplit("/deltas", 1)[0] + "/training/batch_order.npy", key=_key())
    np.testing.assert_array_equal(kept, np.stack([r[~np.isin(r, gone)] for r in recorded]))
    assert v3.info["training_url"] == v1.info["training_url"]

    # forget again from the retrained version: the rollback uses the retrain's deltas, exactly
    _forget(registry_copy, c)  # v4 amnesiac
    v4 = _load(4)
    steps = idx.steps_for(c)
    assert len(steps) and set(v4.rolled_back.tolist()) == set(steps.tolist())
    assert _tags(4)["amnesia.parent_version"] == "3"
    sums = seg.open_store(_key()).sum(steps.tolist())
    for name, t3 in v3.module.state_dict().items():
        if name in sums:
            expect = (t3.double().numpy() - sums[name].reshape(t3.shape)).astype(np.float32)
            np.testing.assert_array_equal(v4.module.state_dict()[name].numpy(), expect, err_msg=name)
    # rolling back every retrain step returns the initial weights (f32: float rounding only)
    init = load_state(f"{v1.info['training_url']}/initial_state.pt", key=_key())
    every = seg.open_store(_key()).sum(list(range(seg.first_step, seg.last_step + 1)))
    for name, t3 in v3.module.state_dict().items():
        if name in every:
            np.testing.assert_allclose(t3.double().numpy() - every[name].reshape(t3.shape), init[name].double().numpy(),
                                       rtol=0, atol=2e-6, err_msg=name)


def test_retrain_without_its_training_state_stops_before_any_change(registry_copy, tmp_path):
    from mlflow_amnesia.unlearn import get_method

    v1 = _load(1)
    recs, _ = _data(v1)
    partial = tmp_path / "training"
    partial.mkdir()
    shutil.copy(Path(v1.info["training_url"]) / "batch_order.npy", partial)  # initial_state.pt "purged"
    v1.info["training_url"] = str(partial)
    before = {k: v.clone() for k, v in v1.module.state_dict().items()}
    ctx = _ctx(v1, tmp_path / "phase", ids=_ids(2), records=recs)
    with pytest.raises(InputError, match=r"initial_state\.pt.*missing.*Nothing was changed"):
        get_method("retrain").apply(ctx)
    assert all(torch.equal(before[k], t) for k, t in v1.module.state_dict().items())
    assert not (tmp_path / "phase").exists()


def test_retrain_without_initial_state_through_the_cli_registers_nothing(registry_copy, trained):
    from mlflow_amnesia.mlflow import registry

    init = Path(_load(1).info["training_url"]) / "initial_state.pt"
    aside = init.with_suffix(".aside")
    init.rename(aside)
    try:
        r = _forget(registry_copy, _ids(2), "--method", "retrain", ok=False)
    finally:
        aside.rename(init)
    assert r.exit_code == 1 and "initial_state.pt" in r.output and "--method amnesiac" in r.output
    assert int(registry.resolve_version(MODEL).version) == 1


@pytest.mark.parametrize("method, options", [
    ("relabel", {}), ("finetune", {}), ("retrain", {}),
    ("amnesiac", {"repair": "finetune"}), ("amnesiac", {"repair": "replay"}),
])
def test_a_method_that_needs_missing_data_stops_before_any_change(registry_copy, tmp_path, method, options):
    from mlflow_amnesia.unlearn import get_method

    v1 = _load(1)
    ids = _ids(2)
    steps = v1.segments[0].open_index(_key()).steps_for(ids)
    before = {k: v.clone() for k, v in v1.module.state_dict().items()}
    ctx = _ctx(v1, tmp_path / "phase", ids=ids, options=options, steps=steps)
    with pytest.raises(InputError, match="cannot be rebuilt.*Nothing was changed.*--data-root"):
        get_method(method).apply(ctx)
    assert all(torch.equal(before[k], t) for k, t in v1.module.state_dict().items())
    assert not (tmp_path / "phase").exists()


# -------------------------------------------------------------------------------------- replay


def test_replay_reruns_exactly_the_rolled_back_batches_minus_the_records(registry_copy, monkeypatch):
    v1 = _load(1)
    recs, _ = _data(v1)
    ids = _ids(3)
    steps = v1.segments[0].open_index(_key()).steps_for(ids)
    calls = _capture_training(monkeypatch)
    _forget(registry_copy, ids, "--repair", "replay")

    gone = recs.positions_of(ids)
    want = [b[~np.isin(b, gone)] for _, b in sorted(_order_batches(v1, steps).items())]
    (call,) = calls
    assert len(call["orders"]) == len(steps)
    for fed, expect in zip(call["orders"], want):
        np.testing.assert_array_equal(fed, expect)  # same records, same order within the batch

    v2 = _load(2)
    assert [s.role for s in v2.segments] == ["train", "replay"]
    seg = v2.segments[1]
    assert seg.first_step == v1.next_step and seg.n_steps == len(steps)
    assert not seg.open_index(_key()).contains(ids).any()
    assert set(v2.rolled_back.tolist()) == set(steps.tolist())
    tags = _tags(2)
    assert tags["amnesia.method"] == "amnesiac" and tags["amnesia.repair"] == "replay"
    assert tags["amnesia.steps_rolled_back"] == str(len(steps))


def test_replay_of_a_phase_without_batch_order_uses_the_record_index(registry_copy, monkeypatch):
    ids = _ids(6)
    a, b = ids[:3], ids[3:]
    _forget(registry_copy, a, "--method", "relabel")  # v2: a relabel segment, no batch order kept
    v2 = _load(2)
    recs, sp = _data(v2)
    key = _key()
    train_steps = v2.segments[0].open_index(key).steps_for(b)
    relabel_idx = v2.segments[1].open_index(key)
    relabel_steps = relabel_idx.steps_for(b, strict=False)
    assert len(relabel_steps)
    calls = _capture_training(monkeypatch)
    _forget(registry_copy, b, "--repair", "replay")  # v3

    from mlflow_amnesia.keys import hash_ids

    gone = recs.positions_of(a + b)
    by_hash = {h.tobytes(): p for h, p in zip(hash_ids([recs.ids[p] for p in sp.train], key), sp.train.tolist())}
    want = {s: b_[~np.isin(b_, gone)] for s, b_ in _order_batches(v2, train_steps).items()}
    for s in relabel_steps.tolist():
        pos = np.sort([by_hash[h.tobytes()] for h in relabel_idx.records_in_step(s)])
        want[s] = pos[~np.isin(pos, gone)]
    want_list = [want[s] for s in sorted(want) if len(want[s])]
    (call,) = calls
    assert len(call["orders"]) == len(want_list)
    for fed, expect in zip(call["orders"], want_list):
        np.testing.assert_array_equal(fed, expect)
    v3 = _load(3)
    assert [s.role for s in v3.segments] == ["train", "relabel", "replay"]
    assert v3.segments[2].first_step == v2.next_step


def test_replay_plan_skips_emptied_batches_and_refuses_a_foreign_order(registry_copy, tmp_path):
    from mlflow_amnesia.mlflow.flavor import Segment
    from mlflow_amnesia.mlflow.runs import load_array, save_array
    from mlflow_amnesia.learning.training import Recipe
    from mlflow_amnesia.unlearn.common import TrainingData
    from mlflow_amnesia.unlearn.replay import plan_replay

    v1 = _load(1)
    recs, sp = _data(v1)
    key = _key()
    batches = _order_batches(v1, [0, 5])
    excluded = np.sort(batches[0])  # every record of step 0's batch is forgotten
    data = TrainingData(recs, sp, Recipe.from_dict(v1.info["recipe"]), excluded, excluded)
    plan = plan_replay(v1, np.array([5, 0]), data, key)
    assert plan.skipped == [0] and plan.steps == [5] and plan.sources == {"train": "batch order"}
    np.testing.assert_array_equal(plan.batches[0], batches[5][~np.isin(batches[5], excluded)])

    # an order file that is not this phase's (same shape, other permutation) is an error
    order = load_array(f"{v1.info['training_url']}/batch_order.npy", key=_key())
    save_array(f"{tmp_path}/training/batch_order.npy", order[:, ::-1].copy(), key=_key())
    fake = Segment("train", f"{tmp_path}/deltas", 0, v1.segments[0].last_step, manifest=v1.segments[0].manifest, index=v1.segments[0].index)
    v1.segments = [fake]
    with pytest.raises(InputError, match="does not match the record index at step 0"):
        plan_replay(v1, np.array([0]), data, key)
    # without an order file the record index gives the same records (in position order)
    (tmp_path / "training" / "batch_order.npy").unlink()
    plan = plan_replay(v1, np.array([5]), data, key)
    assert plan.sources == {"train": "record index"}
    np.testing.assert_array_equal(plan.batches[0], np.sort(batches[5][~np.isin(batches[5], excluded)]))
