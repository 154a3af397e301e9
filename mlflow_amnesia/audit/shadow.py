"""Shadow (reference) models for membership inference, trained once and cached.

A membership attack needs models that behave like the audited one on records they did and did
not train on. :func:`train_shadows` trains ``n_shadows`` models of the target's architecture with
the target's training recipe, each on a random half of a *reference pool* of records, and keeps

* ``membership`` - a boolean matrix (shadows x pool records): ``True`` where the shadow trained
  on the record. It is *balanced* (Carlini et al. 2022): every pool record is in the training
  half of exactly ``n_shadows // 2`` shadows, so every pool record has shadows that saw it
  (``IN``, online LiRA) and shadows that did not (``OUT``, offline LiRA and the Shokri attack's
  non-member examples).
* ``phi`` - each shadow's logit-scaled confidence ``log(p / (1 - p))`` of the true class on every
  pool record, so a later audit reads it instead of running the shadows again.

The reference pool. The auditor here is the model owner, who holds the whole data set; the
audit should be the strongest attack that owner can run, because a privacy claim is only as
good as the attack that failed to break it. :func:`default_pool` is therefore every record of
the split (training *and* held-out): each shadow trains on about half of it, the same set-up as
LiRA's own evaluation, and every audited record (a forgotten one, a retained member, a
held-out non-member) has IN and OUT shadows. A caller who wants the classic threat model (the
attacker never holds the training data) passes a pool without the target's training records;
scoring then falls back to offline LiRA for records outside the pool.

Cost: shadow training is ``n_shadows`` trainings on half the pool each (the paper used 16); it
happens once per :func:`shadow_cache_key` and the :class:`ShadowSet` is saved (state dicts read
with ``weights_only=True``, NumPy arrays with ``allow_pickle=False``, JSON metadata; no pickle)
so every later audit of any version trained on the same data, architecture and recipe runs
inference only. The training seed of the recipe is not part of the key: shadows draw their own
initialisations and batch orders from ``seed``.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import numpy as np
import torch
from torch import nn

from ..errors import InputError
from ..learning.data import Records, Split, epoch_order
from ..learning.models import build_model, validate_spec
from ..learning.training import Recipe, epoch_orders, inference_batch_size, make_optimizer, run_epochs
from ..progress import Progress
from ..recording.fs import write_local

__all__ = [
    "SHADOW_FORMAT",
    "ShadowSet",
    "balanced_membership",
    "default_pool",
    "logit_confidence",
    "predict_logits",
    "shadow_cache_key",
    "train_shadows",
    "ShadowMember",
    "assemble",
    "member_dirname",
    "member_seed",
    "open_member_recording",
    "train_member",
]

# the per-member files of a recorded pool (see :class:`ShadowMember`)
_MEMBER_META = "member.json"
_MEMBER_STATE = "state.pt"
_MEMBER_PHI = "phi.npy"
_MEMBER_INDEX = "index.sealed"
_MEMBER_DELTAS = "deltas"
_INDEX_ROLE = "shadow-index"

# bump when the files or the training procedure change: it is part of the cache key.
# 2: members trained one by one (fan-out), optionally recorded (deltas + sealed keyed index), keyed batch orders
SHADOW_FORMAT = 2
_META = "shadows.json"
_POOL = "pool.npy"
_MEMBERSHIP = "membership.npy"
_PHI = "phi.npy"
_PathLike = Union[str, "os.PathLike[str]"]


# --------------------------------------------------------------------------------------------
# Pure helpers


def logit_confidence(logits: torch.Tensor, labels: torch.Tensor) -> np.ndarray:
    """``phi = log(p_y / (1 - p_y))`` of the true class ``y`` from raw logits, float64, stable.

    ``log p_y - log(1 - p_y) = z_y - logsumexp(z_j, j != y)``: no softmax is formed, so a
    confidence of 1 - 1e-12 still yields a finite, ordered value (LiRA fits Gaussians to it).
    """
    z = logits.detach().to(torch.float64)
    y = labels.to(z.device, torch.int64).view(-1, 1)
    z_y = z.gather(1, y).squeeze(1)
    others = z.scatter(1, y, float("-inf"))
    return (z_y - torch.logsumexp(others, dim=1)).cpu().numpy()


@torch.no_grad()
def predict_logits(
    module: nn.Module, x: torch.Tensor, *, batch_size: int | None = None, device: str | torch.device = "cpu"
) -> torch.Tensor:
    """Logits of ``module`` (put in eval mode) on ``x``, in batches (``batch_size``, by default
    :func:`~mlflow_amnesia.learning.training.inference_batch_size`), returned on the CPU as float32."""
    batch_size = batch_size or inference_batch_size(x, device)
    module.eval()
    out = [module(x[i : i + batch_size].to(device)).float().cpu() for i in range(0, len(x), batch_size)]
    return torch.cat(out) if out else torch.zeros(0, 0)


def default_pool(split: Split) -> np.ndarray:
    """The reference pool an owner's audit uses: every record of the split (see the module doc)."""
    return np.union1d(np.asarray(split.train, np.int64), np.asarray(split.holdout, np.int64))


