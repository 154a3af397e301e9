"""Sealed training files and chunk ciphers (mlflow_amnesia.crypto, mlflow_amnesia.locations)."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch

from mlflow_amnesia import crypto
from mlflow_amnesia.errors import RecordKeyError, StoreError
from mlflow_amnesia.keys import key_id
from mlflow_amnesia.mlflow.runs import load_array, load_state, save_array, save_state

KEY, OTHER = bytes(range(32)), bytes(32)


def test_training_files_are_sealed_and_round_trip_with_the_key(tmp_path):
    state = {"w": torch.arange(6.0).reshape(2, 3), "n": torch.tensor(3)}
    order = np.arange(12, dtype=np.int32).reshape(2, 6)
    save_state(f"{tmp_path}/initial_state.pt", state, key=KEY)
    save_array(f"{tmp_path}/batch_order.npy", order, key=KEY)
    for name in ("initial_state.pt", "batch_order.npy"):
        raw = (tmp_path / name).read_bytes()
        assert crypto.is_sealed(raw)
        with pytest.raises(Exception):
            torch.load(io.BytesIO(raw), weights_only=True)
        with pytest.raises(Exception):
            np.load(io.BytesIO(raw), allow_pickle=False)
        head = json.loads(raw[16:16 + int.from_bytes(raw[12:16], "little")])
        assert head["role"] == name and head["key_id"] == key_id(KEY) and head["scheme"] == crypto.SCHEME
    got = load_state(f"{tmp_path}/initial_state.pt", key=KEY)
    assert torch.equal(got["w"], state["w"]) and int(got["n"]) == 3
    np.testing.assert_array_equal(load_array(f"{tmp_path}/batch_order.npy", key=KEY), order)


def test_a_missing_or_wrong_key_names_both_key_ids(tmp_path):
    url = f"{tmp_path}/optimizer_state.pt"
    save_state(url, {"m": torch.ones(3)}, key=KEY)
    with pytest.raises(RecordKeyError, match=f"{url} is encrypted under the record key with id {key_id(KEY)} and no key"):
        load_state(url)
    with pytest.raises(RecordKeyError, match=f"id {key_id(KEY)}, but the key given has id {key_id(OTHER)}"):
        load_state(url, key=OTHER)


def test_a_swapped_renamed_truncated_or_altered_file_is_refused(tmp_path):
    save_state(f"{tmp_path}/initial_state.pt", {"w": torch.ones(3)}, key=KEY)
    raw = (tmp_path / "initial_state.pt").read_bytes()
    (tmp_path / "optimizer_state.pt").write_bytes(raw)  # a file put in another role's place
    with pytest.raises(StoreError, match="holds a phase's initial_state.pt, not its optimizer_state.pt"):
        load_state(f"{tmp_path}/optimizer_state.pt", key=KEY)
    for bad in (raw[:-1], raw[:-20], raw[:-1] + bytes([raw[-1] ^ 1]), raw[:40]):
        (tmp_path / "initial_state.pt").write_bytes(bad)
        with pytest.raises(StoreError, match="damaged or was altered"):
            load_state(f"{tmp_path}/initial_state.pt", key=KEY)


def test_files_in_clear_of_older_versions_still_load(tmp_path):
    save_state(f"{tmp_path}/initial_state.pt", {"w": torch.ones(2)}, key=None)
    save_array(f"{tmp_path}/batch_order.npy", np.arange(4), key=None)
    assert torch.load(tmp_path / "initial_state.pt", weights_only=True)["w"].tolist() == [1.0, 1.0]
    assert load_state(f"{tmp_path}/initial_state.pt", key=KEY)["w"].tolist() == [1.0, 1.0]
    np.testing.assert_array_equal(load_array(f"{tmp_path}/batch_order.npy"), np.arange(4))


def test_a_file_of_many_segments_cannot_be_cut_at_a_segment_boundary(monkeypatch):
    monkeypatch.setattr(crypto, "_SEGMENT", 100)
    data = bytes(range(256)) * 3  # 8 segments of 100 bytes
    sealed = crypto.seal_file(data, KEY, "x.pt")
    assert crypto.open_file(sealed, KEY, "x.pt", "x") == data
    head = len(sealed) - 8 * 16 - len(data)
    for cut in (head + 116, head + 7 * 116):  # whole segments dropped at the end
        with pytest.raises(StoreError, match="authentication failed"):
            crypto.open_file(sealed[:cut], KEY, "x.pt", "x")
    assert crypto.open_file(crypto.seal_file(b"", KEY, "x.pt"), KEY, "x.pt", "x") == b""
    assert crypto.seal_file(data, KEY, "x.pt") != sealed  # a fresh salt and nonce every time


def test_a_chunk_cipher_binds_store_step_and_part():
    salt = crypto.new_salt()
    c = crypto.ChunkCipher(KEY, salt)
    sealed = c.seal(3, 1, b"payload")
    assert c.open(3, 1, sealed) == b"payload" and b"payload" not in sealed
    for other in (lambda: c.open(4, 1, sealed), lambda: c.open(3, 0, sealed),
                  lambda: crypto.ChunkCipher(KEY, crypto.new_salt()).open(3, 1, sealed),
                  lambda: crypto.ChunkCipher(OTHER, salt).open(3, 1, sealed)):
        with pytest.raises(crypto.InvalidTag):
            other()
