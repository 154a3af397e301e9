"""Encoded append (issue 20): block codecs quantise into codes + scales on the model's device, the
store only compresses them; the int4 codec; the manifest's format version; sum's bits unchanged."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import blake3
import numpy as np
import pytest
import torch

import mlflow_amnesia.recording.recorder.recorder as recorder_module
from helpers import as_sha256_store
from mlflow_amnesia.errors import InputError, ManifestFormatError
from mlflow_amnesia.index import RecordIndexBuilder
from mlflow_amnesia.recorder import Recorder, state_layout
from mlflow_amnesia.recording.store.codecs import Encoded
from mlflow_amnesia.store import DeltaStore, get_codec

KEY = bytes(range(32))
BLOCK_CODECS = ("int8", "int4")


def _values(n: int, seed: int = 0) -> torch.Tensor:
    """Values over many magnitudes, with a zero block, subnormal and huge blocks."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, generator=g) * torch.logspace(-6, 1, n)
    if n > 5000:
        x[1024:2048] = 0.0
        x[2048:3072] *= 1e-40  # subnormal scales: the clamp and the mask matter here
        x[4096] = 3e38
    return x.float()


def _encode(codec, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    cb, nb = codec.encoded_sizes(x.numel())
    codes = torch.empty(cb, dtype=codec.code_dtype)
    scales = torch.empty(nb, dtype=torch.float32)
    dq = torch.empty_like(x)
    codec.quantize_into(x, codes, scales, dq)
    return codes, scales, dq


@pytest.mark.parametrize("name", BLOCK_CODECS)
@pytest.mark.parametrize("n", [0, 1, 7, 1023, 1024, 4095, 4097, 9001])
def test_quantize_into_is_quantize_and_the_numpy_payload(name, n):
    codec = get_codec(name)
    x = _values(n, seed=n)
    codes, scales, dq = _encode(codec, x)
    ref = codec.quantize(x)
    assert torch.equal(dq.view(torch.int32), ref.view(torch.int32))  # every bit, signed zeros included
    out = np.empty(codec.payload_size(n), dtype=np.uint8)
    codec.write_encoded(Encoded(codes.numpy(), scales.numpy()), n, out)
    assert out.tobytes() == bytes(codec._pack(x.numpy()))


def test_int4_round_trip_error_bound_and_size():
    codec = get_codec("int4")
    x = _values(50_000, seed=3)
    x[4096] = 1.0  # no huge block: bound every block's error
    q = codec.decode(codec.encode(x.numpy()), x.numel())
    assert np.array_equal(q.view(np.int32), codec.quantize(x).numpy().view(np.int32))
    B = codec.block
    nb = math.ceil(x.numel() / B)
    xp = np.zeros(nb * B, dtype=np.float32)
    xp[: x.numel()] = x.numpy()
    err = np.zeros(nb * B, dtype=np.float64)
    err[: x.numel()] = np.abs(x.numpy().astype(np.float64) - q)
    absmax = np.abs(xp).reshape(nb, B).max(axis=1)
    # at most half a step (absmax / 7) per value, plus float32 rounding of the scale and product
    assert (err.reshape(nb, B).max(axis=1) <= absmax / 14 * (1 + 1e-5) + 1e-45).all()
    nibbles = np.frombuffer(bytes(codec._pack(x.numpy())), dtype=np.uint8)[4 * nb :]
    assert ((nibbles & 15) >= 1).all() and ((nibbles >> 4) >= 1).all()  # codes q + 8 in 1..15
    assert codec.payload_size(x.numel()) == 4 * nb + x.numel() // 2


class _FloatOnly:
    """The store seen without ``accepts_encoded``: the Recorder hands it float32 deltas."""

    def __init__(self, store: DeltaStore) -> None:
        self._store = store

    def __getattr__(self, name: str):
        if name == "accepts_encoded":
            raise AttributeError(name)
        return getattr(self._store, name)


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3),
        torch.nn.BatchNorm2d(8),
        torch.nn.ReLU(),
        torch.nn.Flatten(),
        torch.nn.Linear(8 * 10 * 10, 21),  # 16,800 weights: several slices and a partial block
    )