def _derived_seed(seed: int, what: str) -> int:
    digest = hashlib.sha256(f"mlflow-amnesia shadow v{SHADOW_FORMAT}:{int(seed)}:{what}".encode()).digest()
    return int.from_bytes(digest[:7], "little")  # < 2**56: fits torch.manual_seed and JSON


def balanced_membership(n_shadows: int, n_pool: int, seed: int) -> np.ndarray:
    """(n_shadows, n_pool) bool: each column has exactly ``n_shadows // 2`` True, chosen at random.

    Derived from :func:`mlflow_amnesia.learning.data.epoch_order` (a platform-independent permutation),
    so the same ``seed`` gives the same matrix on every machine and NumPy release.
    """
    if n_shadows < 2:
        raise InputError(
            f"membership inference needs at least 2 shadow models (one IN, one OUT per record), got {n_shadows}."
        )
    keys = epoch_order(n_shadows * n_pool, _derived_seed(seed, "membership"), 0).reshape(n_shadows, n_pool)
    ranks = np.argsort(np.argsort(keys, axis=0, kind="stable"), axis=0, kind="stable")
    return ranks < n_shadows // 2


def _pool_checksum(pool: np.ndarray) -> str:
    return "sha256:" + hashlib.sha256(np.asarray(pool, dtype="<i8").tobytes()).hexdigest()


def _recipe_dict(recipe: Recipe | Mapping[str, Any]) -> dict[str, Any]:
    r = recipe if isinstance(recipe, Recipe) else Recipe.from_dict(dict(recipe))
    return r.to_dict()


def _check_pool(records: Records, pool_idx: Sequence[int] | np.ndarray) -> np.ndarray:
    pool = np.unique(np.asarray(pool_idx, dtype=np.int64))
    if len(pool) < 4:
        raise InputError(
            f"the reference pool holds {len(pool)} record(s); shadow models need at least 4 (two per half)."
        )
    if pool[0] < 0 or pool[-1] >= len(records):
        raise InputError(
            f"the reference pool names positions outside 0..{len(records) - 1} of data set {records.spec.get('spec')!r}."
        )
    return pool


def shadow_cache_key(
    fingerprint: str,
    arch_spec: Mapping[str, Any],
    recipe: Recipe | Mapping[str, Any],
    n_shadows: int,
    seed: int,
    pool_idx: Sequence[int] | np.ndarray,
    *,
    recording: Mapping[str, Any] | None = None,
) -> str:
    """sha256 (hex) of the JSON of everything that determines a :class:`ShadowSet`.

    ``recording``: for a recorded pool, ``{"codec": ..., "key_id": ...}`` (the record key's id,
    never the key): the members' batch orders and sealed files depend on the key, so a pool
    recorded under another key is another pool.

    Inputs: the data fingerprint, the architecture spec, the recipe (less its ``seed``, which
    shadows do not use), the shadow count, the shadow seed, a checksum of the pool positions and
    :data:`SHADOW_FORMAT`. Equal keys mean interchangeable shadow sets.
    """
    recipe_d = _recipe_dict(recipe)
    recipe_d.pop("seed", None)
    payload = {
        "format": SHADOW_FORMAT,
        "fingerprint": str(fingerprint),
        "arch": validate_spec(arch_spec),
        "recipe": recipe_d,
        "n_shadows": int(n_shadows),
        "seed": int(seed),
        "pool": _pool_checksum(np.unique(np.asarray(pool_idx, dtype=np.int64))),
    }
    if recording:
        payload["recording"] = {"codec": str(recording["codec"]), "key_id": str(recording["key_id"])}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


