#!/usr/bin/env python3
"""An attacker without the record key: link the keyed hashes of a model version to records.

Who runs this: someone who can read the registry (its database or tracking server) and the
artifact store, and who holds the public data set, but not the record key. What they try:

(a) **order + index.** A version's record index maps each keyed record hash to the steps that
    saw it. If the batch order is readable (``training/batch_order.npy`` in clear) or can be
    recomputed (the public ``epoch_order(n, seed, epoch)`` of the recipe's seed), every record
    position has a known step set too; intersecting the two links hashes to records, and
    ``forgotten.npy`` (the forgotten records' hashes) then names who asked to be forgotten.
(b) **gradient matching.** With plaintext delta chunks and ``training/initial_state.pt`` the
    weights at every step can be rebuilt and each step's batch-mean gradient recovered (SGD
    with momentum: ``m_t = -d_t/lr``, ``g_t = m_t - mu*m_(t-1) - wd*theta_(t-1)``); a least-squares
    fit of the public records' per-record gradients to it finds the step's batch.

It prints, for each attack, index entries re-identified / total, forgotten records re-identified
/ total, and the chance level (what guessing a record at random would get right). Scoring needs
the ground truth, which only the key holder has: ``--score`` reads the key (``MLFLOW_AMNESIA_KEY``
or the key file) *after* the attack, to count correct claims; the attack itself never reads it.

    python scripts/reidentify.py --model digits-cnn --version 2 --score
    python scripts/reidentify.py --model digits-cnn --gradient-steps 8 --score --json

``tests/test_unlinkable.py`` runs both attacks in small form.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

REPO = Path(__file__).resolve().parents[1]


@dataclass
class Target:
    """What the attacker downloaded: a version's public files (no key involved)."""

    model: str
    version: int
    info: dict
    arch: dict
    store_url: str
    manifest: bytes
    first_step: int
    n_steps: int
    hashes: np.ndarray  # (n, 16) the train index's keyed hashes
    step_sets: list[np.ndarray]  # per index row: the steps that saw the record
    steps_table: np.ndarray  # the index's step numbers
    forgotten: np.ndarray  # (k, 16)


@dataclass
class Figures:
    attack: str
    source: str  # where the step sets of records came from, or why the attack could not run
    entries: int = 0
    claimed: int = 0  # entries the attack linked to exactly one record
    correct: Optional[int] = None  # claims that are right (needs --score)
    forgotten: int = 0
    forgotten_claimed: int = 0
    forgotten_correct: Optional[int] = None
    n_records: int = 0  # candidate records (training positions of the public data set)
    chance: float = 0.0  # expected correct entries when guessing a record at random per entry
    forgotten_chance: float = 0.0
    extra: dict = field(default_factory=dict)

    def lines(self) -> list[str]:
        def frac(a: Optional[int], b: int) -> str:
            return "not scored (pass --score)" if a is None else f"{a} / {b} ({a / max(b, 1):.1%})"

        out = [f"{self.attack}: {self.source}"]
        if self.entries:
            out.append(f"  index entries re-identified: {frac(self.correct, self.entries)}; "
                       f"{self.claimed} claimed unique; chance level {self.chance:.2f} ({self.chance / max(self.entries, 1):.2%})")
            out.append(f"  forgotten records re-identified: {frac(self.forgotten_correct, self.forgotten)}; "
                       f"{self.forgotten_claimed} claimed unique; chance level {self.forgotten_chance:.4f}")
        for k, v in self.extra.items():
            out.append(f"  {k}: {v}")
        return out


# ---------------------------------------------------------------------------------------------
# what the attacker reads


