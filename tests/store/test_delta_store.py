"""DeltaStore: exact round trips, rollback, random access, crash safety, integrity, purge."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from pathlib import Path

import fsspec
import numpy as np
import pytest
import torch

from helpers import as_sha256_store
from mlflow_amnesia.errors import ChunkCorruptedError, InputError, ManifestFormatError, RecordKeyError, StoreError
from mlflow_amnesia.recording.store import DeltaStore, PurgedStepsError, UnknownStepsError, get_codec
from mlflow_amnesia.recording.store.codecs import Int8Codec

REPO = Path(__file__).resolve().parents[2]

# Three parts at part_bytes=4000: [w1, b1] (2.6 KB), [w2] (4.8 KB, alone: larger than a part), [b2, bn].
LAYOUT = [
    {"name": "w1", "shape": [16, 40], "dtype": "float32"},
    {"name": "b1", "shape": [16], "dtype": "float32"},
    {"name": "w2", "shape": [30, 40], "dtype": "float32"},
    {"name": "b2", "shape": [30], "dtype": "float32"},
    {"name": "bn.running_var", "shape": [30], "dtype": "float32"},
]
PART_BYTES = 4000
KEY = bytes(range(32))  # the record key the stores here are sealed with (format 2)


def _delta(step: int, scale: float = 1e-3) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1000 + step)
    return {t["name"]: (rng.standard_normal(t["shape"]) * scale).astype(np.float32) for t in LAYOUT}


@pytest.fixture(params=["path", "file", "memory"])
def url(request, tmp_path):
    if request.param == "memory":
        u = f"memory://amnesia-test-{uuid.uuid4().hex}/store"
        yield u
        fsspec.filesystem("memory").rm(u.removeprefix("memory://").split("/")[0], recursive=True)
        return
    path = tmp_path / "store"
    yield str(path) if request.param == "path" else path.as_uri()


def _write(url: str, steps, codec: str = "f32", *, key: bytes | None = KEY, **kw) -> dict[int, dict[str, np.ndarray]]:
    deltas = {s: _delta(s) for s in steps}
    with DeltaStore.create(url, layout=LAYOUT, codec=codec, meta={"optimizer": "SGD"}, part_bytes=PART_BYTES, key=key, **kw) as st:
        for s, d in deltas.items():
            st.append(s, d, meta={"lr": 0.1 / (1 + s)})
    return deltas


def _local(tmp_path: Path) -> str:
    return str(tmp_path / "store")


# ---------------------------------------------------------------- round trips and layout


def test_f32_roundtrip_is_exact(url):
    deltas = _write(url, range(6))
    st = DeltaStore.open(url, key=KEY)
    assert st.steps == list(range(6))
    assert st.codec.name == "f32" and st.meta == {"optimizer": "SGD"} and st.layout == LAYOUT
    assert st.step_meta(3) == {"lr": 0.1 / 4}
    for s, d in deltas.items():
        got = st.read(s)
        assert list(got) == [t["name"] for t in LAYOUT]
        for k in d:
            assert got[k].dtype == np.float32 and got[k].shape == d[k].shape
            np.testing.assert_array_equal(got[k].view(np.uint32), d[k].view(np.uint32))


def test_parts_split_at_tensor_boundaries_and_a_big_tensor_stands_alone(tmp_path):
    _write(_local(tmp_path), range(2))
    st = DeltaStore.open(_local(tmp_path), key=KEY)
    assert st.parts == [(0, 2), (2, 3), (3, 5)]
    assert len(st.chunk_files(1)) == 3
    st.stats.reset()
    st.read(1)
    assert st.stats.chunks_read == 3
    size = st.size([0, 1])
    assert size.raw == 2 * 4 * st.n_values and size.chunks == 6 and 0 < size.stored < size.raw


def test_appends_accept_torch_tensors_and_are_copied(tmp_path):
    st = DeltaStore.create(_local(tmp_path), layout=LAYOUT, codec="f32", key=KEY)
    buf = {k: torch.from_numpy(v.copy()) for k, v in _delta(0).items()}
    st.append(0, buf)
    for t in buf.values():  # the caller reuses its buffers at once
        t.fill_(123.0)
    st.close()
    got = DeltaStore.open(_local(tmp_path), key=KEY).read(0)
    for k, v in _delta(0).items():
        np.testing.assert_array_equal(got[k], v)


def test_append_validates_steps_names_shapes_and_meta(tmp_path):
    st = DeltaStore.create(_local(tmp_path), layout=LAYOUT, codec="f32", key=KEY)
    st.append(5, _delta(5))
    with pytest.raises(InputError, match="step 5 was already recorded"):
        st.append(5, _delta(5))
    with pytest.raises(InputError, match="increase strictly"):
        st.append(4, _delta(4))
    d = _delta(6)
    del d["b1"]
    with pytest.raises(InputError, match="missing: b1"):
        st.append(6, d)
    d = _delta(6)
    d["w1"] = d["w1"].reshape(-1)
    with pytest.raises(InputError, match="'w1' has shape"):
        st.append(6, d)
    with pytest.raises(InputError, match="JSON"):
        st.append(6, _delta(6), meta={"lr": object()})
    with pytest.raises(InputError, match="non-negative int"):
        st.append(-1, _delta(6))
    st.append(6, _delta(6))  # the failed attempts did not consume the step
    st.close()
    assert DeltaStore.open(_local(tmp_path), key=KEY).steps == [5, 6]


def test_create_refuses_an_existing_store_and_open_a_missing_one(tmp_path):
    _write(_local(tmp_path), range(1))
    with pytest.raises(StoreError, match="already exists"):
        DeltaStore.create(_local(tmp_path), layout=LAYOUT, key=KEY)
    with pytest.raises(StoreError, match="manifest.json is missing"):
        DeltaStore.open(str(tmp_path / "nowhere"), key=KEY)
    with pytest.raises(InputError, match="unknown codec"):
        DeltaStore.create(str(tmp_path / "other"), layout=LAYOUT, codec="fp4", key=KEY)


def test_read_only_store_refuses_writes(tmp_path):
    _write(_local(tmp_path), range(2))
    st = DeltaStore.open(_local(tmp_path), key=KEY)
    with pytest.raises(StoreError, match="mode='a'"):
        st.append(2, _delta(2))
    with pytest.raises(StoreError, match="mode='a'"):
        st.purge([0])


def test_resume_appending_after_reopen(tmp_path):
    _write(_local(tmp_path), range(3))
    with DeltaStore.open(_local(tmp_path), mode="a", key=KEY) as st:
        with pytest.raises(InputError, match="already recorded"):
            st.append(2, _delta(2))
        st.append(3, _delta(3))
    st = DeltaStore.open(_local(tmp_path), key=KEY)
    assert st.steps == [0, 1, 2, 3]
    np.testing.assert_array_equal(st.read(3)["w2"], _delta(3)["w2"])


# ---------------------------------------------------------------- background writing


class _GatedInt8(Int8Codec):
    """int8 whose encode waits for a gate: the store's background work made visible."""

    def __init__(self, gate: threading.Event) -> None:
        super().__init__()
        self.gate = gate

    def encode(self, x):
        assert self.gate.wait(10)
        return super().encode(x)