# --------------------------------------------------------------------------------------------
# ShadowSet


@dataclass(eq=False)
class ShadowSet:
    """Trained shadow models, which pool records each trained on, and their confidences there.

    ``pool`` (sorted int64 positions into the data set), ``membership`` (bool, shadows x pool),
    ``phi`` (float32, shadows x pool: logit-scaled confidence of the true class), ``states``
    (one CPU state dict per shadow), ``info`` (timings, accuracies).
    """

    fingerprint: str
    arch_spec: dict[str, Any]
    recipe: dict[str, Any]
    seed: int
    pool: np.ndarray
    membership: np.ndarray
    phi: np.ndarray
    states: list[dict[str, torch.Tensor]]
    info: dict[str, Any] = field(default_factory=dict)
    #: a recorded pool: ``{"codec", "key_id"}`` (part of the cache key); None: not recorded
    recording: dict[str, Any] | None = None
    #: where each member's recorded files are (local directories, :class:`ShadowMember`); set by
    #: whoever loaded a recorded pool, never saved with the set
    member_dirs: list[str] | None = None

    def __post_init__(self) -> None:
        s, p = len(self.states), len(self.pool)
        if self.membership.shape != (s, p) or self.phi.shape != (s, p):
            raise InputError(
                f"shadow set: {s} state dicts, {p} pool records, but membership {self.membership.shape} "
                f"and phi {self.phi.shape}: the files do not belong together; delete the cache and retrain."
            )

    @property
    def n_shadows(self) -> int:
        return len(self.states)

    @property
    def cache_key(self) -> str:
        return shadow_cache_key(
            self.fingerprint,
            self.arch_spec,
            self.recipe,
            self.n_shadows,
            self.seed,
            self.pool,
            recording=self.recording,
        )

    def check_records(self, records: Records) -> None:
        """Raise InputError unless ``records`` is the data these shadows were trained on."""
        if records.fingerprint != self.fingerprint:
            raise InputError(
                f"these shadow models were trained on data {self.fingerprint}, not on {records.spec.get('spec')!r} "
                f"({records.fingerprint}): train shadows for this data set (different cache key)."
            )

    def modules(self, device: str | torch.device = "cpu") -> list[nn.Module]:
        """The shadow models, built from ``arch_spec`` and loaded with their weights, in eval mode."""
        out = []
        for i, state in enumerate(self.states):
            m = build_model(self.arch_spec)
            try:
                m.load_state_dict(state, strict=True)
            except RuntimeError as e:
                raise InputError(
                    f"shadow model {i} does not fit architecture {self.arch_spec}: {e}; delete the cache and retrain."
                ) from None
            out.append(m.to(device).eval())
        return out

    def pool_slots(self, positions: np.ndarray) -> np.ndarray:
        """Index of each position in ``pool`` (int64), -1 where a position is not in the pool."""
        positions = np.asarray(positions, dtype=np.int64)
        slot = np.searchsorted(self.pool, positions)
        slot = np.minimum(slot, max(len(self.pool) - 1, 0))
        found = (len(self.pool) > 0) & (self.pool[slot] == positions)
        return np.where(found, slot, -1)

    def in_mask(self, positions: np.ndarray) -> np.ndarray:
        """(n_shadows, len(positions)) bool: True where the shadow trained on the record."""
        slot = self.pool_slots(positions)
        out = np.zeros((self.n_shadows, len(slot)), dtype=bool)
        inside = slot >= 0
        out[:, inside] = self.membership[:, slot[inside]]
        return out

    def shadow_phi(self, records: Records, positions: np.ndarray, *, device: str | torch.device = "cpu") -> np.ndarray:
        """(n_shadows, len(positions)) float64 ``phi`` of each shadow; stored for pool records,
        computed (shadow inference) for the others."""
        self.check_records(records)
        positions = np.asarray(positions, dtype=np.int64)
        slot = self.pool_slots(positions)
        out = np.empty((self.n_shadows, len(positions)), dtype=np.float64)
        inside = slot >= 0
        out[:, inside] = self.phi[:, slot[inside]]
        if (~inside).any():
            outside = positions[~inside]
            for i, m in enumerate(self.modules(device)):
                out[i, ~inside] = logit_confidence(
                    predict_logits(m, records.x[outside], device=device), records.y[outside]
                )
        return out

    def pooled_std(self) -> tuple[float, float]:
        """(IN, OUT) within-record standard deviation of ``phi``, pooled over the whole pool.

        Unbiased: squared deviations from each record's own IN (OUT) mean, divided by the count
        less one per record. LiRA uses it when there are too few shadows per record to estimate
        a per-record variance (Carlini et al.'s "fixed variance"). With one shadow per side (two
        shadows) there is no within-record deviation; the spread of that side's ``phi`` over all
        records stands in (larger, so the test is more cautious).
        """
        phi = self.phi.astype(np.float64)
        res = []
        for mask in (self.membership, ~self.membership):
            n = mask.sum(0)
            mean = np.where(mask, phi, 0.0).sum(0) / np.maximum(n, 1)
            ss = float(np.where(mask, (phi - mean) ** 2, 0.0).sum())
            dof = int(np.maximum(n - 1, 0).sum())
            sd = math.sqrt(ss / dof) if dof else (float(phi[mask].std()) if mask.any() else math.nan)
            res.append(sd)
        return res[0], res[1]

    # ---------------------------------------------------------------- persistence

    def save(self, directory: _PathLike) -> Path:
        """Write the set to ``directory`` (created): JSON metadata, .npy arrays, one .pt per shadow.

        Each file is written to a temporary name and moved into place; ``shadows.json``, which
        lists every other file's sha256, is written last, so a directory without it is incomplete.
        """
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        meta_path = d / _META
        if meta_path.exists():
            meta_path.unlink()  # the commit marker goes first: a half-overwritten set is never "complete"
        files: dict[str, str] = {}
        for name, arr in (
            (_POOL, self.pool.astype(np.int64)),
            (_MEMBERSHIP, self.membership.astype(bool)),
            (_PHI, self.phi.astype(np.float32)),
        ):
            files[name] = _write_atomic(d / name, _npy_bytes(arr))
        shadow_files = []
        for i, state in enumerate(self.states):
            name = f"shadow-{i:03d}.pt"
            files[name] = _write_atomic(d / name, _torch_bytes(state))
            shadow_files.append(name)
        meta = {
            "format": SHADOW_FORMAT,
            "cache_key": self.cache_key,
            "fingerprint": self.fingerprint,
            "arch": self.arch_spec,
            "recipe": self.recipe,
            "seed": int(self.seed),
            "n_shadows": self.n_shadows,
            "n_pool": int(len(self.pool)),
            "recording": self.recording,
            "shadows": shadow_files,
            "files": files,
            "info": self.info,
        }
        _write_atomic(meta_path, json.dumps(meta, indent=1, sort_keys=True).encode())
        return d

    @classmethod
    def load(cls, directory: _PathLike) -> ShadowSet:
        """Read a set written by :meth:`save`, checking every file's sha256 and the arrays' shapes."""
        d = Path(directory)
        redo = "delete that directory (or the cached run) so the shadows are trained again"
        meta_path = d / _META
        if not meta_path.is_file():
            raise InputError(f"{d} holds no {_META}: it is not a saved shadow set, or its save did not finish; {redo}.")
        try:
            meta = json.loads(meta_path.read_text())
        except (OSError, ValueError) as e:
            raise InputError(f"{meta_path} is not readable JSON ({e}); {redo}.") from None
        if int(meta.get("format", -1)) != SHADOW_FORMAT:
            raise InputError(
                f"{meta_path} is shadow-set format {meta.get('format')!r}; this mlflow-amnesia reads {SHADOW_FORMAT}; {redo}."
            )
        need = {"cache_key", "fingerprint", "arch", "recipe", "seed", "shadows", "files"}
        files = meta.get("files") if isinstance(meta, dict) else None
        if (
            not isinstance(meta, dict)
            or not need <= set(meta)
            or not isinstance(files, dict)
            or not {_POOL, _MEMBERSHIP, _PHI, *meta["shadows"]} <= set(files)
        ):
            raise InputError(
                f"{meta_path} lacks entries a shadow set needs ({', '.join(sorted(need))} and every file's sha256); {redo}."
            )
        blobs: dict[str, bytes] = {}
        for name, digest in files.items():
            p = d / name
            try:
                data = p.read_bytes()
            except OSError as e:
                raise InputError(f"shadow-set file {p} cannot be read ({e.strerror or e}); {redo}.") from None
            if "sha256:" + hashlib.sha256(data).hexdigest() != digest:
                raise InputError(
                    f"shadow-set file {p} does not match the sha256 recorded in {meta_path}: it is damaged; {redo}."
                )
            blobs[name] = data
        arrays = {n: np.load(io.BytesIO(blobs[n]), allow_pickle=False) for n in (_POOL, _MEMBERSHIP, _PHI)}
        states = [torch.load(io.BytesIO(blobs[n]), map_location="cpu", weights_only=True) for n in meta["shadows"]]
        out = cls(
            fingerprint=meta["fingerprint"],
            arch_spec=meta["arch"],
            recipe=meta["recipe"],
            seed=int(meta["seed"]),
            pool=arrays[_POOL].astype(np.int64),
            membership=arrays[_MEMBERSHIP].astype(bool),
            phi=arrays[_PHI].astype(np.float32),
            states=states,
            info=meta.get("info", {}),
            recording=meta.get("recording"),
        )
        if out.cache_key != meta["cache_key"]:
            raise InputError(f"{meta_path}: the recorded cache key does not match the set's contents; {redo}.")
        return out


