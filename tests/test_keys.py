"""The record-hashing key: sources, creation, permissions, and the hashes it defines."""

from __future__ import annotations

import hashlib
import hmac
import multiprocessing
import os
import stat
from pathlib import Path

import numpy as np
import pytest

from mlflow_amnesia.errors import InputError, RecordKeyError
from mlflow_amnesia.keys import ENV_VAR, hash_ids, hash_request, key_id, key_path, load_key

KEY = bytes(range(32))


@pytest.fixture
def no_env(monkeypatch):
    """No key in the environment: the key file is the source (XDG_CONFIG_HOME is per test)."""
    monkeypatch.delenv(ENV_VAR, raising=False)
    return key_path()


def test_key_path_follows_xdg_config_home(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "cfg"))
    assert key_path() == tmp_path / "cfg" / "mlflow-amnesia" / "key"
    monkeypatch.delenv("XDG_CONFIG_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert key_path() == tmp_path / "home" / ".config" / "mlflow-amnesia" / "key"
    monkeypatch.setenv("XDG_CONFIG_HOME", "relative/dir")  # XDG: relative values are ignored
    assert key_path() == tmp_path / "home" / ".config" / "mlflow-amnesia" / "key"


def test_key_created_once_with_0600_and_reused(no_env):
    path = no_env
    assert not path.exists()
    key = load_key(create=True)
    assert len(key) == 32
    assert path.read_text() == key.hex() + "\n"  # hex text: usable as MLFLOW_AMNESIA_KEY as is
    if os.name != "nt":
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert load_key(create=True) == key
    assert load_key() == key
    assert [p.name for p in path.parent.iterdir()] == ["key"]  # no temp files left behind


def test_missing_key_without_create_names_the_file(no_env):
    with pytest.raises(RecordKeyError) as e:
        load_key()
    assert str(no_env) in str(e.value) and ENV_VAR in str(e.value)
    assert not no_env.exists()


def test_env_var_wins_over_key_file(no_env, monkeypatch):
    file_key = load_key(create=True)
    monkeypatch.setenv(ENV_VAR, KEY.hex().upper())
    assert load_key() == KEY != file_key
    monkeypatch.setenv(ENV_VAR, "  ")  # blank counts as unset
    assert load_key() == file_key


@pytest.mark.parametrize("value", ["abc", "zz" * 32, "11" * 31, "11" * 33])
def test_malformed_env_var_is_named(monkeypatch, value):
    monkeypatch.setenv(ENV_VAR, value)
    with pytest.raises(RecordKeyError) as e:
        load_key(create=True)
    msg = str(e.value)
    assert ENV_VAR in msg and "64 hex" in msg
    assert value not in msg or len(value) < 8  # never echo (part of) a secret back


def test_malformed_key_file_is_named_and_kept(no_env):
    no_env.parent.mkdir(parents=True)
    no_env.write_text("not a key\n")
    with pytest.raises(RecordKeyError) as e:
        load_key(create=True)
    assert str(no_env) in str(e.value) and "backup" in str(e.value)
    assert no_env.read_text() == "not a key\n"  # create=True never overwrites an existing file


@pytest.mark.skipif(os.name == "nt", reason="POSIX permissions")
def test_key_file_readable_by_others_warns(no_env):
    key = load_key(create=True)
    no_env.chmod(0o644)
    with pytest.warns(UserWarning, match="chmod 600"):
        assert load_key() == key


def _create_and_report(barrier, queue):
    barrier.wait()
    queue.put(load_key(create=True).hex())


@pytest.mark.skipif("fork" not in multiprocessing.get_all_start_methods(), reason="needs fork")
def test_concurrent_creation_yields_one_key(no_env):
    ctx = multiprocessing.get_context("fork")
    n = 6
    barrier, queue = ctx.Barrier(n), ctx.Queue()
    procs = [ctx.Process(target=_create_and_report, args=(barrier, queue)) for _ in range(n)]
    for p in procs:
        p.start()
    keys = [queue.get(timeout=60) for _ in range(n)]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    assert len(set(keys)) == 1
    assert load_key().hex() == keys[0]
    assert [p.name for p in no_env.parent.iterdir()] == ["key"]


def test_key_id_is_the_documented_fingerprint():
    assert key_id(KEY) == hashlib.sha256(b"mlflow-amnesia key id" + KEY).digest()[:8].hex()
    assert len(key_id(KEY)) == 16
    assert key_id(KEY) != key_id(bytes(32))


def test_hash_ids_is_truncated_hmac_sha256():
    ids = ["digits:17", "customer:alice@example.com", "ünïcode:é", ""]
    h = hash_ids(ids, KEY)
    assert h.dtype == np.uint8 and h.shape == (4, 16)
    for row, rid in zip(h, ids):
        assert row.tobytes() == hmac.new(KEY, rid.encode("utf-8"), hashlib.sha256).digest()[:16]
    assert hash_ids([], KEY).shape == (0, 16)
    assert not np.array_equal(hash_ids(ids, bytes(32)), h)  # keyed


def test_hash_ids_rejects_bad_input():
    with pytest.raises(InputError, match="strings"):
        hash_ids([17], KEY)
    with pytest.raises(InputError, match="UTF-8"):
        hash_ids(["bad\ud800"], KEY)
    with pytest.raises(RecordKeyError, match="32 bytes"):
        hash_ids(["a"], b"short")


def test_order_key_is_a_domain_separated_hmac():
    from mlflow_amnesia.keys import order_key

    k = bytes(range(32))
    want = hmac.new(k, b"\xffmlflow-amnesia epoch order v2\x00", hashlib.sha256).digest()
    assert order_key(k) == want and len(want) == 32 and order_key(bytes(32)) != want
    assert want[:16] not in hash_ids(["mlflow-amnesia epoch order v2"], k).tobytes()


def test_hash_request_is_a_set_fingerprint_separate_from_record_hashes():
    r = hash_request(["b", "a", "a"], KEY)
    assert len(r) == 64 and int(r, 16) >= 0
    assert r == hash_request(["a", "b"], KEY)
    assert r != hash_request(["a", "b"], bytes(32))
    assert r != hash_request(["a"], KEY)
    assert hash_request(["a,b"], KEY) != hash_request(["a", "b"], KEY)  # length-prefixed, unambiguous
    one = hash_request(["a"], KEY)
    assert one != hmac.new(KEY, b"a", hashlib.sha256).hexdigest()
    assert hash_ids(["a"], KEY)[0].tobytes().hex() not in one


def test_creator_that_loses_the_race_adopts_the_winners_key(no_env, monkeypatch):
    winner = bytes(range(100, 132))
    real_link = os.link

    def link_after_rival(src, dst):
        Path(dst).write_text(winner.hex() + "\n")  # a rival process got there first
        os.chmod(dst, 0o600)
        return real_link(src, dst)

    monkeypatch.setattr(os, "link", link_after_rival)
    assert load_key(create=True) == winner
    assert no_env.read_text() == winner.hex() + "\n"


def test_creation_without_hard_links_still_makes_a_private_file(no_env, monkeypatch):
    def no_links(src, dst):
        raise PermissionError(1, "hard links not supported")

    monkeypatch.setattr(os, "link", no_links)
    key = load_key(create=True)
    assert load_key() == key
    if os.name != "nt":
        assert stat.S_IMODE(no_env.stat().st_mode) == 0o600
    assert [p.name for p in no_env.parent.iterdir()] == ["key"]
