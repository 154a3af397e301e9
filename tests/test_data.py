"""Data sets: stable ids, idx parsing, torchvision paths, fingerprints, splits, epoch orders."""

from __future__ import annotations

import gzip
import hashlib
import json
import re
import pickle  # only to write CIFAR-100 test files in the publisher's own format (see test_cifar100_*)
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from mlflow_amnesia.learning import data as D
from mlflow_amnesia.errors import InputError, UnknownRecordsError

# ---------------------------------------------------------------------------------------------
# helpers


def write_idx(path: Path, arr: np.ndarray, *, gz: bool | None = None) -> Path:
    """Write ``arr`` (uint8) as an idx file, gzipped when the name ends in .gz."""
    arr = np.ascontiguousarray(arr, dtype=np.uint8)
    payload = struct.pack(">BBBB", 0, 0, 0x08, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.tobytes()
    gz = path.suffix == ".gz" if gz is None else gz
    path.write_bytes(gzip.compress(payload) if gz else payload)
    return path


def make_pair(d: Path, stem: str, n: int, *, seed: int = 0, gz: bool = True, size: int = 28) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    imgs = rng.integers(0, 256, size=(n, size, size), dtype=np.uint8)
    labels = (np.arange(n) % 10).astype(np.uint8)
    ext = ".gz" if gz else ""
    write_idx(d / f"{stem}-images-idx3-ubyte{ext}", imgs)
    write_idx(d / f"{stem}-labels-idx1-ubyte{ext}", labels)
    return imgs, labels


@pytest.fixture(scope="module")
def digits() -> D.Records:
    return D.load_dataset("digits")


# ---------------------------------------------------------------------------------------------
# digits


def test_digits_loads_with_stable_unique_ids(digits):
    again = D.load_dataset("digits")
    assert len(digits) == 1797
    assert digits.ids[0] == "digits:0" and digits.ids[-1] == "digits:1796"
    assert len(set(digits.ids.tolist())) == 1797
    assert np.array_equal(digits.ids, again.ids)
    assert torch.equal(digits.x, again.x) and torch.equal(digits.y, again.y)
    assert digits.x.dtype == torch.float32 and digits.x.shape == (1797, 1, 8, 8)
    assert digits.y.dtype == torch.int64 and set(digits.y.tolist()) == set(range(10))
    assert digits.classes == [str(i) for i in range(10)]
    assert (digits.num_classes, digits.in_channels, digits.image_size) == (10, 1, (8, 8))
    # normalised by the recorded statistics: zero mean, unit std over the whole set
    assert abs(float(digits.x.mean())) < 1e-4 and abs(float(digits.x.std()) - 1) < 1e-3
    assert digits.predefined_split is None


def test_digits_spec_is_json_and_fingerprint_is_pinned(digits):
    spec = json.loads(json.dumps(digits.spec))
    assert spec == digits.spec
    assert spec["spec"] == "digits" and spec["root"] is None and spec["n_records"] == 1797
    assert spec["normalization"]["scale"] == 16.0
    # Pinned: a change of the fingerprint algorithm would orphan every model trained before it.
    assert digits.fingerprint == "sha256:37fe05ac202c2526fd48d78603f55f315601618a9748c511dea64d0054874212"


def test_unknown_spec_names_the_valid_ones():
    with pytest.raises(InputError, match=r"unknown data set 'imagenet'.*digits.*mnist.*cifar100.*idx:<dir>"):
        D.load_dataset("imagenet")


def test_positions_of_ids(digits):
    assert digits.positions_of(["digits:5", "digits:0"]).tolist() == [5, 0]
    with pytest.raises(UnknownRecordsError, match="digits:5000"):
        digits.positions_of(["digits:1", "digits:5000"])


# ---------------------------------------------------------------------------------------------
# splits and orders


def test_split_is_deterministic_disjoint_covering_and_stratified(digits):
    a = D.split(digits, seed=7)
    b = D.split(digits, seed=7)
    assert np.array_equal(a.train, b.train) and np.array_equal(a.holdout, b.holdout)
    assert a.train.dtype == np.int64 and a.holdout.dtype == np.int64
    assert np.all(np.diff(a.train) > 0) and np.all(np.diff(a.holdout) > 0)
    assert np.intersect1d(a.train, a.holdout).size == 0
    assert np.array_equal(np.union1d(a.train, a.holdout), np.arange(1797))
    y = digits.y.numpy()
    for c in range(10):
        n_c = int((y == c).sum())
        assert int((y[a.holdout] == c).sum()) == round(0.2 * n_c)
    other = D.split(digits, seed=8)
    assert not np.array_equal(a.holdout, other.holdout)


def test_split_unstratified_and_fraction_bounds(digits):
    s = D.split(digits, seed=1, holdout_fraction=0.5, stratify=False)
    assert len(s.holdout) == round(0.5 * 1797) and len(s.train) + len(s.holdout) == 1797
    assert len(D.split(digits, seed=1, holdout_fraction=0.0).holdout) == 0
    for bad in (1.0, -0.1):
        with pytest.raises(InputError, match="holdout fraction"):
            D.split(digits, seed=1, holdout_fraction=bad)


def test_split_json_roundtrip_is_compact_and_verified(digits, tmp_path):
    s = D.split(digits, seed=3, holdout_fraction=0.25)
    text = s.to_json()
    assert len(text) < 1000  # a recipe and a checksum, not the index arrays
    back = D.Split.from_json(text, digits)
    assert np.array_equal(back.train, s.train) and np.array_equal(back.holdout, s.holdout)
    assert D.Split.from_json(json.loads(text), digits).to_dict() == s.to_dict()
    # pinned: the split algorithm must not drift between releases
    assert D.split(digits, seed=0).to_dict()["checksum"] == (
        "sha256:5a44be6df57be9c64511460923bc8e234dbeb077be52f3a072185e88e4739200"
    )

    tampered = {**json.loads(text), "checksum": "sha256:" + "0" * 64}
    with pytest.raises(InputError, match="rebuilds to different indices"):
        D.Split.from_json(tampered, digits)

    d = tmp_path / "idx"
    d.mkdir()
    make_pair(d, "t10k", 20)
    with pytest.raises(InputError, match="made on data sha256:"):
        D.Split.from_json(text, D.load_dataset(f"idx:{d}"))
    with pytest.raises(InputError, match="lacks"):
        D.Split.from_json({"seed": 1}, digits)


def test_epoch_order_is_a_pinned_deterministic_permutation():
    o = D.epoch_order(1000, seed=5, epoch=2)
    assert o.dtype == np.int64 and np.array_equal(np.sort(o), np.arange(1000))
    assert np.array_equal(o, D.epoch_order(1000, seed=5, epoch=2))
    assert not np.array_equal(o, D.epoch_order(1000, seed=5, epoch=3))
    assert not np.array_equal(o, D.epoch_order(1000, seed=6, epoch=2))
    # pinned: a retrain in a later release must replay the same batches
    assert D.epoch_order(10, 0, 0).tolist() == [6, 8, 9, 0, 7, 2, 3, 1, 5, 4]
    assert len(D.epoch_order(0, 0, 0)) == 0


def test_keyed_epoch_order_is_pinned_and_cannot_be_recomputed_without_the_key():
    """The order of recorded phases (scheme keyed-v2): a pure function of (key, seed, epoch, n),
    pinned across platforms and releases, unrelated to the public order of the same seed."""
    k, other = bytes(range(32)), bytes(32)
    o = D.epoch_order(1000, seed=5, epoch=2, key=k)
    assert o.dtype == np.int64 and np.array_equal(np.sort(o), np.arange(1000))
    assert np.array_equal(o, D.epoch_order(1000, seed=5, epoch=2, key=k))
    for different in (D.epoch_order(1000, 5, 3, key=k), D.epoch_order(1000, 6, 2, key=k),
                      D.epoch_order(1000, 5, 2, key=other), D.epoch_order(1000, 5, 2)):
        assert not np.array_equal(o, different)
        assert np.mean(o == different) < 0.02  # no more positions in common than two random permutations
    assert not np.array_equal(D.epoch_order(999, 5, 2, key=k), o[o < 999])  # n is an input too
    # pinned (SHAKE-256 keyed with HMAC-SHA256(order_key(k), "0:0:10"), little-endian uint64, stable argsort)
    assert D.epoch_order(10, 0, 0, key=k).tolist() == [1, 5, 8, 6, 4, 9, 0, 3, 7, 2]
    assert len(D.epoch_order(0, 0, 0, key=k)) == 0
    assert D.ORDER_KEYED == "keyed-v2" and D.ORDER_PUBLIC == "public-v1"


def test_batches_cover_the_order():
    order = np.arange(10)[::-1]
    got = list(D.batches(order, 4))
    assert [b.tolist() for b in got] == [[9, 8, 7, 6], [5, 4, 3, 2], [1, 0]]
    assert [len(b) for b in D.batches(order, 4, drop_last=True)] == [4, 4]
    with pytest.raises(InputError, match="batch size"):
        list(D.batches(order, 0))


def test_records_dataset_yields_positions(digits):
    pos = np.array([5, 17, 300])
    ds = D.RecordsDataset(digits, pos)
    assert len(ds) == 3
    i, x, y = ds[1]
    assert i == 17 and torch.equal(x, digits.x[17]) and int(y) == int(digits.y[17])
    idx, xb, yb = next(iter(torch.utils.data.DataLoader(ds, batch_size=3)))
    assert idx.tolist() == [5, 17, 300] and xb.shape == (3, 1, 8, 8) and torch.equal(yb, digits.y[pos])
    with pytest.raises(InputError, match="positions outside"):
        D.RecordsDataset(digits, np.array([1797]))


# ---------------------------------------------------------------------------------------------
# classes


def test_class_records_by_name_and_index(digits):
    by_index = D.class_records(digits, 3)
    assert np.array_equal(by_index, D.class_records(digits, "3"))
    assert np.array_equal(by_index, D.class_records(digits, np.int64(3)))
    assert by_index.dtype == np.int64 and len(by_index) == int((digits.y == 3).sum())
    assert bool((digits.y[by_index] == 3).all())


def test_unknown_class_lists_the_valid_ones(digits):
    with pytest.raises(InputError, match=r"unknown class 'cat'.*0='0'.*9='9'"):
        D.class_records(digits, "cat")
    with pytest.raises(InputError, match="out of range"):
        D.class_records(digits, 10)
    with pytest.raises(InputError, match="index or a class name"):
        D.class_records(digits, True)


# ---------------------------------------------------------------------------------------------
# idx files


def test_idx_real_mnist_t10k(mnist_dir):
    r = D.load_dataset(f"idx:{mnist_dir}")
    assert len(r) == 10000 and r.x.shape == (10000, 1, 28, 28) and r.x.dtype == torch.float32
    assert r.ids[0] == "idx:t10k:0" and r.ids[17] == "idx:t10k:17" and r.ids[-1] == "idx:t10k:9999"
    assert len(set(r.ids.tolist())) == 10000
    assert r.y[:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]  # the canonical first test labels
    assert np.bincount(r.y.numpy()).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    assert r.classes == [str(i) for i in range(10)]
    assert r.spec["root"] == str(Path(mnist_dir).resolve()) and r.spec["parts"][0]["images"] == "t10k-images-idx3-ubyte.gz"
    assert r.predefined_split is None
    s = D.split(r, seed=0)
    assert (len(s.train), len(s.holdout)) == (8000, 2000)
    # the raw pixels come back through the recorded normalisation
    n = r.spec["normalization"]
    raw = D.read_idx(Path(mnist_dir) / "t10k-images-idx3-ubyte.gz")
    back = (r.x[:50, 0] * n["std"][0] + n["mean"][0]) * 255
    assert torch.allclose(back, torch.from_numpy(raw[:50]).float(), atol=1e-3)


def test_idx_train_and_test_stems_form_a_predefined_split(tmp_path):
    tr, _ = make_pair(tmp_path, "train", 30, seed=1)
    make_pair(tmp_path, "t10k", 12, seed=2, gz=False)
    r = D.load_dataset(f"idx:{tmp_path}")
    assert r.ids[0] == "idx:train:0" and r.ids[30] == "idx:t10k:0" and len(r) == 42
    s = D.split(r, seed=9, holdout_fraction=0.5)
    assert s.recipe["method"] == "predefined"
    assert np.array_equal(s.train, np.arange(30)) and np.array_equal(s.holdout, np.arange(30, 42))
    # normalisation statistics come from the training part only
    assert r.spec["normalization"]["mean"][0] == pytest.approx(tr.mean() / 255)
    assert len(D.split(r, seed=9, use_predefined=False).holdout) > 0


@pytest.mark.parametrize(
    "case",
    ["truncated", "bad_magic", "not_gzip", "damaged_gzip", "count_mismatch", "missing_labels", "labels_as_images"],
)
def test_corrupt_idx_files_give_clear_errors(tmp_path, case):
    imgs = np.zeros((5, 28, 28), np.uint8)
    labels = np.arange(5, dtype=np.uint8)
    ip, lp = tmp_path / "t10k-images-idx3-ubyte.gz", tmp_path / "t10k-labels-idx1-ubyte.gz"
    write_idx(ip, imgs)
    write_idx(lp, labels)
    culprit, pattern = ip.name, ""
    if case == "truncated":
        payload = gzip.decompress(ip.read_bytes())[:-100]
        ip.write_bytes(gzip.compress(payload))
        pattern = "header says 5 x 28 x 28 uint8.*truncated"
    elif case == "bad_magic":
        payload = bytearray(gzip.decompress(ip.read_bytes()))
        payload[0:4] = b"\x12\x34\x08\x03"
        ip.write_bytes(gzip.compress(bytes(payload)))
        pattern = "not an idx file: magic number 0x12340803"
    elif case == "not_gzip":
        ip.write_bytes(b"<html>404 not found</html>")
        pattern = "named .gz but is not gzip"
    elif case == "damaged_gzip":
        ip.write_bytes(ip.read_bytes()[:-20])
        pattern = "damaged gzip"
    elif case == "count_mismatch":
        write_idx(lp, labels[:4])
        pattern = "holds 5 images but .* holds 4 labels"
    elif case == "missing_labels":
        lp.unlink()
        pattern = "has no labels file: expected t10k-labels-idx1-ubyte"
    elif case == "labels_as_images":
        write_idx(ip, np.zeros(5, np.uint8))
        pattern = "expected uint8 N x H x W"
    with pytest.raises(InputError, match=pattern) as e:
        D.load_dataset(f"idx:{tmp_path}")
    assert culprit in str(e.value)


def test_idx_directory_problems(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        D.load_dataset(f"idx:{tmp_path / 'nope'}")
    with pytest.raises(InputError, match="no idx image files"):
        D.load_dataset(f"idx:{tmp_path}")


# ---------------------------------------------------------------------------------------------
# torchvision paths (offline, on generated files in the publishers' formats)


def _write_mnist_raw(root: Path) -> tuple[np.ndarray, np.ndarray]:
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    tr, _ = make_pair(raw, "train", 30, seed=3, gz=False)
    te, _ = make_pair(raw, "t10k", 12, seed=4, gz=False)
    return tr, te


def test_mnist_torchvision_path_offline(tmp_path):
    tr, te = _write_mnist_raw(tmp_path)
    r = D.load_dataset("mnist", root=tmp_path, download=False)
    assert len(r) == 42 and r.x.shape == (42, 1, 28, 28)
    assert r.ids[0] == "mnist:train:0" and r.ids[29] == "mnist:train:29" and r.ids[30] == "mnist:test:0"
    assert r.classes == [str(i) for i in range(10)]
    s = D.split(r, seed=0)
    assert np.array_equal(s.train, np.arange(30)) and np.array_equal(s.holdout, np.arange(30, 42))
    assert r.spec["root"] == str(tmp_path.resolve())
    n = r.spec["normalization"]
    assert n["mean"][0] == pytest.approx(tr.mean() / 255)
    back = (r.x[30:, 0] * n["std"][0] + n["mean"][0]) * 255
    assert torch.allclose(back, torch.from_numpy(te).float(), atol=1e-3)
    # the same files through our own idx parser: same pixels, same normalisation
    same = D.load_dataset(f"idx:{tmp_path / 'MNIST' / 'raw'}")
    assert torch.equal(same.x, r.x) and torch.equal(same.y, r.y)


def test_mnist_missing_offline_says_what_to_do(tmp_path):
    with pytest.raises(InputError) as e:
        D.load_dataset("mnist", root=tmp_path, download=False)
    msg = str(e.value)
    assert "'mnist'" in msg and str(tmp_path.resolve()) in msg and "idx:<dir>" in msg and "--dataset digits" in msg
    assert "--data-root" in msg and "load_dataset(" not in msg  # options and a command, not a Python call


def test_mnist_download_failure_is_an_input_error(tmp_path, monkeypatch):
    from torchvision.datasets import MNIST

    def no_network(self):
        raise RuntimeError("Error downloading train-images-idx3-ubyte.gz: <urlopen error [Errno -3]>")

    monkeypatch.setattr(MNIST, "download", no_network)
    with pytest.raises(InputError, match=r"'mnist' is not available in .*Error downloading"):
        D.load_dataset("mnist", root=tmp_path, download=True)


CIFAR_FINE = [f"class_{i:02d}" for i in range(100)]


def _write_cifar100(root: Path, monkeypatch, *, n_train: int = 20, n_test: int = 10, patch_md5: bool = True) -> np.ndarray:
    """Write cifar-100-python/{train,test,meta} as the publisher does (pickled dicts of numpy arrays).

    torchvision checks each file's md5 against the published sums before unpickling it. Rather
    than disabling that check, the test points torchvision's recorded sums at these files, so
    the integrity check still runs (and still fails on a byte changed later).
    """
    from torchvision.datasets import CIFAR100

    base = root / "cifar-100-python"
    base.mkdir(parents=True)
    rng = np.random.default_rng(0)
    # channel-major rows of 3072 bytes, as published: channel c of image i is constant 40*c + i
    data = np.zeros((n_train + n_test, 3, 32, 32), np.uint8)
    for c in range(3):
        data[:, c] = (40 * c + np.arange(n_train + n_test))[:, None, None]
    data[:, :, 0, 0] = rng.integers(0, 256, size=(n_train + n_test, 3))
    labels = (np.arange(n_train + n_test) * 7) % 100
    files = {
        "train": {"data": data[:n_train].reshape(n_train, -1), "fine_labels": labels[:n_train].tolist(),
                  "coarse_labels": (labels[:n_train] // 5).tolist(), "filenames": [f"tr{i}.png" for i in range(n_train)]},
        "test": {"data": data[n_train:].reshape(n_test, -1), "fine_labels": labels[n_train:].tolist(),
                 "coarse_labels": (labels[n_train:] // 5).tolist(), "filenames": [f"te{i}.png" for i in range(n_test)]},
        "meta": {"fine_label_names": CIFAR_FINE, "coarse_label_names": [f"super_{i}" for i in range(20)]},
    }
    md5 = {}
    for name, obj in files.items():
        blob = pickle.dumps(obj, protocol=2)
        (base / name).write_bytes(blob)
        md5[name] = hashlib.md5(blob).hexdigest()
    if patch_md5:
        monkeypatch.setattr(CIFAR100, "train_list", [["train", md5["train"]]])
        monkeypatch.setattr(CIFAR100, "test_list", [["test", md5["test"]]])
        monkeypatch.setattr(CIFAR100, "meta", {**CIFAR100.meta, "md5": md5["meta"]})
    return data


def test_cifar100_torchvision_path_offline(tmp_path, monkeypatch):
    data = _write_cifar100(tmp_path, monkeypatch)
    r = D.load_dataset("cifar100", root=tmp_path, download=False)
    assert len(r) == 30 and r.x.shape == (30, 3, 32, 32) and r.in_channels == 3 and r.num_classes == 100
    assert r.ids[0] == "cifar100:train:0" and r.ids[19] == "cifar100:train:19" and r.ids[20] == "cifar100:test:0"
    assert r.classes == CIFAR_FINE
    assert r.y[:3].tolist() == [0, 7, 14]
    s = D.split(r, seed=0)
    assert np.array_equal(s.train, np.arange(20)) and np.array_equal(s.holdout, np.arange(20, 30))
    # channels come back channel-major and un-normalise to the published bytes
    n = r.spec["normalization"]
    mean = torch.tensor(n["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(n["std"]).view(1, 3, 1, 1)
    assert torch.allclose((r.x * std + mean) * 255, torch.from_numpy(data).float(), atol=2e-3)
    assert np.array_equal(D.class_records(r, "class_07"), [1]) and np.array_equal(D.class_records(r, 7), [1])


def test_cifar100_files_failing_the_integrity_check_are_refused(tmp_path, monkeypatch):
    _write_cifar100(tmp_path, monkeypatch, patch_md5=False)  # not the published bytes
    with pytest.raises(InputError, match=r"'cifar100' is not available in .*(corrupted|not found)"):
        D.load_dataset("cifar100", root=tmp_path, download=False)


# ---------------------------------------------------------------------------------------------
# rebuild


def test_rebuild_digits_is_identical(digits):
    r = D.rebuild(json.loads(json.dumps(digits.spec)))
    assert r.fingerprint == digits.fingerprint and torch.equal(r.x, digits.x)
    assert np.array_equal(r.ids, digits.ids)


def test_rebuild_detects_changed_data_and_follows_moved_data(tmp_path):
    src = tmp_path / "a"
    src.mkdir()
    make_pair(src, "t10k", 20)
    r = D.load_dataset(f"idx:{src}")
    spec = json.loads(json.dumps(r.spec))

    moved = tmp_path / "b"
    shutil.copytree(src, moved)
    again = D.rebuild(spec, root=moved)
    assert torch.equal(again.x, r.x) and np.array_equal(again.ids, r.ids)
    assert again.spec["normalization"] == r.spec["normalization"]

    labels = np.arange(20, dtype=np.uint8) % 10
    labels[3] = 9  # one relabelled record
    write_idx(moved / "t10k-labels-idx1-ubyte.gz", labels)
    with pytest.raises(InputError, match=re.escape(f"the data at {moved} is not the data this model was trained on")):
        D.rebuild(spec, root=moved)
    D.rebuild(spec)  # the original is untouched


def test_rebuild_rejects_something_that_is_not_a_spec():
    with pytest.raises(InputError, match="recorded at training time"):
        D.rebuild({"spec": "digits"})
    with pytest.raises(InputError, match="newer"):
        D.rebuild({"format": 99, "spec": "digits", "fingerprint": "x", "normalization": {}})
