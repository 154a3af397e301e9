"""Data sets with stable record ids, deterministic splits and fingerprints.

Forgetting a record needs a name for it that means the same thing at training time and months
later: every record gets a string id derived from where it sits in its source
(``digits:17``, ``mnist:train:123``, ``cifar100:test:9``, ``idx:t10k:17``). A data set is named by
a *spec string*; :func:`load_dataset` returns :class:`Records` whose ``spec`` dict (JSON) records
the spec string, the root it was read from, the normalisation and a sha256 *fingerprint* of the
decoded images and labels, so :func:`rebuild` can prove a later copy is the same data.

Spec strings:

``digits``
    scikit-learn's bundled 8x8 digits (1797 images, 10 classes). Offline; the default.
``mnist``
    torchvision's MNIST, train (60,000) then test (10,000), downloaded into ``root``.
``cifar100``
    torchvision's CIFAR-100, train (50,000) then test (10,000); classes are the fine labels.
    torchvision reads the publisher's files, which are Python pickles; it checks their md5
    against the published sums first, so only the publisher's bytes are ever unpickled.
``idx:<dir>``
    MNIST-format idx files in ``<dir>``: every ``<stem>-images-idx3-ubyte[.gz]`` with its
    ``<stem>-labels-idx1-ubyte[.gz]``. Parsed here (gzip + numpy), no torchvision needed.

Fingerprint: sha256 over a header (format tag, image array shape, part names and bounds, class
names) followed by the raw images as uint8 in N x C x H x W order and the labels as
little-endian int64. It depends on the decoded data, not on how the files are compressed.

Normalisation: ``x = (raw / scale - mean[c]) / std[c]`` per channel; mean and std are computed
exactly (from a pixel histogram) over the training part (the whole set when there is no
predefined split) and recorded, so a rebuild reuses the recorded numbers.

Splits (:func:`split`) and epoch orders (:func:`epoch_order`) are derived from hashes computed
in numpy and hashlib (splitmix64 of (seed, position); keyed SHAKE-256 for the record-keyed order
of recorded phases), not from numpy's or torch's random generators: neither promises the same
stream across releases, and a retrain months later must see the same order.
"""

from __future__ import annotations

import gzip
import hashlib
import hmac
import json
import math
import os
import re
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import InputError, UnknownRecordsError
from ..names import Registry

SPEC_FORMAT = 1
SPLIT_FORMAT = 1
_FP_TAG = b"mlflow-amnesia data fingerprint v1\0"

__all__ = [
    "DATASETS",
    "DataSetKind",
    "KNOWN_SPECS",
    "Records",
    "RecordsDataset",
    "Split",
    "batches",
    "class_records",
    "example_images",
    "normalize",
    "default_data_root",
    "ORDER_KEYED",
    "ORDER_PUBLIC",
    "epoch_order",
    "forgotten_positions",
    "load_dataset",
    "read_idx",
    "rebuild",
    "split",
]


# --------------------------------------------------------------------------------------------
# Records