def test_append_returns_before_encoding_and_blocks_at_max_pending(tmp_path):
    gate = threading.Event()
    st = DeltaStore.create(_local(tmp_path), layout=LAYOUT, codec=_GatedInt8(gate), max_pending=2, part_bytes=PART_BYTES, key=KEY)
    st.append(0, _delta(0))  # nothing encoded yet, both return at once
    st.append(1, _delta(1))
    third = threading.Thread(target=st.append, args=(2, _delta(2)))
    third.start()
    third.join(0.5)
    assert third.is_alive(), "a third step in flight with max_pending=2: append must wait"
    gate.set()
    third.join(10)
    assert not third.is_alive()
    st.close()
    assert DeltaStore.open(_local(tmp_path), key=KEY).steps == [0, 1, 2]


def test_background_error_surfaces_on_next_call_and_commits_nothing_after_it(tmp_path):
    st = DeltaStore.create(_local(tmp_path), layout=LAYOUT, codec="int8", part_bytes=PART_BYTES, key=KEY)
    st.append(0, _delta(0))
    st.flush()
    bad = _delta(1)
    bad["w2"][3, 3] = np.nan  # int8 cannot store it; encoding fails in a pool thread
    st.append(1, bad)
    with pytest.raises(StoreError, match="writing step 1") as e:
        st.append(2, _delta(2))  # accepted if the failure is not known yet
        st.flush()
    assert "non-finite" in str(e.value)
    with pytest.raises(StoreError, match="writing step 1"):
        st.append(4, _delta(4))
    with pytest.raises(StoreError, match="writing step 1"):
        st.close()
    st.close()  # idempotent
    assert DeltaStore.open(_local(tmp_path), key=KEY).steps == [0]
    with DeltaStore.open(_local(tmp_path), mode="a", key=KEY) as again:  # resumes after the last committed step
        again.append(1, _delta(1))
    assert DeltaStore.open(_local(tmp_path), key=KEY).steps == [0, 1]


# ---------------------------------------------------------------- sums and rollback


def test_sum_equals_in_memory_sum_and_reads_only_the_chunks_of_s(url):
    deltas = _write(url, range(20), codec="bf16")
    st = DeltaStore.open(url, key=KEY)
    decoded = {s: st.read(s) for s in range(20)}
    rng = np.random.default_rng(0)
    for trial in range(5):
        subset = [int(s) for s in rng.choice(20, size=int(rng.integers(1, 12)), replace=False)]
        order = list(rng.permutation(subset))
        st.stats.reset()
        got = st.sum(order)
        n_chunks = sum(len(st.chunk_files(s)) for s in subset)
        assert st.stats.chunks_read == n_chunks == 3 * len(subset)
        assert st.stats.bytes_read == st.size(subset).stored
        for k in deltas[0]:
            expected = np.zeros(got[k].shape, np.float64)
            for s in sorted(subset):
                expected += decoded[s][k].astype(np.float64)
            assert got[k].dtype == np.float64
            np.testing.assert_array_equal(got[k], expected)
        again = st.sum(sorted(subset, reverse=True), read_ahead=1)
        for k in got:  # the same bits whatever the order and read-ahead
            np.testing.assert_array_equal(again[k], got[k])


