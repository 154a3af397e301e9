"""Recorder: per-step state deltas of a real training loop, error feedback, hooks, meta, staging."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mlflow_amnesia.recording.recorder import recorder as recorder_mod
from mlflow_amnesia.errors import InputError, StoreError
from mlflow_amnesia.recording.index import RecordIndexBuilder
from mlflow_amnesia.keys import hash_ids, load_key
from mlflow_amnesia.recording.recorder import Recorder, float_state, integer_state_names, optimizer_meta, state_layout, step_meta
from mlflow_amnesia.recording.store import DeltaStore

# ------------------------------------------------------------------------------------------------
# The real store and index


@pytest.fixture
def new_store(tmp_path):
    """DeltaStore.create in a fresh directory; every store is closed at teardown."""
    made = []

    def make(layout, codec="f32", meta=None):
        store = DeltaStore.create(str(tmp_path / f"store{len(made)}"), layout=layout, codec=codec, meta=meta,
                                  key=b"\x11" * 32)
        made.append(store)
        return store

    yield make
    for store in made:
        store.close()


@pytest.fixture
def new_index():
    key = load_key(create=True)
    return lambda: RecordIndexBuilder(key)


def _assert_index_holds(builder, ids_per_step, start=0):
    """The built index maps step start+i to exactly the records of ids_per_step[i]."""
    idx = builder.build()
    assert idx.n_steps == len(ids_per_step)
    for i, ids in enumerate(ids_per_step):
        want = np.unique(hash_ids(ids, load_key()), axis=0)
        assert np.array_equal(idx.records_in_step(start + i), want), start + i
    return idx


class _Spy:
    """Wraps a real store; subclasses intercept append."""

    def __init__(self, store):
        self._store = store

    def __getattr__(self, name):
        return getattr(self._store, name)

    def append(self, step, delta, meta=None):
        self._store.append(step, delta, meta=meta)


# ------------------------------------------------------------------------------------------------
# A tiny model with BatchNorm and a real training loop on random data


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4 * 4 * 4, 3)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.bn(self.conv(x))), 2)
        return self.fc(x.flatten(1))


N = 64
X = torch.randn(N, 1, 8, 8, generator=torch.Generator().manual_seed(1))
Y = torch.randint(0, 3, (N,), generator=torch.Generator().manual_seed(2))


def _model(seed=0):
    torch.manual_seed(seed)
    return Tiny()


def _sgd(model, lr=0.1):
    return torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4)


def _train(model, opt, rec, steps, *, mode="step", sched=None, batch=8, on_step=None):
    """The user's loop; ``mode`` 'step' calls rec.step(ids), 'hook' calls rec.set_batch(ids)."""
    g = torch.Generator().manual_seed(3)
    all_ids = []
    model.train()
    for _ in range(steps):
        idx = torch.randint(0, N, (batch,), generator=g)
        ids = [f"rand:{i}" for i in idx.tolist()]
        all_ids.append(ids)
        if mode == "hook":
            rec.set_batch(ids)
        opt.zero_grad()
        F.cross_entropy(model(X[idx]), Y[idx]).backward()
        opt.step()
        if mode == "step":
            rec.step(ids)
        if on_step is not None:
            on_step()
        if sched is not None:
            sched.step()
    return all_ids


def _snapshot(model):
    return {k: v.detach().to(torch.float64).clone() for k, v in float_state(model).items()}


def _rollback(theta_T, store, steps):
    s = store.sum(steps)
    return {k: theta_T[k] - torch.from_numpy(np.asarray(s[k], dtype=np.float64)) for k in theta_T}


def _max_err(a, b):
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def _record(new_store, new_index, *, codec="f32", steps=30, error_feedback=True, opt_factory=_sgd, **kw):
    model = _model()
    opt = opt_factory(model)
    store = new_store(state_layout(model), codec, {"optimizer": optimizer_meta(opt)})
    index = new_index()
    theta0 = _snapshot(model)
    with Recorder(model, store, index, optimizer=opt, error_feedback=error_feedback) as rec:
        ids = _train(model, opt, rec, steps, **kw)
    return model, store, index, theta0, _snapshot(model), ids


# ------------------------------------------------------------------------------------------------
# Layout