@dataclass(frozen=True, eq=False)
class Records:
    """A data set in memory: ids, normalised images, labels, and the spec that rebuilds it.

    ``ids[i]``, ``x[i]`` and ``y[i]`` describe record ``i`` (its *position*). ``parts`` maps a
    part name (``train``, ``test``, an idx stem, or ``all``) to its ``(start, stop)`` positions.
    """

    ids: np.ndarray  # (N,) str
    x: torch.Tensor  # (N, C, H, W) float32, normalised
    y: torch.Tensor  # (N,) int64
    classes: list[str]
    spec: dict[str, Any]
    parts: dict[str, tuple[int, int]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = len(self.ids)
        if self.x.ndim != 4 or self.x.shape[0] != n or self.y.shape != (n,):
            raise ValueError(f"Records: {n} ids, x {tuple(self.x.shape)}, y {tuple(self.y.shape)} do not line up")

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def in_channels(self) -> int:
        return int(self.x.shape[1])

    @property
    def image_size(self) -> tuple[int, int]:
        """(height, width) of every image."""
        return int(self.x.shape[2]), int(self.x.shape[3])

    @property
    def fingerprint(self) -> str:
        return str(self.spec["fingerprint"])

    @property
    def predefined_split(self) -> tuple[np.ndarray, np.ndarray] | None:
        """(train, holdout) positions when the source defines them (MNIST, CIFAR-100), else None."""
        pre = self.spec.get("predefined_split")
        if not pre:
            return None
        tr, ho = self.parts[pre["train"]], self.parts[pre["holdout"]]
        return np.arange(*tr, dtype=np.int64), np.arange(*ho, dtype=np.int64)

    @cached_property
    def _position(self) -> dict[str, int]:
        return {str(r): i for i, r in enumerate(self.ids.tolist())}

    def positions_of(self, ids: Sequence[str]) -> np.ndarray:
        """Positions (int64) of ``ids`` in this data set; UnknownRecordsError names any unknown id."""
        pos = self._position
        unknown = [i for i in ids if i not in pos]
        if unknown:
            raise UnknownRecordsError(unknown, where=f"data set {self.spec.get('spec')!r}", total=len(ids))
        return np.fromiter((pos[i] for i in ids), dtype=np.int64, count=len(ids))


def default_data_root() -> Path:
    """Where downloads go: ``$XDG_CACHE_HOME/mlflow-amnesia/data`` (default ``~/.cache/...``)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "mlflow-amnesia" / "data"


# --------------------------------------------------------------------------------------------
# idx files


_IDX_TYPES: dict[int, np.dtype] = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_IMAGES_RE = re.compile(r"^(?P<stem>.+)-images[-.]idx3-ubyte(?P<gz>\.gz)?$")


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read one idx file (gzipped or not) into a numpy array, checking magic and sizes.

    Raises InputError naming the file when it is missing, not gzip though compressed, truncated,
    or its header does not describe its payload.
    """
    p = Path(path)
    fix = f"re-download or re-extract {p.name}"
    try:
        raw = p.read_bytes()
    except OSError as e:
        raise InputError(f"cannot read idx file {p}: {e.strerror or e}") from None
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as e:
            raise InputError(f"idx file {p} is a damaged gzip file ({e}): {fix}.") from None
    elif p.suffix == ".gz":
        raise InputError(f"idx file {p} is named .gz but is not gzip data: {fix}.")
    if len(raw) < 4:
        raise InputError(f"idx file {p} is {len(raw)} bytes, too short for an idx header: {fix}.")
    zero, type_code, ndim = raw[:2], raw[2], raw[3]
    if zero != b"\x00\x00" or type_code not in _IDX_TYPES or ndim == 0:
        raise InputError(
            f"{p} is not an idx file: magic number 0x{raw[:4].hex()} (expected 0x0000 then a type "
            f"code and a dimension count, e.g. 0x00000803 for images, 0x00000801 for labels): {fix}."
        )
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise InputError(f"idx file {p} is truncated inside its header ({len(raw)} bytes): {fix}.")
    dims = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    dtype = _IDX_TYPES[type_code]
    want = math.prod(dims) * dtype.itemsize
    have = len(raw) - header
    if have != want:
        shape = " x ".join(map(str, dims))
        what = "truncated" if have < want else "longer than its header says"
        raise InputError(
            f"idx file {p} holds {have} bytes of data but its header says {shape} {dtype.name} "
            f"({want} bytes): the file is {what}; {fix}."
        )
    # a native-order, writable copy (frombuffer over bytes is read-only)
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(dims).astype(dtype.newbyteorder("="))


def _idx_pairs(d: Path) -> list[tuple[str, Path, Path]]:
    """(stem, images file, labels file) for each idx pair in ``d``; 'train' first, then by name."""
    if not d.is_dir():
        raise InputError(
            f"idx data directory {d} does not exist or is not a directory: pass idx:<dir> naming a "
            "directory with <stem>-images-idx3-ubyte[.gz] and <stem>-labels-idx1-ubyte[.gz] files."
        )
    images: dict[str, Path] = {}
    for f in sorted(d.iterdir()):
        m = _IMAGES_RE.match(f.name)
        # prefer the uncompressed file when both exist: same data, faster to read
        if m and (m["stem"] not in images or not m["gz"]):
            images[m["stem"]] = f
    if not images:
        raise InputError(
            f"no idx image files in {d}: expected <stem>-images-idx3-ubyte[.gz] with a matching "
            "<stem>-labels-idx1-ubyte[.gz] (e.g. t10k-images-idx3-ubyte.gz)."
        )
    pairs = []
    for stem in sorted(images, key=lambda s: (s != "train", s)):
        cands = [d / f"{stem}-labels{sep}idx1-ubyte{gz}" for gz in ("", ".gz") for sep in ("-", ".")]
        labels = next((c for c in cands if c.is_file()), None)
        if labels is None:
            raise InputError(
                f"idx images file {images[stem]} has no labels file: expected {stem}-labels-idx1-ubyte "
                "or the same name ending in .gz beside it."
            )
        pairs.append((stem, images[stem], labels))
    return pairs


# --------------------------------------------------------------------------------------------
# Loading


@dataclass
class _Raw:
    """A data set before normalisation: uint8 images N x C x H x W, int64 labels."""

    images: np.ndarray
    labels: np.ndarray
    classes: list[str]
    parts: list[dict[str, Any]]  # {"name", "start", "stop", ...source details}
    id_prefix: str  # e.g. "mnist:{part}:"
    scale: float
    predefined: dict[str, str] | None
    root: str | None
    spec: str

    def ids(self) -> np.ndarray:
        """``id_prefix`` (with ``{part}`` replaced by the part's name) + position within the part."""
        out = [
            np.char.add(self.id_prefix.replace("{part}", p["name"]), np.arange(p["stop"] - p["start"]).astype(str))
            for p in self.parts
        ]
        return np.concatenate(out) if out else np.zeros(0, dtype=str)


def _unavailable(name: str, root: Path, err: BaseException) -> InputError:
    return InputError(
        f"data set {name!r} is not available in {root} ({type(err).__name__}: {err}). On a machine with "
        f"network access `mlflow-amnesia train --dataset {name} --data-root {root}` downloads it there; "
        "offline, pass --data-root DIR where its files already are, --dataset idx:<dir> for MNIST-format "
        "files you have, or --dataset digits (bundled with scikit-learn, works offline)."
    )


_TV_ERRORS = (RuntimeError, OSError, AssertionError, ValueError, EOFError, KeyError)


def _raw_digits() -> _Raw:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    imgs = np.asarray(bunch.images)
    if imgs.min() < 0 or imgs.max() > 16 or not np.array_equal(imgs, np.round(imgs)):
        raise InputError("scikit-learn's digits data is not 0..16 integers as expected; reinstall scikit-learn.")
    images = imgs.astype(np.uint8)[:, None]
    labels = np.asarray(bunch.target, dtype=np.int64)
    n = len(labels)
    return _Raw(
        images,
        labels,
        [str(c) for c in bunch.target_names],
        [{"name": "all", "start": 0, "stop": n}],
        "digits:",
        16.0,
        None,
        None,
        "digits",
    )


def _raw_mnist(root: Path, download: bool) -> _Raw:
    from torchvision.datasets import MNIST

    try:
        train = MNIST(str(root), train=True, download=download)
        test = MNIST(str(root), train=False, download=download)
    except _TV_ERRORS as e:
        raise _unavailable("mnist", root, e) from None
    imgs = [t.data.numpy().astype(np.uint8, copy=False) for t in (train, test)]
    labels = [t.targets.numpy().astype(np.int64) for t in (train, test)]
    n_tr, n_te = len(labels[0]), len(labels[1])
    return _Raw(
        np.concatenate(imgs)[:, None],
        np.concatenate(labels),
        [str(i) for i in range(10)],
        [{"name": "train", "start": 0, "stop": n_tr}, {"name": "test", "start": n_tr, "stop": n_tr + n_te}],
        "mnist:{part}:",
        255.0,
        {"train": "train", "holdout": "test"},
        str(root),
        "mnist",
    )


def _raw_cifar100(root: Path, download: bool) -> _Raw:
    from torchvision.datasets import CIFAR100

    try:
        train = CIFAR100(str(root), train=True, download=download)
        test = CIFAR100(str(root), train=False, download=False)
    except _TV_ERRORS as e:
        raise _unavailable("cifar100", root, e) from None
    imgs = [np.asarray(t.data, dtype=np.uint8).transpose(0, 3, 1, 2) for t in (train, test)]
    labels = [np.asarray(t.targets, dtype=np.int64) for t in (train, test)]
    n_tr, n_te = len(labels[0]), len(labels[1])
    return _Raw(
        np.ascontiguousarray(np.concatenate(imgs)),
        np.concatenate(labels),
        [str(c) for c in train.classes],
        [{"name": "train", "start": 0, "stop": n_tr}, {"name": "test", "start": n_tr, "stop": n_tr + n_te}],
        "cifar100:{part}:",
        255.0,
        {"train": "train", "holdout": "test"},
        str(root),
        "cifar100",
    )


def _raw_idx(d: Path) -> _Raw:
    imgs: list[np.ndarray] = []
    labels: list[np.ndarray] = []
    parts: list[dict[str, Any]] = []
    start = 0
    for stem, fi, fl in _idx_pairs(d):
        im, lb = read_idx(fi), read_idx(fl)
        if im.dtype != np.uint8 or im.ndim != 3:
            raise InputError(
                f"idx images file {fi} holds {im.dtype} with {im.ndim} dimensions; expected uint8 N x H x W."
            )
        if lb.dtype != np.uint8 or lb.ndim != 1:
            raise InputError(f"idx labels file {fl} holds {lb.dtype} with {lb.ndim} dimensions; expected uint8 N.")
        if len(im) != len(lb):
            raise InputError(f"idx files disagree: {fi} holds {len(im)} images but {fl} holds {len(lb)} labels.")
        if imgs and im.shape[1:] != imgs[0].shape[1:]:
            raise InputError(
                f"idx images file {fi} holds {im.shape[1]}x{im.shape[2]} images, the others {imgs[0].shape[1]}x{imgs[0].shape[2]}."
            )
        imgs.append(im)
        labels.append(lb.astype(np.int64))
        parts.append({"name": stem, "start": start, "stop": start + len(lb), "images": fi.name, "labels": fl.name})
        start += len(lb)
    y = np.concatenate(labels)
    k = int(y.max()) + 1 if len(y) else 0
    names = {p["name"] for p in parts}
    test = next((t for t in ("t10k", "test") if t in names), None)
    pre = {"train": "train", "holdout": test} if "train" in names and test else None
    return _Raw(
        np.concatenate(imgs)[:, None],
        y,
        [str(i) for i in range(k)],
        parts,
        "idx:{part}:",
        255.0,
        pre,
        str(d),
        f"idx:{d}",
    )


def _fingerprint(raw: _Raw) -> str:
    h = hashlib.sha256(_FP_TAG)
    header = {
        "shape": list(raw.images.shape),
        "parts": [[p["name"], p["start"], p["stop"]] for p in raw.parts],
        "classes": raw.classes,
    }
    h.update(json.dumps(header, sort_keys=True, separators=(",", ":")).encode())
    h.update(memoryview(np.ascontiguousarray(raw.images)).cast("B"))  # type: ignore[arg-type]  # numpy arrays are buffers
    h.update(raw.labels.astype("<i8").tobytes())
    return "sha256:" + h.hexdigest()


def _channel_stats(images: np.ndarray, scale: float) -> tuple[list[float], list[float]]:
    """Exact per-channel mean and std of ``images / scale`` from a 256-bin histogram."""
    means, stds = [], []
    values = np.arange(256, dtype=np.float64) / scale
    for c in range(images.shape[1]):
        hist = np.zeros(256, dtype=np.int64)
        for s in range(0, len(images), 4096):
            hist += np.bincount(images[s : s + 4096, c].ravel(), minlength=256)
        total = hist.sum()
        if total == 0:
            means.append(0.0)
            stds.append(1.0)
            continue
        mean = float((hist * values).sum() / total)
        std = float(math.sqrt((hist * (values - mean) ** 2).sum() / total))
        means.append(mean)
        stds.append(std if std > 0 else 1.0)
    return means, stds


@dataclass(frozen=True)
class DataSetKind:
    """One kind of data set spec: how its raw records are read, and where its files are.

    ``where``: ``"bundled"`` (nothing to find: digits), ``"cache"`` (``--data-root``, default
    :func:`default_data_root`: mnist, cifar100) or ``"spec"`` (the directory named in the spec,
    ``<kind>:<dir>``, unless ``--data-root`` overrides it: idx).
    """

    load: Callable[[Path | None, bool], _Raw]  # (directory or None, download) -> raw records
    where: str = "cache"

    @property
    def spelling(self) -> str:
        return "{name}:<dir>" if self.where == "spec" else "{name}"


#: Every data set spec kind ``train --dataset`` knows.
DATASETS: Registry[DataSetKind] = Registry("data set")
DATASETS.register("digits", DataSetKind(lambda where, download: _raw_digits(), "bundled"))
DATASETS.register("mnist", DataSetKind(lambda where, download: _raw_mnist(where, download)))  # type: ignore[arg-type]
DATASETS.register("cifar100", DataSetKind(lambda where, download: _raw_cifar100(where, download)))  # type: ignore[arg-type]
DATASETS.register("idx", DataSetKind(lambda where, download: _raw_idx(where), "spec"))  # type: ignore[arg-type]
KNOWN_SPECS = tuple(DATASETS.get(n).spelling.format(name=n) for n in DATASETS.names())


def _parse_spec(spec: str, root: str | os.PathLike | None) -> tuple[str, Path | None]:
    if not isinstance(spec, str) or not spec.strip():
        raise InputError(f"data set spec {spec!r} is not a name: use one of {', '.join(KNOWN_SPECS)}.")
    s = spec.strip()
    for name in DATASETS.names():
        if DATASETS.get(name).where == "spec" and s.startswith(f"{name}:"):
            d = root if root is not None else s[len(name) + 1 :]
            if not str(d):
                raise InputError(
                    f"data set spec '{name}:' names no directory: use {name}:<dir>, e.g. {name}:/data/mnist."
                )
            return name, Path(d).expanduser().resolve()
    kind = s.lower()
    if kind not in DATASETS.names() or DATASETS.get(kind).where == "spec":
        raise InputError(f"unknown data set {spec!r}: use one of {', '.join(KNOWN_SPECS)}.")
    if DATASETS.get(kind).where == "bundled":
        return kind, None
    return kind, Path(root).expanduser().resolve() if root is not None else default_data_root()


def normalize(images: torch.Tensor, normalization: Mapping[str, Any]) -> torch.Tensor:
    """``(images / scale - mean[c]) / std[c]`` in float32, per channel: the one normalisation.

    ``images`` (N, C, H, W) in the data set's raw units (uint8 0..255, digits' 0..16); the
    loaders and a served model (:meth:`mlflow_amnesia.version.model.AmnesiaModel.preprocess`)
    both call this, so a raw image reaches the network exactly as in training."""
    mean_t = torch.tensor([float(m) for m in normalization["mean"]], dtype=torch.float32).view(1, -1, 1, 1)
    std_t = torch.tensor([float(s) for s in normalization["std"]], dtype=torch.float32).view(1, -1, 1, 1)
    x = images.to(torch.float32, copy=True)
    return x.div_(float(normalization["scale"])).sub_(mean_t).div_(std_t)


#: fewest held-out records of a class averaged into an input example: a mean, never a record
EXAMPLE_MIN_RECORDS = 10


def example_images(records: Records, holdout: np.ndarray, classes: int = 2) -> np.ndarray | None:
    """A model's input example: for each of the first ``classes`` classes, the mean of its
    held-out images in the data set's raw units, rounded, ``(k, C, H, W)`` uint8.

    Real in every respect a user sends (shape, dtype, range, a recognisable digit) but no one's
    record: training images are personal data and a class mean of at least
    :data:`EXAMPLE_MIN_RECORDS` held-out images is not any of them. None when no class has enough."""
    norm = records.spec["normalization"]
    mean = np.asarray(norm["mean"], np.float64).reshape(1, -1, 1, 1)
    std = np.asarray(norm["std"], np.float64).reshape(1, -1, 1, 1)
    idx = np.asarray(holdout, dtype=np.int64)
    y = records.y.numpy()[idx]
    out = []
    for c in range(records.num_classes):
        pos = idx[y == c]
        if len(pos) >= EXAMPLE_MIN_RECORDS:
            x = records.x[torch.as_tensor(pos)].numpy().astype(np.float64)
            raw = (x * std + mean) * float(norm["scale"])
            out.append(np.clip(np.rint(raw.mean(axis=0)), 0, 255).astype(np.uint8))
        if len(out) == classes:
            break
    return np.stack(out) if out else None


def _load(
    spec: str, root: str | os.PathLike | None, download: bool, normalization: Mapping[str, Any] | None
) -> tuple[_Raw, Records]:
    kind, where = _parse_spec(spec, root)
    raw = DATASETS.get(kind).load(where, download)
    parts = {p["name"]: (int(p["start"]), int(p["stop"])) for p in raw.parts}
    if normalization is None:
        ref = raw.images[slice(*parts[raw.predefined["train"]])] if raw.predefined else raw.images
        mean, std = _channel_stats(ref, raw.scale)
        normalization = {"scale": raw.scale, "mean": mean, "std": std}
    scale = float(normalization["scale"])
    if len(normalization["mean"]) != raw.images.shape[1] or len(normalization["std"]) != raw.images.shape[1]:
        raise InputError(
            f"the recorded normalisation has {len(normalization['mean'])} channel(s) but {raw.spec!r} has "
            f"{raw.images.shape[1]}: the spec does not describe this data set."
        )
    x = normalize(torch.from_numpy(raw.images), normalization)
    spec_dict = {
        "format": SPEC_FORMAT,
        "spec": raw.spec,
        "root": raw.root,
        "fingerprint": _fingerprint(raw),
        "n_records": int(len(raw.labels)),
        "shape": [int(s) for s in raw.images.shape[1:]],
        "classes": list(raw.classes),
        "normalization": {
            "scale": scale,
            "mean": [float(m) for m in normalization["mean"]],
            "std": [float(s) for s in normalization["std"]],
        },
        "parts": raw.parts,
        "predefined_split": raw.predefined,
    }
    recs = Records(
        ids=raw.ids(), x=x, y=torch.from_numpy(raw.labels), classes=list(raw.classes), spec=spec_dict, parts=parts
    )
    return raw, recs


def load_dataset(spec: str, *, root: str | os.PathLike | None = None, download: bool = True) -> Records:
    """Load the data set named by ``spec`` (see the module docstring) with stable record ids.

    ``root`` is where ``mnist``/``cifar100`` live or are downloaded to (default
    :func:`default_data_root`); for ``idx:<dir>`` a given ``root`` replaces ``<dir>``; ``digits``
    ignores it. A data set that is neither present nor downloadable raises InputError.
    """
    return _load(spec, root, download, None)[1]


def rebuild(spec: Mapping[str, Any], *, root: str | os.PathLike | None = None, download: bool = True) -> Records:
    """Load the data a recorded ``spec`` describes and prove it is the same data.

    ``root`` overrides the recorded root (the data moved). The recorded normalisation is reused.
    Raises InputError when the fingerprint differs.
    """
    if not isinstance(spec, Mapping) or not {"spec", "fingerprint", "normalization"} <= set(spec):
        raise InputError(
            "a data spec must be the dict recorded at training time (keys spec, root, fingerprint, "
            f"normalization, ...); got {type(spec).__name__} with keys {sorted(spec) if isinstance(spec, Mapping) else '-'}."
        )
    if int(spec.get("format", SPEC_FORMAT)) > SPEC_FORMAT:
        raise InputError(
            f"data spec format {spec['format']} is newer than this mlflow-amnesia reads ({SPEC_FORMAT}); upgrade it."
        )
    name = str(spec["spec"])
    where = root if root is not None else spec.get("root")
    _, recs = _load(name, where, download, spec["normalization"])
    if recs.fingerprint != spec["fingerprint"]:
        at = recs.spec.get("root") or "scikit-learn's bundled copy"
        raise InputError(
            f"the data at {at} is not the data this model was trained on: {name!r} has fingerprint "
            f"{recs.fingerprint}, the model recorded {spec['fingerprint']}. Point the data root at "
            "the copy used for training (files changed, truncated or re-ordered change the fingerprint)."
        )
    return recs


# --------------------------------------------------------------------------------------------
# Deterministic order: splitmix64 of (key, position)


def _hash_keys(n: int, key: bytes) -> np.ndarray:
    """splitmix64 of (seed from sha256(key)) + golden * (i + 1), for i < n; uint64, version-proof."""
    seed = np.uint64(int.from_bytes(hashlib.sha256(key).digest()[:8], "little"))
    with np.errstate(over="ignore"):
        z = seed + np.uint64(0x9E3779B97F4A7C15) * (np.arange(n, dtype=np.uint64) + np.uint64(1))
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return z


def _hash_order(n: int, key: bytes) -> np.ndarray:
    return np.argsort(_hash_keys(n, key), kind="stable").astype(np.int64)


#: ``info["order"]`` of a version whose training order is :func:`epoch_order` with the record key.
ORDER_KEYED = "keyed-v2"
#: The order of versions trained before keyed orders (no ``info["order"]``): public, from the seed.
ORDER_PUBLIC = "public-v1"


def epoch_order(n_train: int, seed: int, epoch: int, *, key: bytes | None = None) -> np.ndarray:
    """The order (a permutation of ``range(n_train)``, int64) in which epoch ``epoch`` visits records.

    With the record ``key`` (scheme :data:`ORDER_KEYED`, what every recorded phase uses): the
    stable argsort of ``n_train`` little-endian uint64 values read from SHAKE-256 keyed with
    ``HMAC-SHA256(order_key(key), "seed:epoch:n_train")``, a pseudo-random permutation nobody can
    recompute without the key. Without it (:data:`ORDER_PUBLIC`): a splitmix64 hash order of the
    seed alone, which anyone can recompute; kept for audit shadow models and for versions trained
    before keyed orders. Either is a pure function of its inputs, identical on every platform and
    numpy/torch release, so a retrain replays exactly the batches of the original run.
    """
    if n_train < 0:
        raise InputError(f"epoch_order: n_train must be >= 0, got {n_train}.")
    n = int(n_train)
    if key is None:
        return _hash_order(n, f"mlflow-amnesia epoch order v1:{int(seed)}:{int(epoch)}".encode())
    from ..keys import order_key

    k = hmac.new(order_key(key), f"{int(seed)}:{int(epoch)}:{n}".encode(), hashlib.sha256).digest()
    values = np.frombuffer(hashlib.shake_256(k).digest(8 * n), dtype="<u8") if n else np.zeros(0, "<u8")
    return np.argsort(values, kind="stable").astype(np.int64)


def batches(order: np.ndarray, batch_size: int, *, drop_last: bool = False) -> Iterator[np.ndarray]:
    """Consecutive slices of ``order`` of ``batch_size`` (the last may be shorter unless ``drop_last``)."""
    if batch_size < 1:
        raise InputError(f"batch size must be >= 1, got {batch_size}.")
    order = np.asarray(order)
    stop = len(order) - len(order) % batch_size if drop_last else len(order)
    for i in range(0, stop, batch_size):
        yield order[i : i + batch_size]


# --------------------------------------------------------------------------------------------
# Splits


def _split_checksum(train: np.ndarray, holdout: np.ndarray) -> str:
    h = hashlib.sha256(b"train\0")
    h.update(np.asarray(train, dtype="<i8").tobytes())
    h.update(b"holdout\0")
    h.update(np.asarray(holdout, dtype="<i8").tobytes())
    return "sha256:" + h.hexdigest()


@dataclass(frozen=True, eq=False)
class Split:
    """Training and held-out record positions (sorted int64) and the recipe that rebuilds them."""

    train: np.ndarray
    holdout: np.ndarray
    recipe: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        """The recipe plus sizes and a checksum of the index arrays: a few hundred bytes of JSON."""
        return {
            "format": SPLIT_FORMAT,
            **self.recipe,
            "n_train": int(len(self.train)),
            "n_holdout": int(len(self.holdout)),
            "checksum": _split_checksum(self.train, self.holdout),
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], records: Records) -> Split:
        """Rebuild a recorded split over ``records`` and verify it is the one recorded."""
        need = {"method", "fingerprint", "seed", "holdout_fraction", "stratify", "checksum"}
        if not isinstance(d, Mapping) or not need <= set(d):
            missing = sorted(need - set(d)) if isinstance(d, Mapping) else sorted(need)
            raise InputError(f"a recorded split lacks {', '.join(missing)}: it was not written by Split.to_json.")
        if int(d.get("format", SPLIT_FORMAT)) > SPLIT_FORMAT:
            raise InputError(
                f"split format {d['format']} is newer than this mlflow-amnesia reads ({SPLIT_FORMAT}); upgrade it."
            )
        if d["fingerprint"] != records.fingerprint:
            raise InputError(
                f"the recorded split was made on data {d['fingerprint']}, not on {records.spec.get('spec')!r} "
                f"({records.fingerprint}): rebuild the data set the model was trained on (data.rebuild)."
            )
        s = split(
            records,
            seed=int(d["seed"]),
            holdout_fraction=float(d["holdout_fraction"]),
            stratify=bool(d["stratify"]),
            use_predefined=d["method"] == "predefined",
        )
        if s.to_dict()["checksum"] != d["checksum"]:
            raise InputError(
                f"the recorded split (seed {d['seed']}, fraction {d['holdout_fraction']}) rebuilds to "
                "different indices than were recorded: the split recipe or the data changed; "
                "this model's training data cannot be reconstructed with this mlflow-amnesia version."
            )
        return s

    @classmethod
    def from_json(cls, text: str | bytes | Mapping[str, Any], records: Records) -> Split:
        if isinstance(text, Mapping):
            return cls.from_dict(text, records)
        try:
            d = json.loads(text)
        except (ValueError, TypeError) as e:
            raise InputError(f"a recorded split is not valid JSON ({e}).") from None
        return cls.from_dict(d, records)


