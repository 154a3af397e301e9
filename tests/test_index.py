"""RecordIndex / RecordIndexBuilder: answers against a brute-force reference, the file format,
its integrity checks, the key check, that no id is ever written, and memory at scale."""

from __future__ import annotations

import hashlib
import json
import struct
import time
import tracemalloc

import numpy as np
import pytest
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mlflow_amnesia.errors import InputError, RecordKeyError, UnknownRecordsError
from mlflow_amnesia.recording.index import FORMAT_VERSION, IndexFormatError, RecordIndex, RecordIndexBuilder
from mlflow_amnesia.keys import hash_ids, key_id

KEY = bytes(range(32))
OTHER_KEY = bytes(range(1, 33))


def _small() -> RecordIndex:
    b = RecordIndexBuilder(KEY)
    b.add(10, ["a", "b", "a"])  # a repeat within a batch counts once
    b.add(3, ["c", "b"])  # steps need not arrive in order
    b.add(11, [])
    b.add(40, ["d"])
    return b.build()


def _reference(batches: dict[int, list[str]], query: list[str]) -> list[int]:
    q = set(query)
    return sorted(s for s, ids in batches.items() if q & set(ids))


def test_small_index_answers():
    idx = _small()
    assert (idx.n_records, idx.n_steps, idx.n_entries) == (4, 4, 5)
    assert idx.key_id == key_id(KEY)
    assert idx.steps.tolist() == [3, 10, 11, 40] and idx.steps.dtype == np.int64
    assert idx.steps_for(["b"]).tolist() == [3, 10]
    assert idx.steps_for(["a", "d", "a"]).tolist() == [10, 40]
    assert idx.steps_for([]).tolist() == []
    assert idx.steps_for(["c"]).dtype == np.int64
    assert idx.contains(["a", "zzz", "d"]).tolist() == [True, False, True]
    h = idx.records_in_step(10)
    assert h.shape == (2, 16) and h.dtype == np.uint8
    assert sorted(r.tobytes() for r in h) == sorted(r.tobytes() for r in hash_ids(["a", "b"], KEY))
    assert idx.records_in_step(11).shape == (0, 16)
    assert idx.steps_for_hashes(hash_ids(["c"], KEY)).tolist() == [3]
    assert np.array_equal(idx.hashes_of(["a"]), hash_ids(["a"], KEY))
    assert idx.step_share(["b"]) == 0.5
    assert idx.share([3, 40, 40]) == 0.5
    hb = idx.hashes.tolist()
    assert hb == sorted(hb)  # sorted bytewise


def test_arrays_are_read_only():
    idx = _small()
    with pytest.raises(ValueError):
        idx.steps[0] = 1
    with pytest.raises(ValueError):
        idx.hashes[0, 0] = 1


def test_unknown_ids_are_named():
    idx = _small()
    with pytest.raises(UnknownRecordsError) as e:
        idx.steps_for(["a", "customer:bob", "ghost", "customer:bob"])
    assert e.value.unknown == ["customer:bob", "ghost"]
    assert "'customer:bob'" in str(e.value) and "'ghost'" in str(e.value) and "2 of 3" in str(e.value)
    assert idx.steps_for(["a", "ghost"], strict=False).tolist() == [10]
    with pytest.raises(UnknownRecordsError) as e:
        idx.steps_for_hashes(hash_ids(["ghost"], KEY))
    assert e.value.unknown == [hash_ids(["ghost"], KEY)[0].tobytes().hex()]


def test_unknown_steps_are_named():
    idx = _small()
    with pytest.raises(InputError, match=r"step 4 is not in the record index \(it holds 4 steps, 3\.\.40\)"):
        idx.records_in_step(4)
    with pytest.raises(InputError, match="99"):
        idx.share([3, 99])


