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
from ..learning.training import Recipe, epoch_orders, make_optimizer, run_epochs
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
]

SHADOW_FORMAT = 1  # bump when the files or the training procedure change: it is part of the cache key
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
    module: nn.Module, x: torch.Tensor, *, batch_size: int = 512, device: str | torch.device = "cpu"
) -> torch.Tensor:
    """Logits of ``module`` (put in eval mode) on ``x``, in batches, returned on the CPU as float32."""
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
) -> str:
    """sha256 (hex) of the JSON of everything that determines a :class:`ShadowSet`.

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
        return shadow_cache_key(self.fingerprint, self.arch_spec, self.recipe, self.n_shadows, self.seed, self.pool)

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
) -> ShadowSet:
    """Train ``n_shadows`` models of ``arch_spec`` with ``recipe``, each on its half of the pool.

    Shadow ``i`` trains on ``pool[membership[i]]`` (see :func:`balanced_membership`) with
    :func:`mlflow_amnesia.learning.training.run_epochs`, from an initialisation and batch orders drawn
    from ``(seed, i)``. Deterministic for a given device: equal :func:`shadow_cache_key` inputs
    give equal weights. ``progress=False`` silences the per-shadow lines; the training loop's
    own lines follow ``MLFLOW_AMNESIA_QUIET``.
    """
    records_pool = _check_pool(records, pool_idx)
    spec = validate_spec(arch_spec)
    rec = Recipe.from_dict(_recipe_dict(recipe))
    membership = balanced_membership(int(n_shadows), len(records_pool), seed)
    x, y = records.x.to(device), records.y.to(device)
    phi = np.empty(membership.shape, dtype=np.float32)
    states, acc_in, acc_out = [], [], []
    prog = Progress("shadow models", total=int(n_shadows), unit="models", quiet=None if progress else True)
    t0 = time.monotonic()
    for i in range(int(n_shadows)):
        s = _derived_seed(seed, f"shadow:{i}")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(s)
            model = build_model(spec, seed=s).to(device)
            optimizer = make_optimizer(model, rec)
            orders = epoch_orders(records_pool[membership[i]], s, rec.epochs)
            run_epochs(model, optimizer, x, y, orders, batch_size=rec.batch_size, label=f"shadow {i + 1}/{n_shadows}")
        logits = predict_logits(model, x[records_pool], device=device)
        phi[i] = logit_confidence(logits, y[records_pool])
        hit = (logits.argmax(1) == records.y[records_pool]).numpy()
        acc_in.append(float(hit[membership[i]].mean()))
        acc_out.append(float(hit[~membership[i]].mean()))
        states.append({k: v.detach().cpu().clone() for k, v in model.state_dict().items()})
        prog.update(acc_in=acc_in[-1], acc_out=acc_out[-1])
    prog.close()
    info = {
        "train_seconds": time.monotonic() - t0,
        "accuracy_in": acc_in,
        "accuracy_out": acc_out,
        "device": str(device),
        "torch": torch.__version__,
    }
    return ShadowSet(
        fingerprint=records.fingerprint,
        arch_spec=spec,
        recipe=rec.to_dict(),
        seed=int(seed),
        pool=records_pool,
        membership=membership,
        phi=phi,
        states=states,
        info=info,
    )