def split(
    records: Records,
    *,
    seed: int,
    holdout_fraction: float = 0.2,
    stratify: bool = True,
    use_predefined: bool = True,
) -> Split:
    """Split ``records`` into training and held-out positions, deterministically.

    With a predefined split (MNIST, CIFAR-100, idx with train + t10k/test) and
    ``use_predefined``, train and holdout are those parts and ``seed``/``holdout_fraction`` are
    only recorded. Otherwise each class (``stratify``) or the whole set is ordered by a hash of
    (fingerprint, seed, position) and its first ``round(fraction * n)`` records are held out;
    stratified, every non-empty class keeps at least one training record. The result depends
    only on (fingerprint, seed, fraction, stratify).
    """
    f = float(holdout_fraction)
    if not 0.0 <= f < 1.0:
        raise InputError(f"holdout fraction must be in [0, 1), got {holdout_fraction}.")
    recipe = {"fingerprint": records.fingerprint, "seed": int(seed), "holdout_fraction": f, "stratify": bool(stratify)}
    pre = records.predefined_split if use_predefined else None
    if pre is not None:
        return Split(pre[0], pre[1], {"method": "predefined", **recipe})
    n = len(records)
    keys = _hash_keys(n, f"mlflow-amnesia split v1:{records.fingerprint}:{int(seed)}".encode())
    held = np.zeros(n, dtype=bool)
    if stratify:
        y = records.y.numpy()
        for c in np.unique(y):
            members = np.flatnonzero(y == c)
            k = min(int(round(f * len(members))), len(members) - 1)
            held[members[np.argsort(keys[members], kind="stable")[:k]]] = True
    else:
        held[np.argsort(keys, kind="stable")[: int(round(f * n))]] = True
    method = "stratified-hash-v1" if stratify else "hash-v1"
    return Split(
        np.flatnonzero(~held).astype(np.int64), np.flatnonzero(held).astype(np.int64), {"method": method, **recipe}
    )


