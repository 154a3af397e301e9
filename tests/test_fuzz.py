"""Property-based tests of the parsers that read what a user or a damaged disk hands us.

Each parser either returns a sound result or raises the package's own error naming the input:
never another exception (a traceback), never a silently wrong answer.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from mlflow_amnesia.errors import AmnesiaError, IndexFormatError, InputError, ManifestFormatError
from mlflow_amnesia.ids import MAX_ID_LEN, parse_ids

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# --------------------------------------------------------------------------------------------
# the ids file


@FUZZ
@given(st.binary(max_size=2000))
@example(b"\xef\xbb\xbfdigits:1\r\ndigits:2\rdigits:3")
@example(b"a\xe2\x80\xa8b\n")  # U+2028 inside an id: part of the id, not a line break
@example(b"\xed\xa0\x80\n")  # an encoded surrogate: not UTF-8
def test_any_bytes_give_ids_or_an_input_error_naming_the_file(data):
    try:
        req = parse_ids(data, source="req.txt")
    except InputError as e:
        assert "req.txt" in str(e)
        return
    assert req.ids and len(set(req.ids)) == len(req.ids)
    for i in req.ids:
        assert i == i.strip() and not i.startswith("#") and 0 < len(i) <= MAX_ID_LEN
        assert not any(ord(c) < 32 for c in i)


_id_chars = st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters="\n\r")
valid_id = st.text(_id_chars, min_size=1, max_size=40).filter(lambda s: s == s.strip() and s and not s.startswith("#"))


@FUZZ
@given(
    ids=st.lists(valid_id, min_size=1, max_size=30),
    eol=st.sampled_from(["\n", "\r\n", "\r"]),
    bom=st.booleans(),
    pad=st.sampled_from(["", " ", "\t", "  "]),
    noise=st.lists(st.sampled_from(["", "   ", "# a comment", "#digits:1"]), max_size=4),
)
def test_written_ids_read_back_in_order_without_duplicates(ids, eol, bom, pad, noise):
    lines = [pad + i + pad for i in ids] + noise
    text = ("\ufeff" if bom else "") + eol.join(lines) + eol
    req = parse_ids(text.encode("utf-8"), source="req.txt")
    unique = list(dict.fromkeys(ids))
    assert req.ids == unique
    assert req.duplicates == len(ids) - len(unique)


@FUZZ
@given(st.text(min_size=1, max_size=60))
def test_an_id_with_control_characters_is_refused_with_its_line(s):
    line = s.replace("\n", " ").replace("\r", " ").replace("\x00", " ")  # NUL: refused as binary, tested above
    assume(any(ord(c) < 32 for c in line.strip()) and not line.strip().startswith("#"))
    with pytest.raises(InputError, match=r"req\.txt line 2: control characters"):
        parse_ids(("digits:1\n" + line + "\n").encode(), source="req.txt")


# --------------------------------------------------------------------------------------------
# the delta-store manifest


_KEY = bytes(range(32))  # the store below is sealed (format 2), as train writes it


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A small real store (3 steps, 2 parts) and its manifest as a dict."""
    from mlflow_amnesia.recording.store import DeltaStore

    url = str(tmp_path_factory.mktemp("fuzz") / "store")
    rng = np.random.default_rng(0)
    layout = [{"name": "w", "shape": [6, 4]}, {"name": "b", "shape": [4]}]
    with DeltaStore.create(url, layout=layout, codec="f32", part_bytes=64, key=_KEY) as st_:
        for step in range(3):
            st_.append(step, {"w": rng.standard_normal((6, 4)).astype(np.float32), "b": np.ones(4, np.float32)})
        manifest = json.loads(st_.manifest_bytes())
    return url, manifest


def _open_and_read(url: str, raw) -> None:
    """What a forget does with a version's copied manifest: open, list, read every step."""
    from mlflow_amnesia.recording.store import DeltaStore

    s = DeltaStore.open(url, manifest=raw, key=_KEY)
    s.layout, s.parts, s.meta, s.purged_steps  # noqa: B018 - properties must not fail either
    for step in s.steps:
        s.read(step)
    s.sum(s.steps)


json_value = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)
_WHERE = {
    "top": ["format", "format_version", "encryption", "codec", "layout", "parts", "part_bytes", "meta", "steps", "created"],
    "encryption": ["scheme", "salt", "key_id"],
    "step": ["step", "chunks", "meta", "purged", "purged_at"],
    "chunk": ["file", "bytes", "raw_bytes", "blake3", "sha256", "tag"],
    "layout": ["name", "shape", "dtype"],
    "codec": ["name", "level", "block"],
}