def test_sum_of_nothing_is_zero_and_float32_on_request(tmp_path):
    _write(_local(tmp_path), range(3))
    st = DeltaStore.open(_local(tmp_path), key=KEY)
    st.stats.reset()
    z = st.sum([])
    assert st.stats.chunks_read == 0 and all(not v.any() and v.shape == tuple(t["shape"]) for v, t in zip(z.values(), LAYOUT))
    s32 = st.sum([0, 2], dtype=np.float32)
    assert s32["w1"].dtype == np.float32
    np.testing.assert_allclose(s32["w1"], _delta(0)["w1"] + _delta(2)["w1"], rtol=1e-6)


def test_unknown_repeated_and_purged_steps_are_named(tmp_path):
    _write(_local(tmp_path), range(4))
    st = DeltaStore.open(_local(tmp_path), key=KEY)
    with pytest.raises(UnknownStepsError, match=r"2 step\(s\) are not in the delta store .*: 7, 9") as e:
        st.sum([1, 9, 7])
    assert e.value.steps == [7, 9]
    with pytest.raises(UnknownStepsError, match="4"):
        st.read(4)
    with pytest.raises(InputError, match="repeat"):
        st.sum([1, 2, 1])


class _Trajectory:
    """theta_t of a toy run: momentum-correlated updates, like SGD with momentum."""

    def __init__(self, seed: int = 0) -> None:
        self.rng = np.random.default_rng(seed)
        self.theta = {t["name"]: self.rng.standard_normal(t["shape"]).astype(np.float32) * 0.1 for t in LAYOUT}
        self.v = {k: np.zeros_like(v) for k, v in self.theta.items()}

    def step(self) -> dict[str, np.ndarray]:
        for k in self.theta:
            g = self.rng.standard_normal(self.theta[k].shape).astype(np.float32) * 1e-2 + 0.3 * self.theta[k]
            self.v[k] = 0.9 * self.v[k] + g
            self.theta[k] = (self.theta[k] - 0.05 * self.v[k]).astype(np.float32)
        return {k: v.copy() for k, v in self.theta.items()}


def _record(store: DeltaStore, states: list[dict[str, np.ndarray]], *, feedback: bool = True) -> None:
    """The Recorder's error feedback: d_t = quantize(theta_t - r_{t-1}), r_t = r_{t-1} + d_t."""
    q = store.codec.quantize
    r = {k: v.astype(np.float64) for k, v in states[0].items()}
    for t in range(1, len(states)):
        ref = r if feedback else {k: v.astype(np.float64) for k, v in states[t - 1].items()}
        d = {k: q(torch.from_numpy((states[t][k] - ref[k]).astype(np.float32))).numpy() for k in r}
        for k in r:
            r[k] += d[k].astype(np.float64)
        store.append(t, d)
    store.flush()


@pytest.mark.parametrize(
    "codec, bound",
    [
        ("f32", 2.0**-23),  # float32 rounding of theta_T (|theta| < 1): about 1 ulp
        ("bf16", 2.0**-8),  # half an ulp of one step's residual, relative to the largest delta
        ("int8", 1 / 127),  # half a quantisation step of one block, relative to the largest delta
        ("zstd", 2.0**-23),
    ],
)
def test_rolling_back_every_step_with_error_feedback_returns_the_initial_state(tmp_path, codec, bound):
    traj = _Trajectory(seed=1)
    states = [{k: v.copy() for k, v in traj.theta.items()}] + [traj.step() for _ in range(40)]
    with DeltaStore.create(_local(tmp_path), layout=LAYOUT, codec=codec, part_bytes=PART_BYTES, key=KEY) as st:
        _record(st, states)
        total = st.sum(st.steps)
    max_delta = max(np.abs(states[t][k] - states[t - 1][k]).max() for t in range(1, len(states)) for k in total)
    scale = 1.0 if get_codec(codec).lossless else float(max_delta)
    err = max(np.abs(states[-1][k].astype(np.float64) - total[k] - states[0][k]).max() for k in total)
    assert err <= bound * scale, f"{codec}: rollback error {err:.3g} > {bound * scale:.3g}"
    if not get_codec(codec).lossless:  # without feedback the error grows with the number of steps
        with DeltaStore.create(str(tmp_path / "naive"), layout=LAYOUT, codec=codec, part_bytes=PART_BYTES, key=KEY) as naive:
            _record(naive, states, feedback=False)
            t2 = naive.sum(naive.steps)
        naive_err = max(np.abs(states[-1][k].astype(np.float64) - t2[k] - states[0][k]).max() for k in t2)
        assert naive_err > 3 * err