def _record(url: str, codec: str, *, encoded: bool, key: bytes | None, steps: int = 3):
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
    store = DeltaStore.create(url, layout=state_layout(model), codec=codec, key=key)
    rec = Recorder(model, store if encoded else _FloatOnly(store), RecordIndexBuilder(KEY), optimizer=opt)
    assert (rec._encoded is not None) is encoded
    # on CPU the codes are quantised straight into the store's payload buffer (not with the
    # CUDA hand-off's pinned buffers)
    assert rec._reserving is (encoded and not recorder_module._use_pooled_staging(rec.device))
    g = torch.Generator().manual_seed(1)
    for s in range(steps):
        x, y = torch.randn(4, 3, 12, 12, generator=g), torch.randint(0, 21, (4,), generator=g)
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        rec.step([f"r{s}"])
    rec.close()
    store.close()
    return {n: r.clone() for n, r in rec._r.items()}


@pytest.mark.parametrize(
    "codec,pooled,loop", [("int8", False, "torch"), ("int4", False, "torch"), ("int8", True, "torch"), ("int8", False, "compiled"), ("int4", False, "compiled")]
)
def test_encoded_append_stores_the_float_paths_bytes(codec, pooled, loop, tmp_path, monkeypatch):
    # small slices and a small "small tensor" limit so this model takes every path of _encode_on;
    # pooled: the CUDA hand-off (pinned buffers, a hand-off thread), exercised on CPU; compiled:
    # the Recorder's numba loop (fused.encode_block_tensor) instead of torch's
    from mlflow_amnesia.recording.store import fused

    if loop == "compiled":
        _numba_or_skip()
    monkeypatch.setenv(fused.ENV, "1" if loop == "compiled" else "0")
    monkeypatch.setattr(recorder_module, "_SLICE", 4096)
    monkeypatch.setattr(recorder_module, "_SMALL", 600)
    monkeypatch.setattr(recorder_module, "_use_pooled_staging", lambda device: pooled)
    calls = []
    real = fused.encode_block_tensor
    monkeypatch.setattr(fused, "encode_block_tensor", lambda *a, **k: calls.append(1) or real(*a, **k))
    r_enc = _record(str(tmp_path / "enc"), codec, encoded=True, key=None)
    assert bool(calls) is (loop == "compiled")  # the loop this case means ran
    r_flt = _record(str(tmp_path / "flt"), codec, encoded=False, key=None)
    files = sorted(p.relative_to(tmp_path / "enc") for p in (tmp_path / "enc" / "chunks").glob("*.zst"))
    assert len(files) == 3
    for f in files:  # a store in clear: the chunk bytes are deterministic
        assert (tmp_path / "enc" / f).read_bytes() == (tmp_path / "flt" / f).read_bytes(), f
    assert all(torch.equal(r_enc[n], r_flt[n]) for n in r_enc)  # the same trajectory r
    if pooled or codec != "int8":
        return
    # sealed: the same deltas read back (the nonces differ, so the bytes do)
    _record(str(tmp_path / "senc"), codec, encoded=True, key=KEY)
    _record(str(tmp_path / "sflt"), codec, encoded=False, key=KEY)
    a, b = DeltaStore.open(str(tmp_path / "senc"), key=KEY), DeltaStore.open(str(tmp_path / "sflt"), key=KEY)
    for s in range(3):
        da, db = a.read(s), b.read(s)
        assert all(np.array_equal(da[n].view(np.int32), db[n].view(np.int32)) for n in da)


def test_encoded_append_refuses_a_wrong_payload_and_keeps_the_store(tmp_path):
    layout = [{"name": "w", "shape": [5000]}]
    codec = get_codec("int8")
    st = DeltaStore.create(str(tmp_path / "s"), layout=layout, codec="int8", key=KEY)
    codes, scales, _ = _encode(codec, _values(5000))
    with pytest.raises(InputError, match=r"step 0: encoded delta 'w' holds 4999 code bytes"):
        st.append(0, {"w": Encoded(codes.numpy()[:-1], scales.numpy())})
    bad = scales.numpy().copy()
    bad[1] = np.nan
    with pytest.raises(InputError, match=r"step 0: .*non-finite"):
        st.append(0, {"w": Encoded(codes.numpy(), bad)})
    st.append(0, {"w": Encoded(codes.numpy(), scales.numpy())})  # nothing half-written before
    st.close()
    f32 = DeltaStore.create(str(tmp_path / "f"), layout=layout, codec="f32", key=KEY)
    with pytest.raises(InputError, match=r"step 0: .*codec 'f32' takes float32 deltas"):
        f32.append(0, {"w": Encoded(codes.numpy(), scales.numpy())})
    f32.close()
    back = DeltaStore.open(str(tmp_path / "s"), key=KEY)
    assert back.steps == [0] and np.array_equal(back.read(0)["w"], codec.quantize(_values(5000)).numpy())