@st.composite
def mutated_manifest(draw, good):
    m = json.loads(json.dumps(good))
    for _ in range(draw(st.integers(1, 3))):
        where = draw(st.sampled_from(sorted(_WHERE)))
        key = draw(st.sampled_from(_WHERE[where]))
        value = draw(json_value)
        try:
            target = {"top": m, "step": m["steps"][draw(st.integers(0, 2))], "layout": m["layout"][0],
                      "chunk": m["steps"][1]["chunks"][draw(st.integers(0, 1))], "codec": m["codec"],
                      "encryption": m["encryption"]}[where]
            if draw(st.booleans()) or key not in target:
                target[key] = value
            else:
                del target[key]
        except (KeyError, IndexError, TypeError):
            pass  # an earlier mutation already replaced the container
    return m


@settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_a_mutated_manifest_is_read_or_refused_never_misread(store, data):
    url, good = store
    m = data.draw(mutated_manifest(good))
    text = json.dumps(m, allow_nan=True)  # JSON with NaN/Infinity: what a foreign writer may produce
    try:
        _open_and_read(url, text.encode())
    except AmnesiaError:
        return
    # accepted: then every chunk it points at is one of the store's own files, checked by sha256
    for e in m["steps"]:
        if e.get("purged"):
            continue  # a purged step's chunks are never read
        for k, c in enumerate(e["chunks"]):
            assert c["file"] == f"chunks/{e['step']}.{k}.zst"


@FUZZ
@given(st.binary(max_size=400) | st.text(max_size=200).map(str.encode))
@example(b"[" * 100_000)  # nesting deeper than the JSON parser's recursion limit
@example(b'{"format": "mlflow-amnesia/delta-store", "format_version": Infinity}')
def test_arbitrary_bytes_as_a_manifest_are_a_manifest_error(store, raw):
    url, _ = store
    with pytest.raises(ManifestFormatError):
        _open_and_read(url, raw)


def test_a_manifest_cannot_point_a_read_outside_the_store(store, tmp_path):
    url, good = store
    outside = tmp_path / "secret.bin"
    outside.write_bytes(b"x" * 100)
    m = json.loads(json.dumps(good))
    m["steps"][0]["chunks"][0]["file"] = f"../{outside.name}"
    with pytest.raises(ManifestFormatError, match=r"names chunk file '\.\./secret\.bin', expected chunks/0\.0\.zst"):
        _open_and_read(url, json.dumps(m))


# --------------------------------------------------------------------------------------------
# the record index file (already checked field by field in test_index.py; here: any bytes)


@FUZZ
@given(st.binary(max_size=600))
def test_arbitrary_bytes_as_an_index_are_an_index_error(raw):
    from mlflow_amnesia.recording.index import RecordIndex

    with pytest.raises(IndexFormatError):
        RecordIndex.from_bytes(raw, b"k" * 32, name="idx.bin")


@FUZZ
@given(pos=st.integers(0, 10_000), flip=st.integers(1, 255))
def test_a_flipped_byte_in_an_index_is_refused(pos, flip):
    from mlflow_amnesia.recording.index import RecordIndex, RecordIndexBuilder

    key = b"k" * 32
    b = RecordIndexBuilder(key)
    for step in range(5):
        b.add(step, [f"r{(step * 3 + j) % 7}" for j in range(3)])
    data = bytearray(b.build().to_bytes())
    data[pos % len(data)] ^= flip
    with pytest.raises(AmnesiaError):
        RecordIndex.from_bytes(bytes(data), key, name="idx.bin")


_json_value = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=False),
              st.sampled_from([0, 1, 2, 3, 4, 16, 2**31, 2**40, 2**63]), st.text(max_size=8)),
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=6), inner, max_size=3)),
    max_leaves=6,
)
_index_fields = st.sampled_from([
    "version", "key_id", "n_records", "n_steps", "n_entries", "compression", "arrays", "payload_bytes",
    "arrays.0.shape", "arrays.1.shape", "arrays.2.shape", "arrays.3.shape", "arrays.0.size", "arrays.1.offset",
    "arrays.2.dtype", "arrays.3.filters", "arrays.3.name", "arrays.1",
])