# ---------------------------------------------------------------- integrity


def _chunk_path(store_dir: Path, rel: str) -> Path:
    return store_dir / rel


def test_corrupted_chunk_is_detected_with_step_and_file(tmp_path):
    _write(_local(tmp_path), range(4), codec="int8")
    st = DeltaStore.open(_local(tmp_path), key=KEY)
    rel = st.chunk_files(2)[1]
    p = _chunk_path(tmp_path / "store", rel)
    original = p.read_bytes()
    data = bytearray(original)
    data[len(data) // 2] ^= 0x40
    p.write_bytes(bytes(data))
    # a read checks size and AES-GCM tag, then authenticates under the key (no sha256 on the read path)
    for call in (lambda: st.read(2), lambda: st.sum([0, 2, 3])):
        with pytest.raises(ChunkCorruptedError, match=r"step 2: chunk file .*2\.1\.zst.*fails authentication"):
            call()
    st.read(1)  # other steps are unaffected
    problems = st.verify()
    assert [(pr.step, pr.file) for pr in problems] == [(2, rel)]
    assert "fails its blake3 check" in problems[0].problem  # verify checks the digest first
    with pytest.raises(ChunkCorruptedError, match=r"step 2: chunks/2\.1\.zst"):
        st.verify(raise_errors=True)
    # a store written before the tags (its manifest has none): reads check the digest, as they did
    mpath = tmp_path / "store" / "manifest.json"
    m = json.loads(mpath.read_text())
    for e in m["steps"]:
        for c in e["chunks"]:
            assert len(c.pop("tag")) == 32
    mpath.write_text(json.dumps(m))
    old = DeltaStore.open(_local(tmp_path), key=KEY)
    for call in (lambda: old.read(2), lambda: old.sum([0, 2, 3])):
        with pytest.raises(ChunkCorruptedError, match=r"step 2: chunk file .*2\.1\.zst fails its blake3"):
            call()
    np.testing.assert_array_equal(old.read(1)["w1"], st.read(1)["w1"])
    # and one written before BLAKE3 (format 2, sha256 digests of the same bytes): sha256, as it was
    p.write_bytes(original)  # the digests of the bytes as written
    as_sha256_store(tmp_path / "store", 2)
    p.write_bytes(bytes(data))
    older = DeltaStore.open(_local(tmp_path), key=KEY)
    for call in (lambda: older.read(2), lambda: older.sum([0, 2, 3]), lambda: older.verify(raise_errors=True)):
        with pytest.raises(ChunkCorruptedError, match=r"step 2: chunk.*2\.1\.zst fails its sha256"):
            call()
    np.testing.assert_array_equal(older.read(1)["w1"], st.read(1)["w1"])


def test_a_replaced_tag_is_detected_on_read(tmp_path):
    """A chunk whose last bytes (its AES-GCM tag) differ from the manifest's is refused before decrypting."""
    _write(_local(tmp_path), range(2), codec="int8")
    st = DeltaStore.open(_local(tmp_path), key=KEY)
    p = _chunk_path(tmp_path / "store", st.chunk_files(1)[0])
    data = bytearray(p.read_bytes())
    data[-1] ^= 0x01
    p.write_bytes(bytes(data))
    with pytest.raises(ChunkCorruptedError, match=r"step 1: chunk file .*1\.0\.zst does not end in the AES-GCM tag"):
        st.sum([0, 1])


def test_truncated_and_missing_chunks_are_detected(tmp_path):
    _write(_local(tmp_path), range(4))
    st = DeltaStore.open(_local(tmp_path), key=KEY)
    p = _chunk_path(tmp_path / "store", st.chunk_files(1)[0])
    p.write_bytes(p.read_bytes()[:-10])
    (tmp_path / "store" / st.chunk_files(3)[2]).unlink()
    with pytest.raises(ChunkCorruptedError, match=r"step 1: chunk file .*1\.0\.zst has \d+ bytes, the manifest records"):
        st.read(1)
    with pytest.raises(ChunkCorruptedError, match=r"step 3: chunk file .*3\.2\.zst is missing"):
        st.sum([3])
    assert sorted((pr.step, pr.file) for pr in st.verify()) == [(1, "chunks/1.0.zst"), (3, "chunks/3.2.zst")]


def test_verify_of_a_sound_store_finds_nothing(url):
    _write(url, range(5), codec="bf16")
    assert DeltaStore.open(url, key=KEY).verify() == []


# ---------------------------------------------------------------- manifests


def test_newer_manifest_format_is_refused(tmp_path):
    _write(_local(tmp_path), range(2))
    mpath = tmp_path / "store" / "manifest.json"
    m = json.loads(mpath.read_text())
    m["format_version"] = 99
    mpath.write_text(json.dumps(m))
    with pytest.raises(ManifestFormatError, match="format version 99, newer .* upgrade mlflow-amnesia"):
        DeltaStore.open(_local(tmp_path), key=KEY)
    with pytest.raises(ManifestFormatError, match="newer"):
        DeltaStore.open(_local(tmp_path), manifest=m, key=KEY)


def test_garbled_manifests_are_refused(tmp_path):
    _write(_local(tmp_path), range(2))
    mpath = tmp_path / "store" / "manifest.json"
    good = json.loads(mpath.read_text())
    for bad in ("{not json", json.dumps({"format": "something-else"}), json.dumps({**good, "layout": "w1"}),
                json.dumps({**good, "codec": {"name": "lz4"}})):
        mpath.write_text(bad)
        with pytest.raises(ManifestFormatError):
            DeltaStore.open(_local(tmp_path), key=KEY)


def test_copied_manifest_reads_chunks_from_the_url(url):
    _write(url, range(3))
    with DeltaStore.open(url, mode="a", key=KEY) as st:
        copy = st.manifest_bytes()
        st.append(3, _delta(3))
    assert json.loads(copy)["steps"][-1]["step"] == 2
    old = DeltaStore.open(url, manifest=copy, key=KEY)
    assert old.steps == [0, 1, 2]  # the copy's view, not the store's newer steps
    np.testing.assert_array_equal(old.read(2)["w1"], _delta(2)["w1"])
    assert DeltaStore.open(url, manifest=json.loads(copy), key=KEY).steps == [0, 1, 2]
    with pytest.raises(InputError, match="read-only"):
        DeltaStore.open(url, mode="a", manifest=copy, key=KEY)
    with DeltaStore.open(url, mode="a", key=KEY) as st:
        st.purge([1])
    with pytest.raises(ChunkCorruptedError, match="step 1: chunk file .* is missing. The step may have been purged"):
        old.read(1)


# ---------------------------------------------------------------- sealed chunks (format 2)


def test_a_sealed_store_records_its_scheme_and_reads_only_with_its_key(url):
    from mlflow_amnesia.keys import key_id

    deltas = _write(url, range(4))
    st = DeltaStore.open(url)  # no key: the step table, sizes and meta are readable
    assert st.encrypted and st.key_id == key_id(KEY) and st.steps == [0, 1, 2, 3] and st.step_meta(1) == {"lr": 0.05}
    m = json.loads(st.manifest_bytes())
    assert m["format_version"] == 4 and m["encryption"]["scheme"] == "aes-256-gcm/hkdf-sha256"
    assert m["encryption"]["key_id"] == key_id(KEY) and len(bytes.fromhex(m["encryption"]["salt"])) == 32
    for call in (lambda: st.read(0), lambda: st.sum([0, 1])):
        with pytest.raises(RecordKeyError, match=f"encrypted under the record key with id {key_id(KEY)} and no key was given"):
            call()
    other = bytes(32)
    with pytest.raises(RecordKeyError, match=f"id {key_id(KEY)}, but the key given has id {key_id(other)}"):
        DeltaStore.open(url, key=other)
    with pytest.raises(RecordKeyError, match="no key was given"):
        DeltaStore.open(url, mode="a").append(4, _delta(4))  # never a chunk in clear in a sealed store
    got = DeltaStore.open(url, manifest=m, key=KEY).read(2)
    np.testing.assert_array_equal(got["w2"], deltas[2]["w2"])


def test_sealed_chunks_hold_no_plaintext_and_two_stores_seal_differently(tmp_path):
    from mlflow_amnesia.recording.store import chunk as ds

    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    _write(a, range(2))
    _write(b, range(2))
    plain = str(tmp_path / "plain")
    _write(plain, range(2), key=None)
    for rel in DeltaStore.open(a).chunk_files(0):
        ca, cb, cp = ((Path(d) / rel).read_bytes() for d in (a, b, plain))
        assert ca[:8] == ds._HEAD.pack(ds._MAGIC, 2, 0)[:8] and cp[4:8] == (1).to_bytes(4, "little")
        assert ca != cb and len(ca) == ds._HEAD.size + 12 + len(cp) + 16  # sealed header, nonce, chunk, tag
        assert cp[ds._HEAD.size + 16:ds._HEAD.size + 48] not in ca  # not even a piece of the frames shows


def test_a_chunk_from_another_store_or_step_fails_authentication(tmp_path):
    """Size and digest fixed up in the manifest: only the key-bound associated data catches it."""
    store, donor = tmp_path / "store", tmp_path / "donor"
    _write(str(store), range(3))
    _write(str(donor), range(3))
    mpath = store / "manifest.json"
    m = json.loads(mpath.read_text())

    def swap_in(step: int, data: bytes) -> None:
        import blake3

        c = m["steps"][step]["chunks"][0]
        (store / c["file"]).write_bytes(data)
        c["bytes"], c["blake3"] = len(data), blake3.blake3(data).hexdigest()
        c["tag"] = data[-16:].hex()  # what a reader checks before it authenticates
        mpath.write_text(json.dumps(m))

    swap_in(1, (donor / "chunks" / "1.0.zst").read_bytes())  # same step and part, another store
    with pytest.raises(ChunkCorruptedError, match=r"step 1: chunk file .*1\.0\.zst.*fails authentication"):
        DeltaStore.open(str(store), key=KEY).read(1)
    swap_in(2, (store / "chunks" / "0.0.zst").read_bytes())  # this store, another step
    st = DeltaStore.open(str(store), key=KEY)
    with pytest.raises(ChunkCorruptedError, match="step 2: .*fails authentication"):
        st.sum([2])
    assert {(p.step, "authentication" in p.problem) for p in st.verify()} == {(1, True), (2, True)}
    assert DeltaStore.open(str(store)).verify() == []  # without the key only size and digest can be checked
    np.testing.assert_array_equal(st.read(0)["w1"], _delta(0)["w1"])


def test_verify_and_purge_need_no_key(tmp_path):
    _write(_local(tmp_path), range(4))
    chunk = tmp_path / "store" / "chunks" / "3.1.zst"
    chunk.write_bytes(chunk.read_bytes()[:-1] + b"\0")
    st = DeltaStore.open(_local(tmp_path))
    assert [(p.step, p.file) for p in st.verify()] == [(3, "chunks/3.1.zst")]
    with DeltaStore.open(_local(tmp_path), mode="a") as w:
        assert w.purge([1]) == [1]
    st = DeltaStore.open(_local(tmp_path), key=KEY)
    assert st.purged_steps == [1] and st.encrypted
    np.testing.assert_array_equal(st.read(2)["b2"], _delta(2)["b2"])
    with DeltaStore.open(_local(tmp_path), mode="a", key=KEY) as w:  # appending resumes sealed, with the same salt
        w.append(4, _delta(4))
    np.testing.assert_array_equal(DeltaStore.open(_local(tmp_path), key=KEY).read(4)["w2"], _delta(4)["w2"])


def test_a_store_in_clear_has_no_encryption_entry_and_reads_without_a_key(url):
    deltas = _write(url, range(3), key=None)
    st = DeltaStore.open(url, key=KEY)  # a key is not needed, and ignored
    m = json.loads(st.manifest_bytes())
    assert not st.encrypted and st.key_id is None and m["format_version"] == 4 and "encryption" not in m
    np.testing.assert_array_equal(DeltaStore.open(url).read(1)["w1"], deltas[1]["w1"])


def test_create_needs_the_key_spelt_out(tmp_path):
    with pytest.raises(TypeError, match="key"):
        DeltaStore.create(_local(tmp_path), layout=LAYOUT)


def test_a_manifest_with_a_bad_encryption_entry_is_refused(tmp_path):
    _write(_local(tmp_path), range(1))
    mpath = tmp_path / "store" / "manifest.json"
    good = json.loads(mpath.read_text())
    stripped = {k: v for k, v in good.items() if k != "encryption"}
    bad_entries = [{**stripped, "format_version": 2},  # format 2 is sealed by definition
                   {**good, "encryption": {**good["encryption"], "scheme": "rot13"}},
                   {**good, "encryption": {**good["encryption"], "salt": "abcd"}},
                   {**good, "format_version": 1}]
    for bad in bad_entries:
        mpath.write_text(json.dumps(bad))
        with pytest.raises(ManifestFormatError):
            DeltaStore.open(_local(tmp_path), key=KEY)
    # from format 3 on no "encryption" means a store in clear: its sealed chunks are then refused, never misread
    mpath.write_text(json.dumps(stripped))
    st = DeltaStore.open(_local(tmp_path), key=KEY)
    with pytest.raises(ChunkCorruptedError, match=r"step 0: .*not a version-1 chunk"):
        st.read(0)


# ---------------------------------------------------------------- purge


def test_purge_deletes_chunks_and_later_reads_fail_clearly(url):
    _write(url, range(5))
    fs, root = fsspec.core.url_to_fs(url)
    with DeltaStore.open(url, mode="a", key=KEY) as st:
        files = st.chunk_files(1) + st.chunk_files(3)
        assert st.purge([3, 1]) == [1, 3]
        assert st.purge([1]) == []  # idempotent
        with pytest.raises(UnknownStepsError, match="7"):
            st.purge([7])
        st.append(5, _delta(5))
    for f in files:
        assert not fs.exists(f"{root}/{f}")
    st = DeltaStore.open(url, key=KEY)
    assert st.steps == [0, 2, 4, 5] and st.purged_steps == [1, 3]
    assert st.step_meta(1) == {"lr": 0.1 / 2}
    with pytest.raises(PurgedStepsError, match=r"were purged .*: 1\b"):
        st.read(1)
    with pytest.raises(PurgedStepsError, match=r"1, 3"):
        st.sum([0, 1, 2, 3])
    assert st.verify() == []
    np.testing.assert_array_equal(st.sum([0, 2])["b2"], _delta(0)["b2"].astype(np.float64) + _delta(2)["b2"])


def _chunks_on_disk(url: str) -> list[str]:
    """The chunk files really under chunks/ (listed, not read from any manifest)."""
    fs, root = fsspec.core.url_to_fs(url)
    names = sorted(n.rstrip("/").rsplit("/", 1)[-1] for n in fs.ls(f"{root}/chunks", detail=False))
    return [n for n in names if n.split(".")[0].isdigit() and n.count(".") >= 2 and n.split(".")[1].isdigit()]


def test_a_purge_killed_before_its_deletions_is_finished_by_the_next_purge(url):
    """Manifest first, then the files: a purge stopped in between leaves chunk files of steps
    marked purged. verify() reports them (naming the command that finishes the purge) and any
    later purge() on the store, even of other steps, deletes every one of them."""
    _write(url, range(5))
    with DeltaStore.open(url, mode="a") as st:
        real_rm = st._rm

        def killed(paths):
            raise RuntimeError("killed right after the manifest was written")

        st._rm = killed
        with pytest.raises(RuntimeError, match="killed"):
            st.purge([1])
        st._rm = real_rm
        left = [f.split("/")[-1] for f in st.chunk_files(0)]
        assert {"1.0.zst", "1.1.zst", "1.2.zst"} <= set(_chunks_on_disk(url))
        assert [f for f, _ in DeltaStore.open(url).leftover_files()] == ["chunks/1.0.zst", "chunks/1.1.zst", "chunks/1.2.zst"]
        problems = DeltaStore.open(url).verify()
        assert sorted(pr.file for pr in problems) == ["chunks/1.0.zst", "chunks/1.1.zst", "chunks/1.2.zst"]
        assert all(pr.step == 1 and "mlflow-amnesia purge" in pr.problem for pr in problems), problems
        assert st.purge([3]) == [3]  # another step: the listing, not the manifest, says what is left
    assert not [n for n in _chunks_on_disk(url) if n.split(".")[0] in ("1", "3")]
    assert set(left) <= set(_chunks_on_disk(url))  # the other steps are untouched
    assert DeltaStore.open(url).verify() == [] and DeltaStore.open(url).leftover_files() == []
    with DeltaStore.open(url, mode="a") as st:
        st._rm = lambda paths: None
        st.purge([])  # nothing new to purge, nothing left over: a no-op


def test_a_purge_the_storage_does_not_carry_out_is_an_error_naming_the_files(url, monkeypatch):
    """A file system that accepts a delete and keeps the file (no permission to delete, an object
    lock, a broken fsspec backend) must fail the purge; the listing after it is the proof."""
    _write(url, range(3))
    with DeltaStore.open(url, mode="a") as st:
        monkeypatch.setattr(type(st._fs), "rm_file", lambda self, path: None)
        with pytest.raises(StoreError, match=r"still holds 3 chunk file\(s\) of purged steps.*chunks/2\.0\.zst"):
            st.purge([2])
        monkeypatch.undo()
        st.purge([2])  # the storage deletes again: the same call finishes the purge
    assert [n for n in _chunks_on_disk(url) if n.startswith("2.")] == []


def test_a_copied_manifest_is_checked_against_the_store_own(tmp_path):
    """check_copy: what a model version's manifest copy and the store's own manifest disagree on."""
    url = str(tmp_path / "store")
    _write(url, range(4))
    copy = DeltaStore.open(url).manifest_bytes()
    own = DeltaStore.open(url)
    assert own.check_copy(DeltaStore.open(url, manifest=copy)) == []
    with DeltaStore.open(url, mode="a") as st:
        st.purge([2])
    assert DeltaStore.open(url).check_copy(DeltaStore.open(url, manifest=copy)) == []  # purged later: fine
    m = json.loads(copy)
    m["steps"][1]["chunks"][0]["blake3"] = "0" * 64
    m["steps"].append({**m["steps"][0], "step": 9, "chunks": [{**c, "file": c["file"].replace("0.", "9.", 1)}
                                                              for c in m["steps"][0]["chunks"]]})
    found = DeltaStore.open(url).check_copy(DeltaStore.open(url, manifest=m))
    assert any("step(s) 1 " in f and "digests" in f for f in found), found
    assert any("step(s) 9 " in f and "not in the store" in f for f in found), found
    m = json.loads(copy)
    m["codec"] = {"name": "bf16", "level": m["codec"]["level"]}
    found = DeltaStore.open(url).check_copy(DeltaStore.open(url, manifest=m))
    assert any("codec" in f for f in found), found
    as_sha256_store(tmp_path / "store", 2)  # the store's own manifest as the release before wrote it
    found = DeltaStore.open(url).check_copy(DeltaStore.open(url, manifest=copy))
    assert found == ["chunk digests are sha256 in the store's manifest, blake3 in the copy"], found


# ---------------------------------------------------------------- crash safety


def test_debris_is_ignored_by_readers_and_cleaned_on_append(tmp_path):
    """A step committed only by its marker is picked up; chunks without a marker are debris.

    In clear (format 1): a sealed chunk cannot be moved in from another store (see
    test_a_chunk_from_another_store_or_step_fails_authentication)."""
    store = tmp_path / "store"
    _write(str(store), range(3), key=None)
    # step 3 committed by marker only (the writer died before consolidating the manifest)
    donor = tmp_path / "donor"
    with DeltaStore.create(str(donor), layout=LAYOUT, codec="f32", part_bytes=PART_BYTES, key=None) as d:
        d.append(3, _delta(3), meta={"lr": 0.5})
        entry = json.loads(d.manifest_bytes())["steps"][0]
    for rel in [c["file"] for c in entry["chunks"]]:
        (store / rel).write_bytes((donor / rel).read_bytes())
    (store / "chunks" / "3.json").write_text(json.dumps(entry))
    # step 4: two chunks written, no marker; step 5: a torn marker; a temp file of a manifest write
    (store / "chunks" / "4.0.zst").write_bytes(b"partial")
    (store / "chunks" / "4.1.zst").write_bytes(b"partial too")
    (store / "chunks" / "5.json").write_text('{"step": 5, "chu')
    (store / "manifest.json.tmp-0123").write_text("{")
    (store / "chunks" / "5.0.zst.tmp-77").write_bytes(b"")

    reader = DeltaStore.open(str(store), key=KEY)
    assert reader.steps == [0, 1, 2, 3] and reader.step_meta(3) == {"lr": 0.5}
    np.testing.assert_array_equal(reader.read(3)["w2"], _delta(3)["w2"])
    assert (store / "chunks" / "4.0.zst").exists()  # a reader changes nothing

    with DeltaStore.open(str(store), mode="a", key=KEY) as st:
        left = sorted(p.name for p in (store / "chunks").iterdir())
        assert left == sorted(f"{s}.{p}.zst" for s in range(4) for p in range(3))
        st.append(4, _delta(4))
    st = DeltaStore.open(str(store), key=KEY)
    assert st.steps == [0, 1, 2, 3, 4] and st.verify() == []
    assert [e["step"] for e in json.loads((store / "manifest.json").read_text())["steps"]] == [0, 1, 2, 3, 4]


_CHILD = textwrap.dedent(
    """
    import sys
    import numpy as np
    from mlflow_amnesia.store import DeltaStore

    url = sys.argv[1]
    layout = [{"name": "a", "shape": [400_000], "dtype": "float32"}, {"name": "b", "shape": [300_000], "dtype": "float32"}]

    def delta(step):
        rng = np.random.default_rng(step)
        return {t["name"]: rng.standard_normal(t["shape"]).astype(np.float32) for t in layout}

    st = DeltaStore.create(url, layout=layout, codec="f32", part_bytes=1_000_000, threads=2, max_pending=3, key=bytes(range(32)))
    for step in range(10_000):
        st.append(step, delta(step), meta={"step": step})
        if step % 4 == 3:
            st.flush()
            print("flushed", step, flush=True)
    """
)


@pytest.mark.slow
def test_sigkill_mid_write_leaves_committed_steps_and_appending_resumes(tmp_path):
    url = str(tmp_path / "store")
    script = tmp_path / "child.py"
    script.write_text(_CHILD)
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.Popen([sys.executable, str(script), url], stdout=subprocess.PIPE, text=True, env=env)
    flushed = -1
    try:
        deadline = time.monotonic() + 60
        while flushed < 11 and time.monotonic() < deadline:
            line = proc.stdout.readline()
            assert line, f"writer exited early with {proc.wait()}"
            flushed = int(line.split()[1])
        time.sleep(0.15)  # let it get into the middle of the next steps' writes
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        proc.stdout.close()
    assert proc.returncode == -signal.SIGKILL and flushed >= 11

    layout_child = {"a": 400_000, "b": 300_000}
    st = DeltaStore.open(url, key=KEY)
    committed = st.steps
    assert committed == list(range(len(committed))) and committed[-1] >= flushed
    for step in committed:
        rng = np.random.default_rng(step)
        got = st.read(step)
        for name, n in layout_child.items():
            np.testing.assert_array_equal(got[name], rng.standard_normal(n).astype(np.float32))
        assert st.step_meta(step) == {"step": step}

    nxt = committed[-1] + 1
    with DeltaStore.open(url, mode="a", key=KEY) as st:
        names = {p.name for p in (tmp_path / "store" / "chunks").iterdir()}
        assert names == {f"{s}.{p}.zst" for s in committed for p in range(2)}  # debris and markers gone
        st.append(nxt, {n: np.full(k, 1.5, np.float32) for n, k in layout_child.items()})
    st = DeltaStore.open(url, key=KEY)
    assert st.steps == committed + [nxt] and st.verify() == []
    np.testing.assert_array_equal(st.sum([nxt, 0])["a"], 1.5 + st.read(0)["a"].astype(np.float64))