def test_codes_quantised_into_a_reserved_buffer_are_stored_as_the_copied_ones(tmp_path):
    layout = [{"name": "w", "shape": [5000]}, {"name": "b", "shape": [7]}]
    codec = get_codec("int8")
    xs = {"w": _values(5000), "b": _values(7, seed=3)}
    enc = {n: _encode(codec, x) for n, x in xs.items()}
    a = DeltaStore.create(str(tmp_path / "a"), layout=layout, codec="int8", key=None, max_pending=1)
    b = DeltaStore.create(str(tmp_path / "b"), layout=layout, codec="int8", key=None, max_pending=1)
    for step in range(3):
        a.append(step, {n: Encoded(c.numpy(), sc.numpy()) for n, (c, sc, _) in enc.items()})
        slot = b.reserve_payload()
        delta = {}
        for n, x in xs.items():  # as the Recorder does: quantize_into a view of the store's buffer
            cb, nb = codec.encoded_sizes(x.numel())
            codes = torch.from_numpy(slot.buffer[slot.code_offsets[n] : slot.code_offsets[n] + cb]).view(torch.int8)
            scales = torch.empty(nb)
            codec.quantize_into(x, codes, scales, torch.empty_like(x))
            delta[n] = Encoded(codes.numpy(), scales.numpy())
        b.append(step, delta, slot=slot)
        with pytest.raises(InputError, match=r"already submitted payload slot"):
            b.append(step + 10, delta, slot=slot)  # one slot, one step
    a.close()
    b.close()
    for f in sorted((tmp_path / "a" / "chunks").glob("*.zst")):
        assert f.read_bytes() == (tmp_path / "b" / "chunks" / f.name).read_bytes(), f.name


def test_a_reserved_slot_goes_back_whatever_becomes_of_it(tmp_path):
    layout = [{"name": "w", "shape": [5000]}]
    codec = get_codec("int8")
    codes, scales, _ = _encode(codec, _values(5000))
    st = DeltaStore.create(str(tmp_path / "s"), layout=layout, codec="int8", key=KEY, max_pending=1)
    other = DeltaStore.create(str(tmp_path / "o"), layout=layout, codec="int8", key=KEY)
    bad = scales.numpy().copy()
    bad[0] = np.inf
    # with max_pending=1 a slot that did not come back would block the next reserve forever
    with pytest.raises(InputError, match=r"step 0: .*non-finite"):
        st.append(0, {"w": Encoded(codes.numpy(), bad)}, slot=st.reserve_payload())  # refused: back
    with pytest.raises(InputError, match=r"step 0: delta does not match"):
        st.append(0, {}, slot=st.reserve_payload())
    st.release_payload(st.reserve_payload())  # reserved, never appended
    with pytest.raises(InputError, match=r"another store's payload slot"):
        st.append(0, {"w": Encoded(codes.numpy(), scales.numpy())}, slot=other.reserve_payload())
    st.append(0, {"w": Encoded(codes.numpy(), scales.numpy())}, slot=st.reserve_payload())
    st.close()
    other.close()
    f32 = DeltaStore.create(str(tmp_path / "f"), layout=layout, codec="f32", key=KEY)
    with pytest.raises(InputError, match=r"codec 'f32', which takes float32 deltas"):
        f32.reserve_payload()
    f32.close()
    back = DeltaStore.open(str(tmp_path / "s"), key=KEY)
    assert back.steps == [0] and np.array_equal(back.read(0)["w"], codec.quantize(_values(5000)).numpy())


class _Forwarding:
    """A sink written to the DeltaSink protocol (``append(step, delta, meta=None)``) around a real
    store, forwarding every other attribute (``reserve_payload`` too)."""

    def __init__(self, store: DeltaStore) -> None:
        self._store = store

    def __getattr__(self, name: str):
        return getattr(self._store, name)

    def append(self, step, delta, meta=None):
        self._store.append(step, delta, meta=meta)


