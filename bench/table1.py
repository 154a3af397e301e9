"""The paper's Table 1, our analogue: membership inference on 119 individual records, epoch by epoch.

Graves et al. (AAAI 2021) attack "a set of individual examples" (119 of CIFAR-100, 16 shadow
models trained 10 epochs) and report the recall of their attack after naive retraining,
unlearning and amnesiac unlearning, at epoch 0 (the trained model), 0' (right after the
removal step) and after each further epoch. Here (every number an option):

* data and shadows: those of ``bench/ulira.py`` (real MNIST t10k, 1,000 training records, the
  16 recorded ``mlp`` shadow members it trained, read back from ``--pool-dir``), and the
  paper's per-class attack networks fitted on them;
* the deployed model ("version 1"): an ``mlp`` trained on the 1,000 training records with the
  shadows' recipe (15 epochs, batch 8: 1,875 steps, every one recorded, int8, sealed);
* 119 training records, each forgotten **on its own** (119 single-record requests, 15 of 1,875
  steps each: the paper's < 1% regime), by naive retraining (``finetune``: k epochs on the
  retained records), unlearning (``relabel``: the record replaced by 4 copies with wrong labels,
  k epochs) and amnesiac (rollback of the record's steps, then k epochs of finetune repair);
* at each epoch: recall of the paper's attack (member probability > 0.5) on the 119 records,
  its AUC and TPR at 1% FPR, LiRA's AUC, against 8 held-out records scored under the same model
  per request (952 non-members), each with its 95% interval.

    nice -n 5 python bench/table1.py      # after bench/ulira.py trained the pool; writes bench/out/table1.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("MLFLOW_AMNESIA_QUIET", "1")

from bench.common import BENCH_KEY, MNIST_DIR, OUT, machine  # noqa: E402
from mlflow_amnesia.audit.membership import AttackModels, score_records  # noqa: E402
from mlflow_amnesia.audit.metrics import auc_estimate, recall, tpr_estimate  # noqa: E402
from mlflow_amnesia.audit.privacy import audit_pool  # noqa: E402
from mlflow_amnesia.audit.shadow import ShadowMember, assemble, member_dirname  # noqa: E402
from mlflow_amnesia.learning.data import load_dataset, split  # noqa: E402
from mlflow_amnesia.learning.models import build_model  # noqa: E402
from mlflow_amnesia.learning.training import Recipe, epoch_orders, make_optimizer, record_phase, run_epochs  # noqa: E402
from mlflow_amnesia.recording.index import RecordIndex  # noqa: E402
from mlflow_amnesia.recording.store import DeltaStore  # noqa: E402

POINTS = ["0", "0'", "1", "2", "3", "4", "5"]
METHODS = ["naive retraining (finetune)", "unlearning (relabel)", "amnesiac (+ finetune repair)"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=OUT / "table1.json")
    ap.add_argument("--pool-dir", type=Path, default=OUT / "ulira-pool")
    ap.add_argument("--target-dir", type=Path, default=OUT / "table1-target")
    ap.add_argument("--shadows", type=int, default=16)
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--holdout-fraction", type=float, default=0.9)
    ap.add_argument("--records", type=int, default=119)
    ap.add_argument("--after", type=int, default=5, help="epochs of further training after the removal")
    ap.add_argument("--nonmembers-per-request", type=int, default=8)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    res: dict = {"command": "python bench/table1.py " + " ".join(sys.argv[1:]), "machine": machine()}

    def log(msg):
        print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)

    def save():
        a.out.write_text(json.dumps(res, indent=1, sort_keys=True))

    recs = load_dataset(f"idx:{MNIST_DIR}")
    sp = split(recs, seed=0, holdout_fraction=a.holdout_fraction)
    pool = audit_pool(sp, 0)
    arch = {"arch": "mlp", "in_channels": 1, "num_classes": 10, "image_size": 28, "hidden": a.hidden}
    recipe = Recipe(epochs=a.epochs, batch_size=a.batch_size, lr=0.02, momentum=0.9, weight_decay=5e-4, seed=0)
    key = BENCH_KEY
    members = []
    for i in range(a.shadows):
        d = a.pool_dir / member_dirname(i)
        while not (d / "member.json").is_file():
            log(f"waiting for pool member {i} (bench/ulira.py trains it)")
            time.sleep(30)
        members.append(ShadowMember.load(d))
    shadows = assemble(recs, pool, arch, recipe.to_dict(), 0, members)
    t = time.monotonic()
    attack = AttackModels.fit(shadows, recs, seed=0)
    res["attack_fit_seconds"] = time.monotonic() - t
    log("attack fitted")

    # version 1: the deployed model, every step recorded
    train = np.asarray(sp.train, np.int64)
    target = build_model(arch, seed=12345)
    opt = make_optimizer(target, recipe)
    orders = epoch_orders(train, 12345, a.epochs, key=key)
    import shutil

    shutil.rmtree(a.target_dir, ignore_errors=True)
    t = time.monotonic()
    seg = record_phase(
        target, opt, recs.x, recs.y, recs.ids, orders, batch_size=a.batch_size,
        base_url=a.target_dir.resolve().as_uri(), codec="int8", role="train", key=key,
    )  # fmt: skip
    res["target"] = {"train_seconds": time.monotonic() - t, "steps": seg.n_steps}
    v1 = {k: v.clone() for k, v in target.state_dict().items()}
    index = RecordIndex.from_bytes(seg.index, key)
    store = DeltaStore.open(seg.store_url, key=key)
    hold = np.intersect1d(np.asarray(sp.holdout, np.int64), pool)
    rng = np.random.default_rng(0)
    chosen = rng.permutation(train)[: a.records]  # the same records as bench/ulira.py's first ones
    with torch.no_grad():
        logits = target(recs.x[hold])
    res["target"]["heldout_accuracy"] = float((logits.argmax(1) == recs.y[hold]).float().mean())
    log(f"target trained: {res['target']}")

    def fresh():
        m = build_model(arch)
        m.load_state_dict(v1)
        return m

    # scores[method][point] = (target scores list, nonmember scores list)
    scores = {m: {p: ([], [], [], []) for p in POINTS} for m in METHODS}

    def score(method, point, model, r, nonmem):
        s = score_records(model, recs, shadows, attack, np.r_[r, nonmem], lira="online")
        bucket = scores[method][point]
        bucket[0].append(float(s.mia[0]))
        bucket[1].extend(s.mia[1:].tolist())
        bucket[2].append(float(s.lira[0]))
        bucket[3].extend(s.lira[1:].tolist())

    def summarise(n_done):
        out = {}
        for method in METHODS:
            rows = {}
            for p in POINTS:
                mt, mn, lt, ln = (np.asarray(v) for v in scores[method][p])
                if not len(mt):
                    continue
                lab = np.r_[np.ones(len(mt), bool), np.zeros(len(mn), bool)]
                rows[p] = {
                    "mia_recall": recall(mt > 0.5, np.ones(len(mt), bool)),
                    "mia_recall_nonmembers": float((mn > 0.5).mean()),
                    "mia_auc": auc_estimate(np.r_[mt, mn], lab).__dict__,
                    "mia_tpr_at_1pct_fpr": tpr_estimate(np.r_[mt, mn], lab, 0.01).__dict__,
                    "lira_auc": auc_estimate(np.r_[lt, ln], lab).__dict__,
                    "lira_tpr_at_1pct_fpr": tpr_estimate(np.r_[lt, ln], lab, 0.01).__dict__,
                }
            out[method] = rows
        res["records_done"] = n_done
        res["table"] = out
        save()

    t = time.monotonic()
    for j, r in enumerate(chosen):
        nonmem = rng.choice(hold, size=a.nonmembers_per_request, replace=False)
        retained = train[train != r]
        seed = 1000 + j
        steps = index.steps_for([recs.ids[r]])
        m0 = fresh()
        for method in METHODS:
            score(method, "0", m0, r, nonmem)
        # amnesiac: rollback, then finetune repair
        m = fresh()
        sums = store.sum(steps.tolist())
        st = m.state_dict()
        with torch.no_grad():
            for name, arr in sums.items():
                st[name].sub_(torch.from_numpy(np.asarray(arr)).reshape(st[name].shape).to(st[name].dtype))
        m.load_state_dict(st)
        score(METHODS[2], "0'", m, r, nonmem)
        score(METHODS[0], "0'", m0, r, nonmem)
        score(METHODS[1], "0'", m0, r, nonmem)
        ms = {METHODS[0]: fresh(), METHODS[2]: m}
        opts = {k: make_optimizer(v, recipe) for k, v in ms.items()}
        mr = fresh()
        opt_r = make_optimizer(mr, recipe)
        copies = np.repeat(r, 4)
        yk = int(recs.y[r])
        fake = (np.random.default_rng(seed).integers(0, 9, size=4) + 0).astype(np.int64)
        fake = fake + (fake >= yk)
        n = len(recs)
        xr = _Rows(recs.x, np.concatenate([np.arange(n), copies]))
        yr = torch.cat([recs.y, torch.from_numpy(fake)])
        pos_r = np.concatenate([retained, n + np.arange(4)])
        for e in range(a.after):
            er = np.random.default_rng(seed * 31 + e)
            for name, mm in ms.items():
                run_epochs(mm, opts[name], recs.x, recs.y, [er.permutation(retained)], batch_size=a.batch_size, label=name)
                score(name, str(e + 1), mm, r, nonmem)
            run_epochs(mr, opt_r, xr, yr, [er.permutation(pos_r)], batch_size=a.batch_size, targets=yr, label="relabel")
            score(METHODS[1], str(e + 1), mr, r, nonmem)
        if (j + 1) % 10 == 0 or j + 1 == len(chosen):
            log(f"{j + 1}/{len(chosen)} records, {time.monotonic() - t:.0f} s")
            res["seconds"] = time.monotonic() - t
            summarise(j + 1)
    log("done")


class _Rows:
    def __init__(self, base, source):
        self.base, self.source = base, np.asarray(source, np.int64)

    def __getitem__(self, positions):
        return self.base[self.source[positions]]


if __name__ == "__main__":
    main()