# --------------------------------------------------------------------------------------------
# Classes and torch access


def forgotten_positions(records: Records, train_idx: np.ndarray, forgotten: np.ndarray, key: bytes) -> np.ndarray:
    """Positions (into ``records``) of the training records ``train_idx`` whose keyed hash is in
    ``forgotten`` (:func:`mlflow_amnesia.keys.hashes_in`): where a version's forgotten records are."""
    from ..keys import hash_ids, hashes_in

    if len(forgotten) == 0:
        return np.zeros(0, np.int64)
    train_idx = np.asarray(train_idx, dtype=np.int64)
    return train_idx[hashes_in(hash_ids([records.ids[i] for i in train_idx], key), forgotten)]


def class_records(records: Records, cls: int | str | np.integer) -> np.ndarray:
    """Positions (int64) of the records of class ``cls``, given as an index or a class name."""
    if isinstance(cls, (int, np.integer)) and not isinstance(cls, bool):
        k = int(cls)
        if not 0 <= k < records.num_classes:
            raise InputError(
                f"class index {k} is out of range: {records.spec.get('spec')!r} has classes 0..{records.num_classes - 1} "
                f"({_list_classes(records)})."
            )
    elif isinstance(cls, str):
        if cls not in records.classes:
            raise InputError(
                f"unknown class {cls!r} in {records.spec.get('spec')!r}: valid classes are {_list_classes(records)}."
            )
        k = records.classes.index(cls)
    else:
        raise InputError(f"class must be an index or a class name, got {type(cls).__name__} {cls!r}.")
    return np.flatnonzero(records.y.numpy() == k).astype(np.int64)


def _list_classes(records: Records) -> str:
    return ", ".join(f"{i}={c!r}" for i, c in enumerate(records.classes))


class RecordsDataset(torch.utils.data.Dataset):
    """A torch Dataset over some positions of ``records`` yielding ``(position, x, y)``.

    The position maps back to ``records.ids[position]``, which is what the Recorder indexes.
    """

    def __init__(self, records: Records, positions: np.ndarray | None = None) -> None:
        self.records = records
        self.positions = (
            np.arange(len(records), dtype=np.int64) if positions is None else np.asarray(positions, dtype=np.int64)
        )
        if len(self.positions) and (self.positions.min() < 0 or self.positions.max() >= len(records)):
            raise InputError(f"RecordsDataset: positions outside 0..{len(records) - 1}.")

    def __len__(self) -> int:
        return len(self.positions)

    def __getitem__(self, i: int) -> tuple[int, torch.Tensor, torch.Tensor]:
        p = int(self.positions[i])
        return p, self.records.x[p], self.records.y[p]