def load_target(model: str, version: Optional[int] = None) -> Target:
    """Download a version's public files and parse its train record index without the key."""
    import mlflow

    from mlflow_amnesia.index import _decode_arrays, _read_header

    c = mlflow.MlflowClient()
    if version is None:
        from mlflow_amnesia.registry import search_versions

        version = max(int(v.version) for v in search_versions(model))
    local = Path(mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{model}/{version}"))
    data = local / "data"
    info = json.loads((data / "amnesia.json").read_text())
    k = next(i for i, s in enumerate(info["segments"]) if s["role"] in ("train", "retrain"))
    seg = info["segments"][k]
    raw = (data / "segments" / str(k) / "record_index.bin").read_bytes()
    header, payload = _read_header(raw, "index")  # the file format is public; only the hashes are keyed
    a = _decode_arrays(header, payload, "index", len(raw))
    ip, rs, steps = a["record_indptr"], a["record_steps"], a["steps"]
    step_sets = [steps[rs[ip[r]:ip[r + 1]]] for r in range(len(ip) - 1)]
    forgotten = np.load(data / "forgotten.npy", allow_pickle=False) if (data / "forgotten.npy").exists() else np.zeros((0, 16), np.uint8)
    return Target(model, int(version), info, json.loads((data / "arch.json").read_text()), seg["store_url"],
                  (data / "segments" / str(k) / "manifest.json").read_bytes(), int(seg["first_step"]),
                  int(seg["last_step"]) - int(seg["first_step"]) + 1, a["hashes"], step_sets, steps,
                  np.asarray(forgotten, np.uint8).reshape(-1, 16))


def public_data(t: Target):
    """The public data set and the training positions (the split is a function of its seed)."""
    from mlflow_amnesia.data import Split, rebuild

    records = rebuild(t.info["dataset"])
    sp = Split.from_json(t.info["split"], records)
    return records, np.asarray(sp.train, np.int64)


def _read(url: str) -> bytes:
    from mlflow_amnesia.store.delta_store import url_to_fs

    fs, path = url_to_fs(url)
    return fs.cat_file(path)


def batch_orders(t: Target, train: np.ndarray) -> tuple[Optional[np.ndarray], str]:
    """The per-epoch batch order: read in clear, else recomputed from the public seed."""
    from mlflow_amnesia.data import epoch_order

    url = f"{t.info['training_url']}/batch_order.npy"
    try:
        order = np.load(io.BytesIO(_read(url)), allow_pickle=False)
        return order.astype(np.int64), f"batch order read in clear from {url}"
    except Exception as e:  # noqa: BLE001 - the attacker tries the next thing
        why = f"{url} not readable in clear ({type(e).__name__})"
    seed, epochs = int(t.info["recipe"]["seed"]), int(t.info["recipe"]["epochs"])
    order = np.stack([train[epoch_order(len(train), seed, e)] for e in range(epochs)])
    return order, f"{why}; batch order recomputed with the public epoch_order(n, seed={seed}, epoch)"


def record_step_sets(order: np.ndarray, batch_size: int, first_step: int) -> dict[int, tuple[int, ...]]:
    """Record position -> the steps that fed it, for a per-epoch order of positions."""
    per_epoch = math.ceil(order.shape[1] / batch_size)
    out: dict[int, list[int]] = {}
    for e, row in enumerate(order):
        for rank, p in enumerate(row.tolist()):
            out.setdefault(p, []).append(first_step + e * per_epoch + rank // batch_size)
    return {p: tuple(sorted(s)) for p, s in out.items()}


def link(t: Target, sets: dict[int, tuple[int, ...]]) -> np.ndarray:
    """For each index row, the one record position whose step set equals the row's; -1 if none or several."""
    by_set: dict[tuple[int, ...], list[int]] = {}
    for p, s in sets.items():
        by_set.setdefault(s, []).append(p)
    claims = np.full(len(t.hashes), -1, np.int64)
    for r, steps in enumerate(t.step_sets):
        cands = by_set.get(tuple(int(s) for s in steps), [])
        if len(cands) == 1:
            claims[r] = cands[0]
    return claims


def _rows_of(t: Target, hashes: np.ndarray) -> np.ndarray:
    hv = np.ascontiguousarray(t.hashes).view("V16").ravel()
    q = np.ascontiguousarray(hashes, dtype=np.uint8).view("V16").ravel()
    i = np.searchsorted(hv, q)
    ok = (i < len(hv)) & (hv[np.minimum(i, len(hv) - 1)] == q)
    return i[ok]


def figures(t: Target, attack: str, source: str, claims: np.ndarray, n_records: int, truth: Optional[np.ndarray]) -> Figures:
    frows = _rows_of(t, t.forgotten)
    f = Figures(attack, source, entries=len(t.hashes), claimed=int((claims >= 0).sum()),
                forgotten=len(t.forgotten), forgotten_claimed=int((claims[frows] >= 0).sum()), n_records=n_records,
                chance=len(t.hashes) / max(n_records, 1), forgotten_chance=len(t.forgotten) / max(n_records, 1))
    if truth is not None:
        hit = (claims >= 0) & (claims == truth)
        f.correct, f.forgotten_correct = int(hit.sum()), int(hit[frows].sum())
    return f


def ground_truth(t: Target, records, train: np.ndarray, key: bytes) -> np.ndarray:
    """Index row -> true record position (scoring only: needs the key)."""
    from mlflow_amnesia.keys import hash_ids

    h = hash_ids([records.ids[p] for p in train], key)
    truth = np.full(len(t.hashes), -1, np.int64)
    hv = np.ascontiguousarray(t.hashes).view("V16").ravel()
    q = np.ascontiguousarray(h).view("V16").ravel()
    i = np.searchsorted(hv, q)
    ok = (i < len(hv)) & (hv[np.minimum(i, len(hv) - 1)] == q)
    truth[i[ok]] = train[ok]
    return truth


# ---------------------------------------------------------------------------------------------
# (a) order + index


def order_index_attack(t: Target, records, train: np.ndarray, truth: Optional[np.ndarray] = None) -> Figures:
    order, source = batch_orders(t, train)
    sets = record_step_sets(order, int(t.info["recipe"]["batch_size"]), t.first_step)
    return figures(t, "order+index attack", source, link(t, sets), len(train), truth)


# ---------------------------------------------------------------------------------------------
# (b) gradient matching on plaintext deltas


def read_trajectory(t: Target, steps: int) -> tuple[Optional[dict], Optional[list[dict]], str]:
    """theta_0 and the first ``steps`` deltas, if readable without the key; else (None, None, why)."""
    import torch

    from mlflow_amnesia.store import DeltaStore

    why = []
    url = f"{t.info['training_url']}/initial_state.pt"
    try:
        theta0 = torch.load(io.BytesIO(_read(url)), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - the attacker notes it and tries the deltas anyway
        theta0 = None
        why.append(f"{url} does not load without the key ({type(e).__name__})")
    try:
        store = DeltaStore.open(t.store_url, manifest=t.manifest)
        deltas = [store.read(t.first_step + s) for s in range(steps)]
    except Exception as e:  # noqa: BLE001
        deltas = None
        why.append(f"the delta chunks of {t.store_url} are not readable without the key ({type(e).__name__})")
    if theta0 is None or deltas is None:
        return None, None, "; ".join(why)
    return theta0, deltas, f"initial state and {steps} deltas read in clear"


def per_record_grads(model, params: dict, x, y, coords: np.ndarray, chunk: int = 256) -> np.ndarray:
    """(n, len(coords)) per-record gradients of the cross-entropy at ``params``, flattened."""
    import torch
    import torch.nn.functional as F
    from torch.func import functional_call, grad, vmap

    names = list(params)

    def loss(p, xi, yi):
        return F.cross_entropy(functional_call(model, p, (xi.unsqueeze(0),)), yi.unsqueeze(0))

    g = vmap(grad(loss), in_dims=(None, 0, 0))
    out = []
    idx = torch.from_numpy(coords)
    for i in range(0, len(x), chunk):
        gs = g(params, x[i:i + chunk], y[i:i + chunk])
        flat = torch.cat([gs[n].reshape(gs[n].shape[0], -1) for n in names], dim=1)
        out.append(flat[:, idx].numpy().astype(np.float64))
    return np.concatenate(out)


def gradient_attack(t: Target, records, train: np.ndarray, *, steps: int, truth: Optional[np.ndarray] = None,
                    coords_per_record: int = 3, seed: int = 0) -> Figures:
    """Recover the batches of the first ``steps`` steps by gradient matching; link hashes with them."""
    import torch

    from mlflow_amnesia.models import build_model

    steps = min(steps, t.n_steps)
    theta0, deltas, source = read_trajectory(t, steps)
    if deltas is None:
        f = figures(t, "gradient-matching attack", source, np.full(len(t.hashes), -1, np.int64), len(train), truth)
        f.extra["steps attacked"] = 0
        return f
    recipe = t.info["recipe"]
    lr, mu, wd = float(recipe["lr"]), float(recipe["momentum"]), float(recipe["weight_decay"])
    model = build_model(t.arch)
    for m in model.modules():
        if hasattr(m, "inplace"):
            m.inplace = False  # vmap needs out-of-place activations
    names = [n for n, _ in model.named_parameters()]
    sizes = [theta0[n].numel() for n in names]
    n_coords = min(sum(sizes), coords_per_record * len(train))
    coords = np.sort(np.random.default_rng(seed).choice(sum(sizes), n_coords, replace=False))
    x, y = records.x[train], records.y[train]
    theta = {n: theta0[n].double().clone() for n in names}
    prev_m = {n: torch.zeros_like(theta[n]) for n in names}
    row_of_step = {int(s): [] for s in t.steps_table}
    for r, ss in enumerate(t.step_sets):
        for s in ss.tolist():
            row_of_step[int(s)].append(r)
    recovered: dict[int, np.ndarray] = {}
    recall = []
    for s in range(steps):
        d = {n: torch.from_numpy(deltas[s][n]).double() for n in names}
        m = {n: -d[n] / lr for n in names}
        g = torch.cat([(m[n] - mu * prev_m[n] - wd * theta[n]).reshape(-1) for n in names]).numpy()[coords]
        params = {n: theta[n].float() for n in names}
        G = per_record_grads(model, params, x, y, coords)
        w, *_ = np.linalg.lstsq(G.T, g, rcond=None)
        b = len(row_of_step.get(t.first_step + s, []))  # the batch size of a step is public (index counts)
        batch = train[np.argsort(-w)[:b]]
        recovered[t.first_step + s] = batch
        if truth is not None:
            true = truth[row_of_step[t.first_step + s]]
            recall.append(len(np.intersect1d(batch, true)) / max(len(true), 1))
        for n in names:
            theta[n] += d[n]
        prev_m = m
    sets: dict[int, list[int]] = {}
    for s, batch in recovered.items():
        for p in batch.tolist():
            sets.setdefault(p, []).append(s)
    attacked = set(recovered)
    # a record's step set restricted to the attacked steps identifies it when the steps cover every epoch
    by_set: dict[tuple[int, ...], list[int]] = {}
    for p in train.tolist():
        by_set.setdefault(tuple(sorted(sets.get(p, []))), []).append(p)
    claims = np.full(len(t.hashes), -1, np.int64)
    for r, ss in enumerate(t.step_sets):
        key = tuple(int(v) for v in ss.tolist() if int(v) in attacked)
        c = by_set.get(key, [])
        if key and len(c) == 1:
            claims[r] = c[0]
    f = figures(t, "gradient-matching attack", source, claims, len(train), truth)
    f.extra["steps attacked"] = steps
    if recall:
        f.extra["batch members recovered"] = f"{np.mean(recall):.1%} (mean over {len(recall)} steps; chance {np.mean([len(row_of_step[t.first_step + s]) for s in range(steps)]) / len(train):.1%})"
        f.extra["batch_recall"] = float(np.mean(recall))
    return f


# ---------------------------------------------------------------------------------------------


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--version", type=int)
    ap.add_argument("--gradient-steps", type=int, default=0,
                    help="also run the gradient-matching attack on the first N steps (0: skip; -1: all)")
    ap.add_argument("--score", action="store_true", help="count correct claims with the key (the evaluator's, not the attacker's)")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)
    t = load_target(a.model, a.version)
    records, train = public_data(t)
    truth = None
    if a.score:
        from mlflow_amnesia.keys import load_key

        truth = ground_truth(t, records, train, load_key(create=False))
    out = [order_index_attack(t, records, train, truth)]
    if a.gradient_steps:
        out.append(gradient_attack(t, records, train, steps=t.n_steps if a.gradient_steps < 0 else a.gradient_steps, truth=truth))
    if a.json:
        print(json.dumps([asdict(f) for f in out], indent=2))
    else:
        print(f"{a.model} v{t.version}: {len(t.hashes)} index entries, {len(t.forgotten)} forgotten, "
              f"{len(train)} candidate records")
        for f in out:
            print("\n".join(f.lines()))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    sys.exit(main())