@FUZZ
@given(field=_index_fields, value=_json_value)
def test_a_forged_index_header_is_read_or_refused_never_misread(field, value):
    """Any header field set to any JSON value, with both sha256 recomputed (a hostile writer):
    either the same index or IndexFormatError / RecordKeyError, never another exception."""
    import hashlib
    import struct

    from mlflow_amnesia.errors import RecordKeyError
    from mlflow_amnesia.recording.index import RecordIndex, RecordIndexBuilder

    key = b"k" * 32
    b = RecordIndexBuilder(key)
    for step in range(5):
        b.add(step, [f"r{(step * 3 + j) % 7}" for j in range(3)])
    good = b.build()
    data = good.to_bytes()
    hlen = struct.unpack_from("<I", data, 8)[0]
    header = json.loads(data[44 : 44 + hlen])
    *path, last = field.split(".")
    node = header
    for p in path:
        node = node[int(p)] if isinstance(node, list) else node[p]
    if isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value
    hb = json.dumps(header).encode()
    forged = data[:8] + struct.pack("<I", len(hb)) + hashlib.sha256(hb).digest() + hb + data[44 + hlen :]
    try:
        back = RecordIndex.from_bytes(forged, key, name="idx.bin", steps=(0, 4))
    except (IndexFormatError, RecordKeyError) as e:
        assert "idx.bin" in str(e)
        return
    assert back.n_records == good.n_records and np.array_equal(back.steps, good.steps)
    assert np.array_equal(back.hashes, good.hashes) and back.n_entries == good.n_entries


# --------------------------------------------------------------------------------------------
# the files of a model version (amnesia.json, rolled_back.npy, forgotten.npy, the tombstone)

_SEGMENTS = [{"role": "train", "store_url": "/s", "first_step": 0, "last_step": 9}]


def _version_file_parsers():
    from mlflow_amnesia.mlflow import flavor

    return {
        "amnesia.json": lambda raw: flavor.read_info(raw, "data/amnesia.json of m v1"),
        "rolled_back.npy": lambda raw: flavor.read_rolled_back(raw, "data/rolled_back.npy of m v1", _SEGMENTS),
        "forgotten.npy": lambda raw: flavor.read_forgotten(raw, "data/forgotten.npy of m v1"),
    }


@FUZZ
@given(which=st.sampled_from(["amnesia.json", "rolled_back.npy", "forgotten.npy"]), raw=st.binary(max_size=400))
@example(which="rolled_back.npy", raw=b"\x93NUMPY\x01\x00v\x00{'descr': '<i8', 'fortran_order': False, 'shape': (10**12,), }")
def test_arbitrary_bytes_as_a_version_file_are_an_input_error(which, raw):
    from mlflow_amnesia.mlflow import flavor

    try:
        _version_file_parsers()[which](raw)
    except InputError as e:
        assert f"data/{which} of m v1" in str(e) and "\n" not in str(e)
    assert isinstance(flavor.read_tombstone(raw), dict)


@FUZZ
@given(descr=st.sampled_from(["<i8", ">i8", "<i4", "|u1", "<f8", "|O", "<u8", "|b1", "V16"]),
       shape=st.lists(st.integers(0, 2**40), max_size=3).map(tuple), fortran=st.booleans(),
       payload=st.binary(max_size=64))
def test_an_npy_header_is_checked_against_the_file_before_reading(descr, shape, fortran, payload):
    """Any dtype, shape and payload: the right array, or an InputError; never a large allocation
    (a header claiming 2**40 values of a 64-byte file is refused from the header)."""
    import io

    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": descr, "fortran_order": fortran, "shape": shape})
    raw = buf.getvalue() + payload
    for which, parse in _version_file_parsers().items():
        if which == "amnesia.json":
            continue
        try:
            a = parse(raw)
        except InputError as e:
            assert f"data/{which} of m v1" in str(e)
            continue
        if which == "rolled_back.npy":
            assert a.dtype == np.int64 and a.ndim == 1 and ((a >= 0) & (a <= 9)).all()
        else:
            assert a.dtype == np.uint8 and a.ndim == 2 and a.shape[1] == 16


def test_an_npy_header_with_an_impossible_empty_shape_is_an_input_error():
    """An empty array whose other dimensions overflow (0 x 2**30 x 2**30): numpy's reshape refuses
    it with a ValueError, which must reach the user as the file's InputError (found by the fuzz test above)."""
    import io

    from mlflow_amnesia.mlflow import flavor

    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": "<i8", "fortran_order": False, "shape": (0, 2**30, 2**30)})
    with pytest.raises(InputError, match="data/rolled_back.npy of m v1"):
        flavor.read_rolled_back(buf.getvalue(), "data/rolled_back.npy of m v1", _SEGMENTS)
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": "|u1", "fortran_order": False, "shape": (0, 2**40, 16)})
    with pytest.raises(InputError, match="data/forgotten.npy of m v1"):
        flavor.read_forgotten(buf.getvalue(), "data/forgotten.npy of m v1")