def test_a_sink_that_only_forwards_the_store_is_not_lent_its_buffers(tmp_path):
    # the Recorder quantises into reserved buffers only for a DeltaStore itself: a wrapper's
    # append need not take (or pass on) slot=, and a slot it dropped would block the next step
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    store = DeltaStore.create(str(tmp_path / "s"), layout=state_layout(model), codec="int8", key=None, max_pending=1)
    rec = Recorder(model, _Forwarding(store), RecordIndexBuilder(KEY), optimizer=opt)
    assert rec._encoded is not None and not rec._reserving
    for s in range(3):
        opt.zero_grad()
        model(torch.randn(2, 3, 12, 12)).sum().backward()
        opt.step()
        rec.step([f"r{s}"])
    rec.close()
    store.close()
    assert DeltaStore.open(str(tmp_path / "s")).steps == [0, 1, 2]


def _manifest(url: Path) -> dict:
    return json.loads((url / "manifest.json").read_text())


def test_new_stores_are_format_4_with_blake3_and_older_formats_still_read_and_append(tmp_path):
    layout = [{"name": "w", "shape": [3000]}]
    x = {"w": _values(3000).numpy()}
    # what each store would have been before BLAKE3: int4 format 3, sealed int8 2, int8 in clear 1
    for codec, key, older in (("int4", KEY, 3), ("int4", None, 3), ("int8", KEY, 2), ("int8", None, 1)):
        url = tmp_path / f"{codec}-{older}-{key is None}"
        with DeltaStore.create(str(url), layout=layout, codec=codec, key=key) as st:
            st.append(0, x)
        m = _manifest(url)
        assert m["format_version"] == 4 and ("encryption" in m) is (key is not None)
        (c,) = m["steps"][0]["chunks"]
        assert "sha256" not in c and c["blake3"] == blake3.blake3((url / c["file"]).read_bytes()).hexdigest()
        want = get_codec(codec).quantize(torch.from_numpy(x["w"])).numpy()
        assert np.array_equal(DeltaStore.open(str(url), key=key).read(0)["w"], want)
        # the release before's store (its format, sha256 digests): read, verified, appended to in its own format
        as_sha256_store(url, older)
        with DeltaStore.open(str(url), key=key, mode="a") as st:
            assert st.verify() == []
            st.append(1, x)
        m = _manifest(url)
        assert m["format_version"] == older and all("sha256" in c and "blake3" not in c for e in m["steps"] for c in e["chunks"])
        back = DeltaStore.open(str(url), key=key)
        assert back.verify() == [] and np.array_equal(back.read(0)["w"], want) and np.array_equal(back.read(1)["w"], want)
    # refused, not misread: a manifest that names int4 under an older version, and a format-4
    # manifest whose chunks carry sha256 (not blake3)
    for store, version, says in (("int4-3-False", 2, "needs format version 3"), ("int8-2-False", 4, "is malformed .*blake3")):
        url = tmp_path / store
        m = _manifest(url)
        m["format_version"] = version
        (url / "manifest.json").write_text(json.dumps(m))
        with pytest.raises(ManifestFormatError, match=says):
            DeltaStore.open(str(url), key=KEY)


# sum() of this store, float64, as the release before encoded append computed it (sha256 of
# the result's bytes in layout order): the rollback's arithmetic must not change by a bit.
_SUM_BEFORE = {
    "int8": "227ba983490efd42aaf1522990348347cd7241d8574577ad12e5b43cb32f91c9",
    "f32": "c2228524ba7a094858aa1c26ef16c5e0f57d269a9a39c09671988efed88e1f7a",
}


def _numba_or_skip() -> None:
    from mlflow_amnesia.recording.store import fused

    if not fused.available():  # the test extra installs it: CI runs these
        pytest.skip("numba is not installed (pip install -e '.[test]' or '.[fast]'): the compiled rollback loop is not tested")