def _npy_bytes(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, a, allow_pickle=False)
    return buf.getvalue()


def _torch_bytes(state: Mapping[str, torch.Tensor]) -> bytes:
    buf = io.BytesIO()
    torch.save(dict(state), buf)
    return buf.getvalue()


def _write_atomic(path: Path, data: bytes) -> str:
    """Write ``path`` whole and durably (:func:`mlflow_amnesia.recording.fs.write_local`); its ``sha256:`` digest."""
    write_local(path, data)
    return "sha256:" + hashlib.sha256(data).hexdigest()


# --------------------------------------------------------------------------------------------
# Training


def _member_orders(pool: np.ndarray, membership_row: np.ndarray, s: int, epochs: int, key: bytes | None) -> np.ndarray:
    return epoch_orders(pool[membership_row], s, epochs, key=key)


def member_seed(seed: int, i: int) -> int:
    """The seed of pool member ``i``: its initialisation and (with ``key``) part of its batch orders."""
    return _derived_seed(seed, f"shadow:{i}")


@dataclass(eq=False)
class ShadowMember:
    """One trained member of a shadow pool: what :func:`assemble` needs, and its recording.

    ``state`` (final weights), ``phi`` (float32, its confidence on every pool record),
    ``directory`` (where :meth:`save` put it; a recorded member keeps there its delta store
    ``deltas/`` and its record index, sealed under the record key, ``index.sealed``).
    """

    pool_key: str
    index: int
    n_shadows: int
    state: dict[str, torch.Tensor]
    phi: np.ndarray
    info: dict[str, Any] = field(default_factory=dict)
    recording: dict[str, Any] | None = None
    directory: str | None = None

    def save(self, directory: _PathLike) -> Path:
        """Write the member's files to ``directory`` (its ``deltas/`` are already there when recorded).

        ``member.json``, listing every other file's sha256, is written last: a directory without
        it is an unfinished member.
        """
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        files = {
            _MEMBER_STATE: _write_atomic(d / _MEMBER_STATE, _torch_bytes(self.state)),
            _MEMBER_PHI: _write_atomic(d / _MEMBER_PHI, _npy_bytes(self.phi.astype(np.float32))),
        }
        if self.recording is not None:
            files[_MEMBER_INDEX] = "sha256:" + hashlib.sha256((d / _MEMBER_INDEX).read_bytes()).hexdigest()
        meta = {
            "format": SHADOW_FORMAT,
            "pool_key": self.pool_key,
            "index": int(self.index),
            "n_shadows": int(self.n_shadows),
            "recording": self.recording,
            "files": files,
            "info": self.info,
        }
        _write_atomic(d / _MEMBER_META, json.dumps(meta, indent=1, sort_keys=True).encode())
        self.directory = str(d)
        return d

    @classmethod
    def load(cls, directory: _PathLike, *, pool_key: str | None = None, index: int | None = None) -> ShadowMember:
        """Read a member written by :meth:`save`, checking its files' sha256 (the delta store checks its own)."""
        d = Path(directory)
        redo = "delete it (or its run in experiment mlflow-amnesia-shadows) so the member is trained again"
        try:
            meta = json.loads((d / _MEMBER_META).read_text())
        except (OSError, ValueError) as e:
            raise InputError(f"{d} is not a finished shadow-pool member ({e}); {redo}.") from None
        if not isinstance(meta, dict) or int(meta.get("format", -1)) != SHADOW_FORMAT:
            raise InputError(f"{d / _MEMBER_META} is not a shadow member of format {SHADOW_FORMAT}; {redo}.")
        if (pool_key is not None and meta.get("pool_key") != pool_key) or (
            index is not None and int(meta.get("index", -1)) != int(index)
        ):
            raise InputError(
                f"{d} holds member {meta.get('index')} of pool {str(meta.get('pool_key'))[:12]}, not member "
                f"{index} of pool {str(pool_key)[:12]}: the cache is damaged; {redo}."
            )
        blobs = {}
        for name, digest in dict(meta.get("files") or {}).items():
            try:
                data = (d / name).read_bytes()
            except OSError as e:
                raise InputError(f"shadow member file {d / name} cannot be read ({e.strerror or e}); {redo}.") from None
            if "sha256:" + hashlib.sha256(data).hexdigest() != digest:
                raise InputError(f"shadow member file {d / name} does not match its sha256: it is damaged; {redo}.")
            blobs[name] = data
        if not {_MEMBER_STATE, _MEMBER_PHI} <= set(blobs):
            raise InputError(f"{d / _MEMBER_META} lists no weights or confidences; {redo}.")
        return cls(
            pool_key=str(meta["pool_key"]),
            index=int(meta["index"]),
            n_shadows=int(meta["n_shadows"]),
            state=torch.load(io.BytesIO(blobs[_MEMBER_STATE]), map_location="cpu", weights_only=True),
            phi=np.load(io.BytesIO(blobs[_MEMBER_PHI]), allow_pickle=False).astype(np.float32),
            info=meta.get("info", {}),
            recording=meta.get("recording"),
            directory=str(d),
        )