def test_builder_rejects_bad_steps_and_positions():
    b = RecordIndexBuilder(KEY)
    b.add(5, ["a"])
    b.add(2, ["a"])
    with pytest.raises(InputError, match="step 5 was already added"):
        b.add(5, ["b"])
    with pytest.raises(InputError, match="step 2 was already added"):
        b.add(2, ["b"])
    with pytest.raises(InputError, match="integer"):
        b.add(1.5, ["b"])  # type: ignore[arg-type]
    with pytest.raises(InputError, match="out of range"):
        b.add(-1, ["b"])
    with pytest.raises(InputError, match="set_records"):
        b.add_positions(7, [0])
    with pytest.raises(InputError, match="before any add"):
        b.set_records(["a", "b"])
    assert b.build().n_entries == 2  # the rejected calls changed nothing

    b = RecordIndexBuilder(KEY)
    with pytest.raises(InputError, match="'dup'"):
        b.set_records(["x", "dup", "y", "dup"])
    b.set_records(["x", "y", "z"])
    with pytest.raises(InputError, match="step 0: position 3 is outside the 3 records"):
        b.add_positions(0, [0, 3])
    with pytest.raises(InputError, match="integer"):
        b.add_positions(0, [0.5])


def test_declared_records_never_seen_have_no_steps():
    b = RecordIndexBuilder(KEY)
    b.set_records(["r0", "r1", "r2"])
    b.add_positions(0, np.array([0, 2, 2]))
    b.add(1, ["r2", "new"])  # an id outside the declared set is simply a new record
    idx = b.build()
    assert idx.n_records == 4 and idx.n_entries == 4
    assert idx.steps_for(["r1"]).tolist() == []  # in the data set, never in a batch: nothing to roll back
    assert idx.steps_for(["r2"]).tolist() == [0, 1]
    assert idx.steps_for(["new"]).tolist() == [1]


@st.composite
def _batches(draw):
    universe = [f"rec:{i}" for i in range(draw(st.integers(1, 40)))]
    steps = draw(st.lists(st.integers(0, 10_000), min_size=0, max_size=30, unique=True))
    batches = {s: draw(st.lists(st.sampled_from(universe), max_size=12)) for s in steps}
    query = draw(st.lists(st.sampled_from(universe), max_size=8))
    return universe, batches, query


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_batches(), st.booleans())
def test_matches_brute_force_reference(case, positional):
    universe, batches, query = case
    b = RecordIndexBuilder(KEY)
    if positional:
        b.set_records(universe)
        pos = {rid: i for i, rid in enumerate(universe)}
        for s, ids in batches.items():  # dict order: steps arrive unsorted
            b.add_positions(s, [pos[i] for i in ids])
        seen = universe
    else:
        for s, ids in batches.items():
            b.add(s, ids)
        seen = sorted({i for ids in batches.values() for i in ids})
    built = b.build()
    for idx in (built, RecordIndex.from_bytes(built.to_bytes(), KEY),
                RecordIndex.from_bytes(built.to_bytes(compress=False), KEY)):
        assert idx.n_records == len(seen)
        assert idx.n_steps == len(batches)
        assert idx.n_entries == sum(len(set(ids)) for ids in batches.values())
        assert idx.steps.tolist() == sorted(batches)
        q = [i for i in query if i in set(seen)]
        assert idx.steps_for(q).tolist() == _reference(batches, q)
        for rid in seen:
            assert idx.steps_for([rid]).tolist() == _reference(batches, [rid])
        for s, ids in batches.items():
            got = sorted(r.tobytes() for r in idx.records_in_step(s))
            assert got == sorted(r.tobytes() for r in hash_ids(sorted(set(ids)), KEY))


def test_add_and_add_positions_build_identical_files():
    # 150,000 records through add() also exercises the builder's hash-table merges.
    n, batch = 150_000, 500
    ids = [f"user:{i}" for i in range(n)]
    rng = np.random.default_rng(0)
    orders = [rng.permutation(n) for _ in range(2)]
    a, p = RecordIndexBuilder(KEY), RecordIndexBuilder(KEY)
    p.set_records(ids)
    batches = [order[s : s + batch] for order in orders for s in range(0, n, batch)]
    for step, sel in enumerate(batches):
        a.add(step, [ids[i] for i in sel])
        p.add_positions(step, sel)
    ia, ip = a.build(), p.build()
    assert ia.to_bytes() == ip.to_bytes()
    probe = rng.choice(n, 50, replace=False)
    expect = [step for step, sel in enumerate(batches) if np.isin(sel, probe).any()]
    assert ia.steps_for([ids[i] for i in probe]).tolist() == expect