def test_layout_has_parameters_and_float_buffers_but_not_integer_buffers():
    model = _model()
    layout = state_layout(model)
    names = [e["name"] for e in layout]
    assert names == [
        "conv.weight", "conv.bias", "bn.weight", "bn.bias", "bn.running_mean", "bn.running_var", "fc.weight", "fc.bias",
    ]
    assert layout[0] == {"name": "conv.weight", "shape": [4, 1, 3, 3], "dtype": "float32"}
    assert integer_state_names(model) == ["bn.num_batches_tracked"]
    assert list(float_state(model)) == names
    assert float_state(model)["conv.weight"].data_ptr() == model.conv.weight.data_ptr()  # a view, no copy
    assert state_layout(model.double())[0]["dtype"] == "float64"


def test_complex_state_is_refused():
    model = nn.Linear(2, 2)
    model.register_buffer("phase", torch.zeros(2, dtype=torch.complex64))
    with pytest.raises(InputError, match="'phase' is complex"):
        state_layout(model)


# ------------------------------------------------------------------------------------------------
# Error feedback: rolling back every step returns theta_0 within one step's codec error


def _blockmax(t, block=4096):
    flat = t.reshape(-1).abs()
    pad = (-flat.numel()) % block
    m = F.pad(flat, (0, pad)).reshape(-1, block).amax(1, keepdim=True)
    return m.expand(-1, block).reshape(-1)[: flat.numel()].reshape(t.shape)


def _one_step_bound(codec, d_last):
    """Elementwise bound on |theta_T - r_T| = |x_T - quantize(x_T)|, with d_T = quantize(x_T)."""
    d = d_last.abs()
    if codec == "f32":  # float32 rounding of the float64 difference
        return d * 2.0**-23
    if codec == "bf16":  # round to nearest with 8 significant bits: |e| <= 2^-8 |x|, |x| <= |d|/(1-2^-8)
        return d * (2.0**-8 / (1 - 2.0**-8)) * (1 + 2.0**-20)
    return _blockmax(d_last) / 254 * (1 + 2.0**-16)  # int8: half a quantum of the block's absmax


@pytest.mark.parametrize("codec", ["f32", "bf16", "int8"])
def test_rollback_of_all_steps_returns_theta0_within_one_steps_error(new_store, new_index, codec):
    model, store, _, theta0, thetaT, _ = _record(new_store, new_index, codec=codec)
    steps = store.steps
    assert steps == list(range(30))
    rolled = _rollback(thetaT, store, steps)
    last = {k: torch.from_numpy(np.asarray(v, dtype=np.float64)) for k, v in store.read(steps[-1]).items()}
    for k in theta0:
        err = (rolled[k] - theta0[k]).abs()
        bound = _one_step_bound(codec, last[k]) + 1e-12
        assert bool((err <= bound).all()), (k, float((err - bound).max()))
    if codec == "f32":  # back in the model's dtype: one ulp of the value (+ the rounding above, near 0)
        for k in theta0:
            t0 = theta0[k].to(torch.float32)
            ulp = torch.from_numpy(np.spacing(np.abs(t0.numpy()))).double() + _one_step_bound(codec, last[k])
            assert bool(((rolled[k].to(torch.float32).double() - t0.double()).abs() <= ulp).all()), k


@pytest.mark.parametrize("codec", ["bf16", "int8"])
def test_without_error_feedback_the_rollback_error_is_larger(new_store, new_index, codec):
    _, s_ef, _, theta0, thetaT, _ = _record(new_store, new_index, codec=codec)
    _, s_no, _, theta0b, thetaTb, _ = _record(new_store, new_index, codec=codec, error_feedback=False)
    assert _max_err(theta0, theta0b) == 0 and _max_err(thetaT, thetaTb) == 0  # same training
    err_ef = _max_err(_rollback(thetaT, s_ef, s_ef.steps), theta0)
    err_no = _max_err(_rollback(thetaT, s_no, s_no.steps), theta0)
    assert err_no > 3 * err_ef, (err_no, err_ef)


# ------------------------------------------------------------------------------------------------
# Deltas against an independent capture of the trajectory