@pytest.mark.parametrize("codec,loop", [(c, loop) for c in sorted(_SUM_BEFORE) for loop in ("numpy", "compiled")])
def test_sum_results_are_unchanged(codec, loop, tmp_path, monkeypatch):
    from mlflow_amnesia.recording.store import fused

    if loop == "compiled":
        _numba_or_skip()
    monkeypatch.setenv(fused.ENV, "1" if loop == "compiled" else "0")
    calls = []
    real = fused.add_block_payloads
    monkeypatch.setattr(fused, "add_block_payloads", lambda *a, **k: calls.append(1) or real(*a, **k))
    layout = [{"name": "a", "shape": [70_001]}, {"name": "b", "shape": [3, 5]}, {"name": "c", "shape": [40_000]}]
    rng = np.random.default_rng(7)
    with DeltaStore.create(str(tmp_path / "s"), layout=layout, codec=codec, key=KEY, part_bytes=200_000) as st:
        for s in range(9):
            st.append(s, {t["name"]: (rng.standard_normal(t["shape"]) * 10.0 ** -(s % 4)).astype(np.float32) for t in layout})
    st = DeltaStore.open(str(tmp_path / "s"), key=KEY)
    total = st.sum([8, 0, 3, 5, 1, 6, 2])
    digest = hashlib.sha256(b"".join(np.ascontiguousarray(total[t["name"]]).tobytes() for t in layout)).hexdigest()
    assert digest == _SUM_BEFORE[codec]
    assert bool(calls) is (loop == "compiled" and codec == "int8")  # the loop this case means ran
    one_by_one = {t["name"]: np.zeros(t["shape"]) for t in layout}
    for s in sorted([8, 0, 3, 5, 1, 6, 2]):
        for n, v in st.read(s).items():
            one_by_one[n] += v
    assert all(np.array_equal(total[n], one_by_one[n]) for n in total)


@pytest.mark.parametrize("codec", ["int8", "int4"])
@pytest.mark.parametrize("n", [1, 5, 4096, 70_001, 3 * (1 << 15) + 1023])
def test_the_compiled_rollback_loop_adds_the_numpy_paths_bits(codec, n):
    _numba_or_skip()
    c = get_codec(codec)
    rng = np.random.default_rng(n)
    payloads = [bytes(c._pack((rng.standard_normal(n) * 10.0 ** -(k % 5)).astype(np.float32))) for k in range(7)]
    for dtype in (np.float64, np.float32):  # sum(dtype=np.float32) adds in float32: so does the loop
        start = rng.standard_normal(n).astype(dtype)
        a, b = start.copy(), start.copy()
        c.add_payloads(payloads, n, a, compiled=True)
        c.add_payloads(payloads, n, b)
        assert np.array_equal(a.view(np.uint8), b.view(np.uint8)), (codec, n, dtype)


def test_only_a_long_rollback_takes_the_compiled_loop_unless_asked(monkeypatch):
    from mlflow_amnesia.recording.store import fused

    monkeypatch.delenv(fused.ENV, raising=False)
    monkeypatch.setattr(fused, "available", lambda: True)
    assert not fused.wanted(fused.MIN_WORK - 1) and fused.wanted(fused.MIN_WORK)
    monkeypatch.setenv(fused.ENV, "1")
    assert fused.wanted(1)
    monkeypatch.setenv(fused.ENV, "0")
    assert not fused.wanted(10 * fused.MIN_WORK)
    monkeypatch.setattr(fused, "available", lambda: False)  # numba not installed: numpy, whatever asked
    monkeypatch.setenv(fused.ENV, "1")
    assert not fused.wanted(10 * fused.MIN_WORK)


def test_numba_that_cannot_compile_or_load_falls_back_to_numpy(monkeypatch, tmp_path):
    from mlflow_amnesia.recording.store import fused

    def broken(numba):  # e.g. no writable cache directory, or llvmlite failing to load
        raise RuntimeError("cannot cache function 'add_int8': no locator available")

    monkeypatch.setattr(fused, "_build", broken)
    monkeypatch.setattr(fused, "_kernel", None)
    monkeypatch.setattr(fused, "_encoder", None)
    monkeypatch.setattr(fused, "_tried", False)
    monkeypatch.setattr(fused, "_load_numba", lambda: object())  # "installed"
    monkeypatch.setenv(fused.ENV, "1")
    layout = [{"name": "a", "shape": [5000]}]
    with DeltaStore.create(str(tmp_path / "s"), layout=layout, codec="int8", key=None) as st:
        st.append(0, {"a": _values(5000).numpy()})
    with pytest.warns(RuntimeWarning, match="compiled loops are unavailable .*cannot cache"):
        total = DeltaStore.open(str(tmp_path / "s")).sum([0])
    assert np.array_equal(total["a"], get_codec("int8").quantize(_values(5000)).numpy().astype(np.float64))
    assert not fused.available() and fused._tried  # decided once: not retried every sum


def _recording_step_in_torch(codec, theta: torch.Tensor, r: torch.Tensor, feedback: bool):
    """The Recorder's torch arithmetic for one tensor: codes, scales and the next r."""
    d = (theta.double() - r).float()
    codes, scales, dq = _encode(codec, d)
    r = r + dq.double() if feedback else theta.double()
    return codes.numpy().view(np.uint8), scales.numpy(), r.numpy()