def test_hashes_sharing_their_first_8_bytes_are_told_apart():
    # Two records whose keyed hashes collide on the first 64 bits (p ~ n^2 / 2^65, so forced here).
    h = np.zeros((3, 16), np.uint8)
    h[:, 0] = [1, 1, 2]
    h[1, 15] = 7
    idx = RecordIndex(KEY, h, np.array([0, 1], np.int64), np.array([0, 1, 2, 3]), np.array([0, 1, 0], np.int32))
    assert idx.steps_for_hashes(h[[1]]).tolist() == [1]
    assert idx.steps_for_hashes(h[[0]]).tolist() == [0]
    q = h[[1]].copy()
    q[0, 15] = 8
    assert idx.steps_for_hashes(q, strict=False).tolist() == []
    assert RecordIndex.from_bytes(idx.to_bytes(), KEY).steps_for_hashes(h[[1]]).tolist() == [1]


# ----------------------------------------------------------------------------- files


def test_save_load_round_trip_local_and_fsspec(tmp_path):
    idx = _small()
    path = tmp_path / "sub" / "record_index.bin"
    idx.save(str(path))
    idx.save(str(path))  # overwriting is fine
    assert [p.name for p in path.parent.iterdir()] == ["record_index.bin"]  # no temp debris
    back = RecordIndex.load(str(path), KEY)
    assert back.to_bytes() == idx.to_bytes()
    assert back.steps_for(["b"]).tolist() == [3, 10]
    assert RecordIndex.load(f"file://{path}", KEY).steps_for(["a"]).tolist() == [10]  # URL form
    url = "memory://amnesia-test/index.bin"
    idx.save(url)
    assert RecordIndex.load(url, KEY).steps_for(["d"]).tolist() == [40]


def test_load_uses_the_configured_key(monkeypatch):
    monkeypatch.setenv("MLFLOW_AMNESIA_KEY", KEY.hex())
    data = _small().to_bytes()
    assert RecordIndex.from_bytes(data).steps_for(["c"]).tolist() == [3]