def test_rollback_of_a_subset_equals_in_memory_subtraction_of_true_deltas(new_store, new_index):
    model = _model()
    opt = _sgd(model)
    store = new_store(state_layout(model), "f32")
    true_deltas = []
    prev = [_snapshot(model)]

    def capture():
        now = _snapshot(model)
        true_deltas.append({k: now[k] - prev[0][k] for k in now})
        prev[0] = now

    with Recorder(model, store, new_index(), optimizer=opt) as rec:
        _train(model, opt, rec, 30, on_step=capture)
    thetaT = _snapshot(model)
    S = [0, 3, 4, 11, 17, 18, 29]
    rolled = _rollback(thetaT, store, S)
    expected = {k: thetaT[k] - sum(true_deltas[t][k] for t in S) for k in thetaT}
    for k in thetaT:
        # each recorded d_t = delta_t + e_{t-1} - e_t with |e| <= float32 rounding of one delta
        tol = 2 * len(S) * 2.0**-23 * max(float(true_deltas[t][k].abs().max()) for t in range(30)) + 1e-12
        assert float((rolled[k] - expected[k]).abs().max()) <= tol, k
    # and every recorded delta is the true one to float32 precision
    for t in (0, 15, 29):
        rec_t = store.read(t)
        for k in thetaT:
            np.testing.assert_allclose(rec_t[k], true_deltas[t][k].numpy(), rtol=1e-5, atol=1e-9)


def test_batchnorm_running_stats_are_recorded_and_integer_buffers_are_not(new_store, new_index):
    model, store, _, theta0, thetaT, _ = _record(new_store, new_index, steps=5)
    d0 = store.read(0)
    assert set(d0) == set(theta0) and "bn.num_batches_tracked" not in d0
    for k in ("bn.running_mean", "bn.running_var"):
        assert np.abs(d0[k]).max() > 0
        total = store.sum(store.steps)[k]
        np.testing.assert_allclose(total, (thetaT[k] - theta0[k]).numpy(), rtol=1e-6, atol=1e-9)
    assert int(model.bn.num_batches_tracked) == 5  # = the number of recorded steps


# ------------------------------------------------------------------------------------------------
# Meta, index, optimizers, hook mode


def test_step_meta_follows_a_scheduler_and_store_meta_names_the_optimizer(new_store, new_index):
    model = _model()
    opt = _sgd(model, lr=0.1)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
    store = new_store(state_layout(model), "bf16", {"optimizer": optimizer_meta(opt)})
    with Recorder(model, store, new_index(), optimizer=opt) as rec:
        _train(model, opt, rec, 6, sched=sched)
    lrs = [store.step_meta(s)["lr"] for s in store.steps]
    assert lrs == pytest.approx([0.1, 0.1, 0.05, 0.05, 0.025, 0.025])
    g = store.step_meta(4)["param_groups"][0]
    assert g["lr"] == pytest.approx(0.025) and g["momentum"] == 0.9 and g["weight_decay"] == 5e-4
    assert "nesterov" not in g and "params" not in g
    m = store.meta["optimizer"]
    assert m["class"] == "torch.optim.sgd.SGD" and m["name"] == "SGD"
    assert m["defaults"]["momentum"] == 0.9 and m["defaults"]["nesterov"] is False
    assert m["param_groups"][0]["n_tensors"] == 6


def test_index_builder_receives_each_steps_ids(new_store, new_index):
    _, _, index, _, _, ids = _record(new_store, new_index, steps=7)
    _assert_index_holds(index, ids)


def test_adam_is_recorded_like_any_optimizer(new_store, new_index):
    model, store, _, theta0, thetaT, _ = _record(
        new_store, new_index, codec="f32", steps=12, opt_factory=lambda m: torch.optim.Adam(m.parameters(), lr=1e-2)
    )
    assert _max_err(_rollback(thetaT, store, store.steps), theta0) < 1e-6
    assert _max_err(thetaT, theta0) > 1e-2
    g = store.step_meta(0)["param_groups"][0]
    assert g["betas"] == [0.9, 0.999] and g["lr"] == 1e-2
    assert store.meta["optimizer"]["name"] == "Adam"


def test_attach_hook_mode_records_the_same_as_explicit_steps(new_store, new_index):
    runs = []
    for mode in ("step", "hook"):
        model = _model()
        opt = _sgd(model)
        store = new_store(state_layout(model), "bf16")
        index = new_index()
        rec = Recorder(model, store, index, optimizer=opt)
        if mode == "hook":
            assert rec.attach(opt) is rec
        _train(model, opt, rec, 8, mode=mode)
        rec.close()
        runs.append((store, index))
    (a, ia), (b, ib) = runs
    assert a.steps == b.steps == list(range(8))
    for s in a.steps:
        ra, rb = a.read(s), b.read(s)
        assert all(np.array_equal(ra[k], rb[k]) for k in ra)
        assert a.step_meta(s) == b.step_meta(s)
    ia_, ib_ = ia.build(), ib.build()
    assert all(np.array_equal(ia_.records_in_step(t), ib_.records_in_step(t)) for t in range(8))


