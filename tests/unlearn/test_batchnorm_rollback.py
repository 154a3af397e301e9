"""Amnesiac rollback of BatchNorm running statistics: decayed, not subtracted in full.

A BatchNorm layer without affine parameters is a pure exponential average of its batches'
statistics, which do not depend on the running statistics. So "the statistics had these steps
never happened" is computable exactly: run the same batches, skipping the removed ones. The
decayed rollback must reproduce it (to float32 rounding); the full subtraction must not.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mlflow_amnesia.mlflow.flavor import AmnesiaModel, Segment
from mlflow_amnesia.recording.store import DeltaStore
from mlflow_amnesia.unlearn.amnesiac import live_after, rollback_sums, rolled_back_sums, subtract

T = 40


def _bn() -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.BatchNorm1d(3, affine=False, momentum=0.2))


def _batches() -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return [torch.randn(16, 3, generator=g) * (1 + i % 5) + i % 7 for i in range(T)]


def _run(module, batches, skip=()):
    module.train()
    with torch.no_grad():
        for i, b in enumerate(batches):
            if i not in skip:
                module(b)
    return module


_KEY = b"\x11" * 32  # the record key the stores here are sealed with


def _recorded(tmp_path) -> tuple[AmnesiaModel, torch.nn.Module]:
    """A model whose every step (one forward pass) is recorded as a float32 delta."""
    module = _bn()
    layout = [{"name": k, "shape": list(v.shape), "dtype": "float32"}
              for k, v in module.state_dict().items() if v.is_floating_point()]
    url = str(tmp_path / "deltas")
    store = DeltaStore.create(url, layout=layout, codec="f32", key=_KEY)
    prev = {k: v.clone() for k, v in module.state_dict().items()}
    module.train()
    with torch.no_grad():
        for t, b in enumerate(_batches()):
            module(b)
            now = module.state_dict()
            store.append(t, {d["name"]: (now[d["name"]] - prev[d["name"]]).numpy() for d in layout})
            prev = {k: v.clone() for k, v in now.items()}
    store.close()
    seg = Segment(role="train", store_url=url, first_step=0, last_step=T - 1,
                  manifest=DeltaStore.open(url, key=_KEY).manifest_bytes())
    return AmnesiaModel(module=module, arch={}, info={}, segments=[seg]), module


def _rollback(am: AmnesiaModel, steps, *, decay=True) -> dict[str, torch.Tensor]:
    steps = np.asarray(sorted(steps), np.int64)
    sums = rollback_sums(am, steps, key=_KEY)[0] if decay else rolled_back_sums(am, steps, key=_KEY)
    subtract(am.module, sums, len(steps))
    am.rolled_back = np.union1d(am.rolled_back, steps)
    return {k: v.clone() for k, v in am.module.state_dict().items()}


@pytest.mark.parametrize("removed", [[37], [3, 20, 38], list(range(10, 30))])
def test_decayed_rollback_equals_the_statistics_without_those_batches(tmp_path, removed):
    am, _ = _recorded(tmp_path)
    got = _rollback(am, removed)
    want = _run(_bn(), _batches(), skip=set(removed)).state_dict()
    for name in ("0.running_mean", "0.running_var"):
        np.testing.assert_allclose(got[name].numpy(), want[name].numpy(), rtol=0, atol=2e-5)


def test_full_subtraction_overcorrects(tmp_path):
    am, _ = _recorded(tmp_path)
    got = _rollback(am, [3, 20], decay=False)
    want = _run(_bn(), _batches(), skip={3, 20}).state_dict()
    assert np.abs(got["0.running_mean"].numpy() - want["0.running_mean"].numpy()).max() > 0.1


def test_two_forgets_in_a_row_compose(tmp_path):
    """Steps rolled back earlier no longer decay what came before them."""
    am, _ = _recorded(tmp_path)
    _rollback(am, [30])
    got = _rollback(am, [5, 25])
    want = _run(_bn(), _batches(), skip={5, 25, 30}).state_dict()
    np.testing.assert_allclose(got["0.running_var"].numpy(), want["0.running_var"].numpy(), rtol=0, atol=2e-5)


def test_only_steps_that_still_matter_are_read_one_by_one(tmp_path, monkeypatch):
    from mlflow_amnesia.unlearn import amnesiac

    monkeypatch.setattr(amnesiac, "BN_NEGLIGIBLE", 0.01)  # 0.8**21 < 0.01: early steps are skipped
    am, _ = _recorded(tmp_path)
    steps = np.arange(T, dtype=np.int64)[::3]
    k = live_after(am, steps)
    assert k.tolist() == [int(((np.arange(T) > s) & (np.arange(T) % 3 != 0)).sum()) for s in steps]
    _, one_by_one = rollback_sums(am, steps, key=_KEY)
    assert 0 < one_by_one == int(((1 - 0.2) ** k >= 0.01).sum()) < len(steps)


def test_parameters_are_subtracted_in_full_on_both_paths(tmp_path, monkeypatch):
    """Steps read one by one and steps streamed through sum() give the same parameter rollback."""
    from mlflow_amnesia.unlearn import amnesiac

    monkeypatch.setattr(amnesiac, "BN_NEGLIGIBLE", 0.01)  # steps 0..~20 stream, later ones are read one by one
    module = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.BatchNorm1d(3, momentum=0.2))
    layout = [{"name": k, "shape": list(v.shape), "dtype": "float32"} for k, v in module.state_dict().items()
              if v.is_floating_point()]
    url = str(tmp_path / "deltas")
    store = DeltaStore.create(url, layout=layout, codec="f32", key=_KEY)
    g = torch.Generator().manual_seed(1)
    for t in range(T):
        store.append(t, {d["name"]: torch.randn(d["shape"], generator=g).numpy() for d in layout})
    store.close()
    seg = Segment(role="train", store_url=url, first_step=0, last_step=T - 1,
                  manifest=DeltaStore.open(url, key=_KEY).manifest_bytes())
    am = AmnesiaModel(module=module, arch={}, info={}, segments=[seg])
    steps = np.array([1, 5, 30, 38], np.int64)
    got, one_by_one = rollback_sums(am, steps, key=_KEY)
    full = rolled_back_sums(am, steps, key=_KEY)
    assert one_by_one == 2
    for name in ("0.weight", "0.bias", "1.weight", "1.bias"):
        np.testing.assert_allclose(got[name], full[name], rtol=0, atol=1e-12)
    k = live_after(am, steps)
    want_mean = sum((0.8 ** kt) * DeltaStore.open(url, key=_KEY).read(int(t))["1.running_mean"].astype(np.float64)
                    for t, kt in zip(steps, k) if 0.8 ** kt >= 0.01)
    np.testing.assert_allclose(got["1.running_mean"], want_mean, rtol=0, atol=1e-12)