@pytest.mark.parametrize("codec", BLOCK_CODECS)
@pytest.mark.parametrize("n", [0, 1, 2, 7, 1023, 1024, 1025, 4095, 4097, 9001, 70_001])
@pytest.mark.parametrize("theta_dtype", [torch.float32, torch.float64])
def test_the_compiled_recording_loop_gives_the_torch_paths_codes_scales_and_r(codec, n, theta_dtype):
    _numba_or_skip()
    from mlflow_amnesia.recording.store import fused

    c = get_codec(codec)
    for feedback in (True, False):
        for kind in ("mixed", "unchanged", "signed zeros"):
            theta = (_values(n, seed=n) * 10).to(theta_dtype)
            r = theta.double() - _values(n, seed=n + 1).double()  # zero, subnormal and huge blocks
            if kind == "unchanged":  # d = 0: zero scales, +0.0 codes
                r = theta.double().clone()
            elif kind == "signed zeros":
                theta, r = -torch.zeros(n, dtype=theta_dtype), -torch.zeros(n, dtype=torch.float64)
            want = _recording_step_in_torch(c, theta, r, feedback)
            cb, nb = c.encoded_sizes(n)
            codes, scales, r_np = np.full(cb, 0xAB, np.uint8), np.full(nb, np.nan, np.float32), r.numpy().copy()
            scratch = np.empty(c.block + 1, np.float32)
            assert fused.encode_block_tensor(
                theta.numpy(), r_np, codes, scales, scratch, block=c.block, levels=c.levels, bits=c.code_bits, feedback=feedback
            )
            assert codes.tobytes() == want[0].tobytes(), (kind, feedback)
            assert scales.view(np.uint32).tobytes() == want[1].view(np.uint32).tobytes(), (kind, feedback)
            assert r_np.view(np.uint64).tobytes() == want[2].view(np.uint64).tobytes(), (kind, feedback)


def test_the_recorder_takes_the_compiled_loop_for_big_models_or_when_asked(monkeypatch, tmp_path):
    from mlflow_amnesia.recording.store import fused

    monkeypatch.setattr(fused, "available", lambda: True)
    monkeypatch.delenv(fused.ENV, raising=False)
    assert not fused.wanted(fused.MIN_STEP_VALUES - 1, fused.MIN_STEP_VALUES)
    assert fused.wanted(fused.MIN_STEP_VALUES, fused.MIN_STEP_VALUES)

    def recorder(name, env):
        monkeypatch.setenv(fused.ENV, env) if env is not None else monkeypatch.delenv(fused.ENV, raising=False)
        model = _model()
        store = DeltaStore.create(str(tmp_path / name), layout=state_layout(model), codec="int8", key=None)
        return Recorder(model, store, RecordIndexBuilder(KEY))

    assert not recorder("a", None)._compiled  # 16,800 values a step: loading numba would not pay
    assert recorder("b", "1")._compiled and not recorder("c", "0")._compiled
    monkeypatch.setattr(fused, "MIN_STEP_VALUES", 1000)
    assert recorder("d", None)._compiled


def test_a_compiled_recording_loop_that_cannot_compile_falls_back_to_torch(monkeypatch, tmp_path):
    _numba_or_skip()
    from mlflow_amnesia.recording.store import fused

    def refuses(*args):  # numba's typing error comes before any value is written
        raise TypeError("No implementation of function 'encode_blocks' found for signature")

    monkeypatch.setenv(fused.ENV, "1")
    monkeypatch.setattr(fused, "_encoder", refuses)
    monkeypatch.setattr(fused, "_kernel", fused._kernel)  # restored after: _disable clears both
    with pytest.warns(RuntimeWarning, match="compiled loops are unavailable .*No implementation"):
        r_enc = _record(str(tmp_path / "enc"), "int8", encoded=True, key=None)
    monkeypatch.setenv(fused.ENV, "0")
    r_ref = _record(str(tmp_path / "ref"), "int8", encoded=True, key=None)
    assert all(torch.equal(r_enc[n], r_ref[n]) for n in r_enc)
    for f in (tmp_path / "ref" / "chunks").glob("*.zst"):
        assert (tmp_path / "enc" / "chunks" / f.name).read_bytes() == f.read_bytes()