def test_hook_mode_without_set_batch_is_an_error_naming_the_fix(new_store, new_index):
    model = _model()
    opt = _sgd(model)
    rec = Recorder(model, new_store(state_layout(model)), new_index(), optimizer=opt).attach()
    F.cross_entropy(model(X[:4]), Y[:4]).backward()
    with pytest.raises(InputError, match=r"call rec.set_batch\(ids\) before every optimizer.step"):
        opt.step()
    rec.detach()
    opt.step()  # no hook any more


def test_attach_refuses_a_second_hook_or_another_optimizer(new_store, new_index):
    model = _model()
    opt = _sgd(model)
    rec = Recorder(model, new_store(state_layout(model)), new_index(), optimizer=opt)
    with pytest.raises(InputError, match="different optimizer"):
        rec.attach(_sgd(model))
    rec.attach()
    with pytest.raises(InputError, match="already attached"):
        rec.attach(opt)
    rec.close()  # detaches: stepping no longer records
    F.cross_entropy(model(X[:4]), Y[:4]).backward()
    opt.step()


def test_start_step_numbers_the_steps(new_store, new_index):
    model = _model()
    opt = _sgd(model)
    store = new_store(state_layout(model))
    index = new_index()
    with Recorder(model, store, index, optimizer=opt, start_step=100) as rec:
        ids = _train(model, opt, rec, 3)
        assert rec.next_step == 103 and rec.steps_recorded == 3
    assert store.steps == [100, 101, 102]
    _assert_index_holds(index, ids, start=100)
    with pytest.raises(InputError, match=r"start_step=103"):
        Recorder(model, store, new_index(), start_step=102)


# ------------------------------------------------------------------------------------------------
# Errors a user can act on


def test_layout_mismatch_names_the_tensor(new_store, new_index):
    store = new_store(state_layout(nn.Linear(3, 2)))
    with pytest.raises(InputError, match=r"another model layout .*'weight' \[2, 3\].*layout=state_layout"):
        Recorder(nn.Linear(4, 2), store, new_index())


def test_codec_mismatch_is_refused(new_store, new_index):
    model = _model()
    with pytest.raises(InputError, match="differs from the store's codec 'bf16'"):
        Recorder(model, new_store(state_layout(model), "bf16"), new_index(), codec="f32")


@pytest.mark.parametrize("ids", ["rand:1", [1, 2], torch.tensor([1, 2])])
def test_ids_must_be_strings(new_store, new_index, ids):
    model = _model()
    rec = Recorder(model, new_store(state_layout(model)), new_index())
    with pytest.raises(InputError, match="step 0: .*string"):
        rec.step(ids)


def test_closed_recorder_refuses_steps_and_close_flushes(new_store, new_index):
    model = _model()
    store = new_store(state_layout(model))
    rec = Recorder(model, store, new_index())
    rec.step(["a"])
    rec.close()
    rec.close()
    assert store.steps == [0]
    with pytest.raises(InputError, match="closed"):
        rec.step(["b"])


class _FailingStore(_Spy):
    def append(self, step, delta, meta=None):
        if step == 2:
            raise OSError("disk full")
        super().append(step, delta, meta)


@pytest.mark.parametrize("pooled", [False, True])
def test_a_store_failure_stops_the_recorder_with_the_step(new_store, new_index, monkeypatch, pooled):
    monkeypatch.setattr(recorder_mod, "_use_pooled_staging", lambda device: pooled)
    model = _model()
    store = _FailingStore(new_store(state_layout(model)))
    rec = Recorder(model, store, new_index())
    with pytest.raises((OSError, StoreError)):
        for i in range(5):
            rec.step([f"r{i}"])
        rec.flush()
    with pytest.raises(StoreError, match=r"stopped at step 2 .*disk full.*Recorder\(start_step=2\)"):
        rec.step(["again"])
    rec.close()
    store.flush()
    assert store.steps == [0, 1]


# ------------------------------------------------------------------------------------------------
# The pooled (CUDA) staging path, exercised on CPU: same records, buffers reused only when free


def test_pooled_staging_records_the_same_deltas_as_direct(new_store, new_index, monkeypatch):
    direct = _record(new_store, new_index, codec="bf16", steps=10)[1]
    monkeypatch.setattr(recorder_mod, "_use_pooled_staging", lambda device: True)
    pooled = _record(new_store, new_index, codec="bf16", steps=10)[1]
    assert pooled.steps == direct.steps
    for s in direct.steps:
        a, b = direct.read(s), pooled.read(s)
        assert all(np.array_equal(a[k], b[k]) for k in a)
        assert direct.step_meta(s) == pooled.step_meta(s)