def test_missing_file_is_named(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        RecordIndex.load(str(tmp_path / "nope.bin"), KEY)


def test_wrong_key_is_a_clear_error_not_an_empty_answer(tmp_path):
    path = tmp_path / "idx.bin"
    _small().save(str(path))
    with pytest.raises(RecordKeyError) as e:
        RecordIndex.load(str(path), OTHER_KEY)
    msg = str(e.value)
    assert key_id(KEY) in msg and key_id(OTHER_KEY) in msg
    assert "MLFLOW_AMNESIA_KEY" in msg and str(path) in msg


def _rewrite_header(data: bytes, **changes) -> bytes:
    hlen = struct.unpack_from("<I", data, 8)[0]
    header = json.loads(data[44 : 44 + hlen])
    header.update(changes)
    hb = json.dumps(header).encode()
    return data[:8] + struct.pack("<I", len(hb)) + hashlib.sha256(hb).digest() + hb + data[44 + hlen :]


def test_corrupt_truncated_foreign_and_newer_files_are_named(tmp_path):
    data = _small().to_bytes()
    path = tmp_path / "idx.bin"

    def load_bytes(b: bytes):
        path.write_bytes(b)
        return RecordIndex.load(str(path), KEY)

    flipped = bytearray(data)
    flipped[-3] ^= 0x40
    with pytest.raises(IndexFormatError, match=f"{path}.*corrupt"):
        load_bytes(bytes(flipped))
    flipped = bytearray(data)
    flipped[60] ^= 0x01  # inside the JSON header
    with pytest.raises(IndexFormatError, match="corrupt"):
        load_bytes(bytes(flipped))
    with pytest.raises(IndexFormatError, match="truncated"):
        load_bytes(data[:-10])
    with pytest.raises(IndexFormatError, match="not an mlflow-amnesia record index"):
        load_bytes(b"PK\x03\x04" + data)
    with pytest.raises(IndexFormatError, match=f"format version {FORMAT_VERSION + 1}.*upgrade mlflow-amnesia"):
        load_bytes(_rewrite_header(data, version=FORMAT_VERSION + 1))
    # A well-formed file whose arrays disagree with its counts (a buggy writer) is refused too.
    with pytest.raises(IndexFormatError, match="inconsistent"):
        load_bytes(_rewrite_header(data, n_entries=6))


def _decoded_payload(data: bytes) -> bytes:
    hlen = struct.unpack_from("<I", data, 8)[0]
    header = json.loads(data[44 : 44 + hlen])
    payload = data[44 + hlen :]
    out = b""
    for m in header["arrays"]:
        blob = payload[m["offset"] : m["offset"] + m["size"]]
        out += zstandard.ZstdDecompressor().decompress(blob) if header["compression"] == "zstd" and blob else blob
    return out


def test_record_ids_never_appear_in_the_file(tmp_path):
    ids = ["customer:alice@example.com", "customer:bob@example.com", "mnist:train:123", "digits:17"]
    b = RecordIndexBuilder(KEY)
    for s in range(20):
        b.add(s, ids[s % 4 :] + ids[: s % 3])
    idx = b.build()
    secrets = [i.encode() for i in ids] + [i.encode("utf-16-le") for i in ids] + [b"alice", b"example.com"]
    compressed = idx.to_bytes()
    raw = idx.to_bytes(compress=False)
    path = tmp_path / "idx.bin"
    idx.save(str(path))
    for blob in (compressed, raw, _decoded_payload(compressed), path.read_bytes()):
        for secret in secrets:
            assert secret not in blob
    # The check can see content: the keyed hashes themselves are in the uncompressed payload.
    assert hash_ids(["customer:alice@example.com"], KEY)[0].tobytes() in _decoded_payload(compressed)
    assert _decoded_payload(compressed) == _decoded_payload(raw)


# ----------------------------------------------------------------------------- scale


@pytest.mark.slow
def test_scale_one_million_records_three_epochs():
    n, epochs, batch = 1_000_000, 3, 128
    ids = [f"rec:{i}" for i in range(n)]
    rng = np.random.default_rng(1)
    orders = [rng.permutation(n).astype(np.int32) for _ in range(epochs)]
    tracemalloc.start()
    t0 = time.perf_counter()
    b = RecordIndexBuilder(KEY)
    b.set_records(ids)
    step = 0
    for order in orders:
        for s in range(0, n, batch):
            b.add_positions(step, order[s : s + batch])
            step += 1
    idx = b.build()
    build_s = time.perf_counter() - t0
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    entries = n * epochs
    assert idx.n_records == n and idx.n_entries == entries and idx.n_steps == step
    # Without a Python object per entry: the peak stays within ~48 bytes an entry plus ~64 a record
    # (a dict or list per entry alone would need 70+ bytes an entry).
    assert peak < 48 * entries + 64 * n, f"peak {peak / 2**20:.0f} MiB"

    probe_pos = rng.choice(n, 100, replace=False)
    probe = [ids[i] for i in probe_pos]
    t0 = time.perf_counter()
    got = idx.steps_for(probe)
    query_s = time.perf_counter() - t0
    steps_per_epoch = -(-n // batch)
    expect = sorted({e * steps_per_epoch + int(np.flatnonzero(np.isin(o, [p]))[0]) // batch
                     for e, o in enumerate(orders) for p in probe_pos})
    assert got.tolist() == expect
    assert query_s < 0.1, f"steps_for(100 ids) took {query_s:.3f}s"

    data = idx.to_bytes()
    assert len(data) < 16 * n + 3 * entries  # hashes are incompressible; entries cost < 3 bytes
    t0 = time.perf_counter()
    back = RecordIndex.from_bytes(data, KEY)
    load_s = time.perf_counter() - t0
    assert back.steps_for(probe).tolist() == expect
    print(f"\nscale: {n} records x {epochs} epochs = {entries} entries, {step} steps: build {build_s:.2f}s, "
          f"peak {peak / 2**20:.0f} MiB, file {len(data) / 2**20:.1f} MiB "
          f"({(len(data) - 16 * n) / entries:.2f} B/entry beyond hashes), load {load_s:.2f}s, "
          f"steps_for(100) {query_s * 1e3:.1f} ms")


def test_empty_index_round_trips():
    idx = RecordIndexBuilder(KEY).build()
    back = RecordIndex.from_bytes(idx.to_bytes(), KEY)
    assert (back.n_records, back.n_steps, back.n_entries) == (0, 0, 0)
    assert back.steps_for([]).tolist() == [] and back.step_share([]) == 0.0
    with pytest.raises(UnknownRecordsError):
        back.steps_for(["a"])
    with pytest.raises(InputError, match="no steps"):
        back.records_in_step(0)


@pytest.mark.parametrize("record_steps, problem", [
    ([0, 0, 1], "same step twice"),  # record 0 lists step position 0 twice
    ([0, 1, 2], "outside the step table"),  # only positions 0 and 1 exist
])
def test_structurally_invalid_arrays_are_refused(record_steps, problem):
    h = np.zeros((2, 16), np.uint8)
    h[1, 0] = 1
    bad = RecordIndex(KEY, h, np.array([4, 9], np.int64), np.array([0, 2, 3]), np.array(record_steps, np.int32))
    with pytest.raises(IndexFormatError, match=problem):
        RecordIndex.from_bytes(bad.to_bytes(), KEY, name="bad.bin")


# --------------------------------------------------------------------------------------------
# a forged index (valid checksums, hostile counts) is refused before anything is allocated


def _forge(data: bytes, header: dict | None = None, arrays: dict[str, bytes] | None = None,
           shapes: dict[str, list] | None = None) -> bytes:
    """``data`` rewritten as a hostile writer would: header fields and array blobs replaced,
    offsets, sizes and both sha256 recomputed so that only the counts can give it away."""
    hlen = struct.unpack_from("<I", data, 8)[0]
    h = json.loads(data[44 : 44 + hlen])
    payload = data[44 + hlen :]
    blobs = {m["name"]: payload[m["offset"] : m["offset"] + m["size"]] for m in h["arrays"]}
    blobs.update(arrays or {})
    out = b""
    for m in h["arrays"]:
        m["offset"], m["size"] = len(out), len(blobs[m["name"]])
        if shapes and m["name"] in shapes:
            m["shape"] = shapes[m["name"]]
        out += blobs[m["name"]]
    h.update(payload_bytes=len(out), payload_sha256=hashlib.sha256(out).hexdigest())
    h.update(header or {})
    hb = json.dumps(h).encode()
    return data[:8] + struct.pack("<I", len(hb)) + hashlib.sha256(hb).digest() + hb + out


def _frame_claiming(content_size: int) -> bytes:
    """A zstd frame whose header declares ``content_size`` bytes but that holds one raw byte."""
    block = (1 << 3) | 1  # one raw byte, last block
    return struct.pack("<IBQ", 0xFD2FB528, 0b11100000, content_size) + struct.pack("<I", block)[:3] + b"x"


def _bomb(nbytes: int) -> bytes:
    """A real zstd frame of ``nbytes`` zeros (256 MiB compress to about 8 KB)."""
    return zstandard.ZstdCompressor(level=1).compress(bytes(nbytes))


def _forged_files() -> dict[str, bytes]:
    data = _small().to_bytes()
    n, S, E = 1 << 24, 1 << 40, 1 << 36
    return {
        # 256 MiB of hashes and 64 MiB of counts that really decompress (zeros), in a 20 KB file
        "hashes bomb": _forge(data, {"n_records": n, "n_entries": 0}, {
            "hashes": _bomb(16 * n), "record_counts": _bomb(4 * n), "record_steps": _bomb(0)},
            {"hashes": [n, 16], "record_counts": [n], "record_steps": [0]}),
        # frames whose headers declare 8 TiB of steps / 256 GiB of entries
        "steps claim": _forge(data, {"n_steps": S}, {"steps": _frame_claiming(8 * S)}, {"steps": [S]}),
        "entries claim": _forge(data, {"n_entries": E}, {"record_steps": _frame_claiming(4 * E)}, {"record_steps": [E]}),
        # the sizes agree with the header, the frame inside does not
        "frame larger than its array": _forge(data, None, {"steps": _frame_claiming(1 << 33)}),
        "uncompressed claim": _forge(_small().to_bytes(compress=False), {"n_records": n}, None,
                                     {"hashes": [n, 16], "record_counts": [n]}),
    }


_CHILD = """
import resource, sys
from mlflow_amnesia.errors import IndexFormatError
from mlflow_amnesia.index import RecordIndex
data = open(sys.argv[1], "rb").read()
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
try:
    RecordIndex.from_bytes(data, bytes(range(32)), name=sys.argv[1])
    print("LOADED")
except IndexFormatError as e:
    print("REFUSED", e)
print("GREW_KB", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before)
"""


@pytest.mark.parametrize("case", list(_forged_files()))
def test_a_forged_index_is_refused_with_bounded_memory(case, tmp_path):
    import subprocess
    import sys

    path = tmp_path / "forged.bin"
    path.write_bytes(_forged_files()[case])
    r = subprocess.run([sys.executable, "-c", _CHILD, str(path)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    lines = dict(line.split(" ", 1) for line in r.stdout.splitlines())
    assert "REFUSED" in lines and str(path) in lines["REFUSED"], r.stdout
    grew_mib = int(lines["GREW_KB"]) / 1024
    assert grew_mib < 48, f"{case}: peak RSS grew by {grew_mib:.0f} MiB ({lines['REFUSED']})"


@pytest.mark.parametrize("header, problem", [
    ({"n_records": -1}, "n_records"),
    ({"n_records": 2.5}, "n_records"),
    ({"n_records": True}, "n_records"),
    ({"n_steps": "4"}, "n_steps"),
    ({"n_entries": 10**30}, "n_entries"),
    ({"version": float("inf")}, "unreadable header"),
    ({"arrays": [{"name": "hashes"}]}, "arrays"),
    ({"arrays": "none"}, "arrays"),
    ({"compression": "lz4"}, "compression"),
])
def test_forged_header_fields_are_index_errors(header, problem):
    with pytest.raises(IndexFormatError, match=problem):
        RecordIndex.from_bytes(_forge(_small().to_bytes(), header), KEY, name="forged.bin")


def test_a_record_listing_more_steps_than_exist_is_refused():
    # record "a" claims 5 steps of an index that has 4: the counts are checked before the entries
    data = _small().to_bytes(compress=False)
    idx = RecordIndex.from_bytes(data, KEY)
    counts = np.diff(idx._indptr).astype("<u4")
    counts[0] += 4
    forged = _forge(data, {"n_entries": int(counts.sum())}, {"record_counts": counts.tobytes(),
                    "record_steps": np.zeros(int(counts.sum()), "<u4").tobytes()},
                    {"record_steps": [int(counts.sum())]})
    with pytest.raises(IndexFormatError, match="more steps than the index has"):
        RecordIndex.from_bytes(forged, KEY, name="forged.bin")


def test_the_segment_step_range_is_checked():
    data = _small().to_bytes()  # steps 3, 10, 11, 40
    assert RecordIndex.from_bytes(data, KEY, steps=(3, 40)).n_steps == 4
    with pytest.raises(IndexFormatError, match=r"seg.bin lists 4 steps, but its segment holds 2 \(steps 3\.\.4\)"):
        RecordIndex.from_bytes(data, KEY, name="seg.bin", steps=(3, 4))
    with pytest.raises(IndexFormatError, match=r"seg.bin lists step 40, outside its segment's steps 0\.\.3"):
        RecordIndex.from_bytes(data, KEY, name="seg.bin", steps=(0, 3))