def train_member(
    records: Records,
    pool_idx: Sequence[int] | np.ndarray,
    arch_spec: Mapping[str, Any],
    recipe: Recipe | Mapping[str, Any],
    n_shadows: int,
    seed: int,
    index: int,
    *,
    directory: _PathLike,
    key: bytes | None = None,
    codec: str = "int8",
    device: str | torch.device = "cpu",
) -> ShadowMember:
    """Train member ``index`` of the pool and save it under ``directory`` (:meth:`ShadowMember.save`).

    With ``key`` (the record key) the member is *recorded* as ``train`` records a model: every
    optimizer step's delta in a :class:`~mlflow_amnesia.recording.store.DeltaStore` (``codec``,
    chunks sealed under the key) and a record index of keyed hashes, itself sealed (with the
    public membership matrix an index in clear would say which hash is which record); its batch
    orders are keyed too (:func:`~mlflow_amnesia.learning.training.epoch_orders`). Without a key
    it trains unrecorded. A directory holding an unfinished member (no ``member.json``) is
    cleared first, so a killed member is retrained whole.
    """
    import shutil

    from ..crypto import seal_file
    from ..keys import key_id
    from ..recording.index import RecordIndexBuilder
    from ..recording.recorder import Recorder, optimizer_meta, state_layout
    from ..recording.store import DeltaStore

    pool = _check_pool(records, pool_idx)
    spec = validate_spec(arch_spec)
    rec = Recipe.from_dict(_recipe_dict(recipe))
    n, i = int(n_shadows), int(index)
    if not 0 <= i < n:
        raise InputError(f"shadow member {index}: a pool of {n} shadows has members 0..{n - 1}.")
    membership = balanced_membership(n, len(pool), seed)
    recording = {"codec": str(codec), "key_id": key_id(key)} if key is not None else None
    pool_key = shadow_cache_key(records.fingerprint, spec, rec, n, seed, pool, recording=recording)
    d = Path(directory)
    if d.exists() and not (d / _MEMBER_META).exists():
        shutil.rmtree(d)  # a killed training left it: start the member afresh
    d.mkdir(parents=True, exist_ok=True)
    s = member_seed(seed, i)
    x, y = records.x.to(device), records.y.to(device)
    t0 = time.monotonic()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(s)
        model = build_model(spec, seed=s).to(device)
        optimizer = make_optimizer(model, rec)
        orders = _member_orders(pool, membership[i], s, rec.epochs, key)
        label = f"shadow {i + 1}/{n}"
        if key is None:
            run_epochs(model, optimizer, x, y, orders, batch_size=rec.batch_size, label=label)
            stored = 0
        else:
            store = DeltaStore.create(
                (d / _MEMBER_DELTAS).resolve().as_uri(),
                layout=state_layout(model),
                codec=codec,
                meta={"optimizer": optimizer_meta(optimizer), "role": "shadow", "member": i},
                key=key,
            )
            builder = RecordIndexBuilder(key)
            with Recorder(model, store, builder, optimizer=optimizer) as recorder:
                run_epochs(
                    model,
                    optimizer,
                    x,
                    y,
                    orders,
                    batch_size=rec.batch_size,
                    ids=list(records.ids),
                    recorder=recorder,
                    label=label,
                )
            store.close()
            stored = int(store.size().stored)
            _write_atomic(d / _MEMBER_INDEX, seal_file(builder.build().to_bytes(), key, _INDEX_ROLE))
    seconds = time.monotonic() - t0
    logits = predict_logits(model, x[pool], device=device)
    hit = (logits.argmax(1) == records.y[pool]).numpy()
    member = ShadowMember(
        pool_key=pool_key,
        index=i,
        n_shadows=n,
        state={k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
        phi=logit_confidence(logits, y[pool]).astype(np.float32),
        info={
            "train_seconds": seconds,
            "accuracy_in": float(hit[membership[i]].mean()),
            "accuracy_out": float(hit[~membership[i]].mean()),
            "steps": int(sum(-(-len(o) // rec.batch_size) for o in orders)),
            "stored_bytes": stored,
            "device": str(device),
            "torch": torch.__version__,
        },
        recording=recording,
    )
    member.save(d)
    return member


def assemble(
    records: Records,
    pool_idx: Sequence[int] | np.ndarray,
    arch_spec: Mapping[str, Any],
    recipe: Recipe | Mapping[str, Any],
    seed: int,
    members: Sequence[ShadowMember],
) -> ShadowSet:
    """The :class:`ShadowSet` of a complete pool (members 0..n-1, each of the same pool key)."""
    pool = _check_pool(records, pool_idx)
    spec = validate_spec(arch_spec)
    rec = Recipe.from_dict(_recipe_dict(recipe))
    ms = sorted(members, key=lambda m: m.index)
    n = len(ms)
    if [m.index for m in ms] != list(range(n)) or any(m.n_shadows != n for m in ms):
        raise InputError(
            f"shadow pool: members {[m.index for m in ms]} of {ms[0].n_shadows if ms else 0}: not a whole pool."
        )
    recording = ms[0].recording
    key = shadow_cache_key(records.fingerprint, spec, rec, n, seed, pool, recording=recording)
    if any(m.pool_key != key for m in ms):
        raise InputError("shadow pool: its members were trained for another pool (data, recipe or key); retrain them.")
    out = ShadowSet(
        fingerprint=records.fingerprint,
        arch_spec=spec,
        recipe=rec.to_dict(),
        seed=int(seed),
        pool=pool,
        membership=balanced_membership(n, len(pool), seed),
        phi=np.stack([m.phi for m in ms]).astype(np.float32),
        states=[m.state for m in ms],
        info={
            "train_seconds": float(sum(float(m.info.get("train_seconds", 0.0)) for m in ms)),
            "accuracy_in": [m.info.get("accuracy_in") for m in ms],
            "accuracy_out": [m.info.get("accuracy_out") for m in ms],
            "stored_bytes": int(sum(int(m.info.get("stored_bytes", 0)) for m in ms)),
            "device": ms[0].info.get("device"),
            "torch": torch.__version__,
        },
        recording=recording,
        member_dirs=[str(m.directory) for m in ms] if recording is not None else None,
    )
    return out


def open_member_recording(directory: _PathLike, key: bytes):
    """(DeltaStore, RecordIndex) of a recorded member: its deltas and which records each step saw."""
    from ..crypto import open_file
    from ..recording.index import RecordIndex
    from ..recording.store import DeltaStore

    d = Path(directory)
    where = str(d / _MEMBER_INDEX)
    try:
        sealed = (d / _MEMBER_INDEX).read_bytes()
    except OSError as e:
        raise InputError(f"the recorded shadow member {d} has no readable record index ({e.strerror or e}).") from None
    index = RecordIndex.from_bytes(open_file(sealed, key, _INDEX_ROLE, where), key, name=where)
    return DeltaStore.open((d / _MEMBER_DELTAS).resolve().as_uri(), key=key), index


def train_shadows(
    records: Records,
    pool_idx: Sequence[int] | np.ndarray,
    arch_spec: Mapping[str, Any],
    recipe: Recipe | Mapping[str, Any],
    n_shadows: int = 4,
    seed: int = 0,
    *,
    progress: bool = True,
    device: str | torch.device = "cpu",
    key: bytes | None = None,
    codec: str = "int8",
    directory: _PathLike | None = None,
) -> ShadowSet:
    """Train ``n_shadows`` models of ``arch_spec`` with ``recipe``, each on its half of the pool.

    Shadow ``i`` trains on ``pool[membership[i]]`` (see :func:`balanced_membership`) with
    :func:`mlflow_amnesia.learning.training.run_epochs`, from an initialisation and batch orders drawn
    from ``(seed, i)`` (and the record ``key`` when recorded, :func:`train_member`).
    Deterministic for a given device: equal :func:`shadow_cache_key` inputs give equal weights.
    ``directory`` keeps the members' files (a temporary directory when None and unrecorded; a
    recorded pool needs one). ``progress=False`` silences the per-shadow lines.
    """
    import tempfile

    if key is not None and directory is None:
        raise InputError("a recorded shadow pool needs a directory for its members' delta stores.")
    records_pool = _check_pool(records, pool_idx)
    balanced_membership(int(n_shadows), len(records_pool), seed)  # checks the count first
    prog = Progress("shadow models", total=int(n_shadows), unit="models", quiet=None if progress else True)
    members = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(directory) if directory is not None else Path(tmp)
        for i in range(int(n_shadows)):
            m = train_member(
                records, records_pool, arch_spec, recipe, n_shadows, seed, i,
                directory=root / member_dirname(i), key=key, codec=codec, device=device,
            )  # fmt: skip
            members.append(m)
            prog.update(acc_in=m.info["accuracy_in"], acc_out=m.info["accuracy_out"])
        prog.close()
        return assemble(records, records_pool, arch_spec, recipe, seed, members)


def member_dirname(i: int) -> str:
    return f"member-{int(i):03d}"
