"""Model inversion: the attack's mechanics, its scores, the PNG grid, and a forgotten class on MNIST."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from mlflow_amnesia.audit import inversion as inv
from mlflow_amnesia.audit.inversion import INVERSION_METRICS, denormalize, inversion_audit, inversion_scores, invert_classes, pixel_bounds, process, save_image_grid
from mlflow_amnesia.learning.data import epoch_order, load_dataset, split
from mlflow_amnesia.errors import InputError
from mlflow_amnesia.learning.models import build_model, default_arch_spec
from mlflow_amnesia.learning.training import Recipe, epoch_orders, make_optimizer, run_epochs


@pytest.fixture(scope="module")
def one_thread():
    """Quiet, and one thread: tiny models run faster on one, much faster on a shared machine.

    Module-scoped fixtures run before conftest's per-test isolation, so set quiet here too.
    """
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_AMNESIA_QUIET", "1")
        yield
    torch.set_num_threads(n)


def _train(records, positions, recipe, seed):
    model = build_model(default_arch_spec("cnn", records), seed=seed)
    run_epochs(model, make_optimizer(model, recipe), records.x, records.y, epoch_orders(positions, seed, recipe.epochs),
               batch_size=recipe.batch_size)
    return model.eval()


@pytest.fixture(scope="module")
def digits(one_thread):
    records = load_dataset("digits")
    sp = split(records, seed=0, holdout_fraction=0.2)
    model = _train(records, sp.train, Recipe(epochs=5, batch_size=64), seed=1)
    judge = _train(records, sp.holdout, Recipe(epochs=10, batch_size=32), seed=2)
    return records, sp, model, judge


def test_pixel_bounds_and_denormalize_invert_the_normalisation():
    records = load_dataset("digits")
    low, high = pixel_bounds(records)
    raw = torch.tensor([0.0, 0.25, 1.0]).view(1, 1, 1, 3)
    mean, std = records.spec["normalization"]["mean"][0], records.spec["normalization"]["std"][0]
    normalised = (raw - mean) / std
    assert float(low) == pytest.approx(float(normalised[0, 0, 0, 0])) and float(high) == pytest.approx(float(normalised[0, 0, 0, 2]))
    torch.testing.assert_close(denormalize(normalised, records), raw)
    torch.testing.assert_close(denormalize(normalised + 100, records), torch.ones_like(raw))  # clamped


def test_process_removes_isolated_noise_and_clamps():
    x = torch.zeros(1, 1, 6, 6)
    x[0, 0, 2, 3] = 5.0  # salt
    x[0, 0, 4, 1] = -5.0  # pepper
    low, high = torch.full((1, 1, 1, 1), -1.0), torch.full((1, 1, 1, 1), 1.0)
    torch.testing.assert_close(process(x, low, high), torch.zeros_like(x))
    ramp = torch.linspace(-3, 3, 36).view(1, 1, 6, 6)
    out = process(ramp, low, high)
    assert out.min() >= -1.0 and out.max() <= 1.0


def test_process_runs_every_n_iterations(digits, monkeypatch):
    records, sp, model, judge = digits
    calls = []
    real = inv.process

    def counting(x, low, high):
        calls.append(1)
        return real(x, low, high)

    monkeypatch.setattr(inv, "process", counting)
    invert_classes(model, records, [0], iterations=10, process_every=3)
    assert len(calls) == 3  # after iterations 3, 6 and 9


def test_inversion_raises_the_target_class_and_leaves_the_model_alone(digits):
    records, sp, model, judge = digits
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    classes = [0, 3, 7]
    x = invert_classes(model, records, classes, iterations=150, process_every=100, restarts=2, seed=4)
    assert x.shape == (6, *records.x.shape[1:])
    low, high = pixel_bounds(records)
    assert (x >= low).all() and (x <= high).all()
    assert model.training and all(p.requires_grad for p in model.parameters())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    model.eval()
    with torch.no_grad():
        p = torch.softmax(model(x), 1)[torch.arange(6), torch.tensor([0, 0, 3, 3, 7, 7])]
    assert (p > 0.5).all(), p  # from a grey start (chance 0.1) to the targeted class
    torch.testing.assert_close(x, invert_classes(model, records, classes, iterations=150, process_every=100, restarts=2, seed=4))
    assert not torch.equal(x[0], x[1])  # restarts start from different noise


def test_inversion_refuses_bad_arguments(digits):
    records, sp, model, judge = digits
    with pytest.raises(InputError, match="classes to invert"):
        invert_classes(model, records, [10])
    with pytest.raises(InputError, match="classes to invert"):
        invert_classes(model, records, [])
    with pytest.raises(InputError, match="process_every >= 1"):
        invert_classes(model, records, [1], process_every=0)


def test_scores_are_judge_confidence_and_correlation_with_the_class_mean(digits):
    records, sp, model, judge = digits
    ref = sp.holdout
    means = torch.stack([records.x[ref[(records.y[ref] == c).numpy()]].mean(0) for c in (2, 5)])
    conf, corr = inversion_scores(means, [2, 5], records, judges=[judge, model], reference_idx=ref)
    np.testing.assert_allclose(corr, [1.0, 1.0], atol=1e-9)  # the class mean image itself
    with torch.no_grad():
        expected = (torch.softmax(judge(means), 1) + torch.softmax(model(means), 1))[[0, 1], [2, 5]] / 2
    np.testing.assert_allclose(conf, expected.double().numpy(), rtol=1e-6)
    _, corr_no_ref = inversion_scores(means, [2, 5], records, judges=[judge], reference_idx=ref[(records.y[ref] != 5).numpy()])
    assert np.isfinite(corr_no_ref[0]) and np.isnan(corr_no_ref[1])
    with pytest.raises(InputError, match="at least one judge"):
        inversion_scores(means, [2, 5], records, judges=[], reference_idx=ref)


def test_inversion_audit_metrics_and_png(digits, tmp_path):
    records, sp, model, judge = digits
    res = inversion_audit(model, records, [1, 4], judges=[judge], reference_idx=sp.holdout, iterations=60,
                          process_every=50, restarts=3)
    m = res.metrics()
    assert tuple(m) == INVERSION_METRICS
    assert m["audit.inversion.score"] == m["audit.inversion.judge_confidence"] == pytest.approx(res.judge_confidence.mean())
    per = res.per_class()
    assert set(per) == {1, 4} and per[4]["judge_confidence"] == pytest.approx(res.judge_confidence[3:].mean())
    assert res.settings["restarts"] == 3 and res.settings["process_every"] == 50
    path = res.save_png(tmp_path / "inv" / "grid.png", records)
    with Image.open(path) as im:
        assert im.format == "PNG"
        w, h = im.size
    tile = 8 * 11  # 8x8 digits scaled up 11x to reach 84 pixels
    assert w == 3 * (tile + 4) + 4 and h == 2 * (tile + 14 + 4) + 4  # a row per class, a column per restart


def test_image_grid_refuses_bad_shapes(digits, tmp_path):
    records, *_ = digits
    with pytest.raises(InputError, match="N x 1|3 x H x W"):
        save_image_grid(torch.zeros(2, 2, 8, 8), tmp_path / "x.png", records=records)
    with pytest.raises(InputError, match="labels"):
        save_image_grid(torch.zeros(2, 1, 8, 8), tmp_path / "x.png", records=records, labels=["a"])


@pytest.mark.slow
def test_forgetting_a_class_stops_its_inversion_convincing_independent_judges(mnist_dir, one_thread, tmp_path):
    """Real MNIST: a model that never saw class 7 cannot be inverted into a 7 that other models accept.

    Measured (torch 2.14 CPU, 4 restarts): judge confidence in the inverted 7 of 0.49 for the
    model trained on all classes and 0.013 for the model trained without 7s (0.35 / 0.01 and
    0.36 / 0.06 for classes 7 and 5 with other judges and seeds).
    """
    records = load_dataset(f"idx:{mnist_dir}")
    perm = epoch_order(len(records), 99, 0)
    train, judge_data, ref = perm[:1000], perm[2000:3000], perm[5000:6000]
    recipe = Recipe(epochs=10, batch_size=32, lr=0.05)
    judges = [_train(records, judge_data[i::2], recipe, seed=10 + i) for i in range(2)]
    full = _train(records, train, recipe, seed=2)
    without = _train(records, train[(records.y[train] != 7).numpy()], recipe, seed=2)
    scores = {}
    for name, model in (("full", full), ("without", without)):
        res = inversion_audit(model, records, [7], judges=judges, reference_idx=ref, restarts=4)
        res.save_png(tmp_path / f"{name}.png", records)
        scores[name] = res.metrics()["audit.inversion.score"]
    print(f"\ninversion score of class 7: {scores}")
    assert scores["full"] > 0.2
    assert scores["full"] - scores["without"] > 0.15