class _HoldingStore(_Spy):
    """Keeps the arrays it is given (as a store that does not copy would) until released."""

    def __init__(self, store):
        super().__init__(store)
        self.held = {}

    def append(self, step, delta, meta=None):
        self.held[step] = {k: v.reshape(-1)[:] for k, v in delta.items()}  # views of views
        super().append(step, delta, meta)


def test_a_pinned_buffer_is_not_reused_while_the_store_holds_it(new_store, new_index, monkeypatch):
    monkeypatch.setattr(recorder_mod, "_use_pooled_staging", lambda device: True)
    model = _model()
    opt = _sgd(model)
    store = _HoldingStore(new_store(state_layout(model)))
    rec = Recorder(model, store, new_index(), optimizer=opt, pinned_buffers=1)
    _train(model, opt, rec, 1)
    rec.flush()
    before = {k: v.copy() for k, v in store.held[0].items()}

    done = threading.Event()

    def second_step():
        _train(model, opt, rec, 1)
        done.set()

    t = threading.Thread(target=second_step)
    t.start()
    time.sleep(0.3)
    assert not done.is_set()  # waits for the only buffer
    assert all(np.array_equal(before[k], store.held[0][k]) for k in before)  # untouched
    store.held.clear()  # the store is done with step 0: the buffer frees
    t.join(timeout=10)
    assert done.is_set()
    rec.close()
    assert store.steps == [0, 1]


def test_step_meta_without_optimizer_is_empty():
    assert step_meta(None) == {}


# ------------------------------------------------------------------------------------------------
# Internals the figures rely on


def test_sliced_cpu_subtraction_is_bitwise_the_fused_one():
    g = torch.Generator().manual_seed(5)
    theta = torch.randn(2500, generator=g)
    r = theta.double() + torch.randn(2500, generator=g, dtype=torch.float64) * 1e-3
    fused = torch.sub(theta, r).float()
    d = torch.empty(2500)
    recorder_mod._sub_into(theta, r, d, torch.empty(1000, dtype=torch.float64))  # 3 slices, last partial
    assert torch.equal(d, fused)
    nhwc = torch.randn(2, 3, 4, 5, generator=g).to(memory_format=torch.channels_last)
    r4 = nhwc.double().contiguous() - 1e-3
    d4 = torch.empty(2, 3, 4, 5)
    recorder_mod._sub_into(nhwc, r4, d4, torch.empty(7, dtype=torch.float64))  # non-contiguous: fused path
    assert torch.equal(d4, torch.sub(nhwc, r4).float())


def test_a_float64_model_is_recorded_as_float32_deltas_with_float64_layout(new_store, new_index):
    model = _model().double()
    opt = _sgd(model)
    store = new_store(state_layout(model), "f32")
    theta0 = _snapshot(model)
    with Recorder(model, store, new_index(), optimizer=opt) as rec:
        g = torch.Generator().manual_seed(3)
        for _ in range(10):
            idx = torch.randint(0, N, (8,), generator=g)
            opt.zero_grad()
            F.cross_entropy(model(X[idx].double()), Y[idx]).backward()
            opt.step()
            rec.step([f"rand:{i}" for i in idx.tolist()])
    assert store.layout[0]["dtype"] == "float64" and store.read(0)["conv.weight"].dtype == np.float32
    last = {k: torch.from_numpy(v.astype(np.float64)) for k, v in store.read(9).items()}
    rolled = _rollback(_snapshot(model), store, store.steps)
    for k in theta0:  # one step's float32 rounding of the float64 difference
        assert bool(((rolled[k] - theta0[k]).abs() <= _one_step_bound("f32", last[k]) + 1e-15).all()), k


def test_a_reshaped_parameter_mid_run_is_an_error(new_store, new_index):
    model = _model()
    rec = Recorder(model, new_store(state_layout(model)), new_index())
    rec.step(["a"])
    model.fc = nn.Linear(4 * 4 * 4, 5)
    with pytest.raises(InputError, match=r"'fc.weight' is now \[5, 64\]"):
        rec.step(["b"])
    with pytest.raises(StoreError, match="stopped at step 1"):
        rec.step(["c"])
    rec.close()
