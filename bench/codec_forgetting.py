"""What a lossy codec's error feedback does to forgetting: int8 against int4 (and lossless f32).

    python bench/codec_forgetting.py            # digits, small CNN, 3 seeds (about 10 minutes on 2 busy cores)
    python bench/codec_forgetting.py --quick    # one seed, fewer epochs (smoke run)

Error feedback (docs/ARCHITECTURE.md) stores ``d_t = Q(theta_t - r_{t-1})``: each step's
quantisation error ``e_t = theta_t - r_t`` is carried into the next stored delta. So a rolled-back
step leaves part of its own update in later (kept) steps, and takes part of earlier steps' errors
with it. Per codec this measures, on one training run recorded by three Recorders at once (the
same trajectory, one store per codec):

* **carry-over** ``||e_t|| / ||delta_t||`` per step (median and 90th percentile over the steps),
  ``delta_t = theta_t - theta_{t-1}`` the true update;
* a forget of ``--forget`` random training records by amnesiac rollback (``theta_T - sum of the
  stored deltas of the steps that saw them``), BatchNorm-free model so the rollback is the whole
  method: held-out accuracy after it, accuracy and loss on the forgotten records, how far the
  rolled-back weights are from the exact rollback (lossless f32 deltas), and the **LiRA** AUC of
  the forgotten records against held-out non-members (the audit's ``membership_audit``, its 8
  shadow models trained once; U-LiRA is being built elsewhere and is not used here), with its
  DeLong 95% interval (``mlflow_amnesia.audit.metrics``) and the sample sizes.

Records: scikit-learn's digits (1,797 8x8 images, bundled), the CLI's ``cnn``; the training set
is kept small (``--train``) so that the model overfits and LiRA has a signal to lose. Repeats over
``--seeds`` (training order and forgotten records) give the spread between runs: the noise the
codecs' differences are read against. Writes bench/out/codec_forgetting.json.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import OUT, machine, write_json  # noqa: E402

from mlflow_amnesia.audit.membership import AttackModels, membership_audit, score_records  # noqa: E402
from mlflow_amnesia.audit.metrics import auc_estimate  # noqa: E402
from mlflow_amnesia.audit.shadow import train_shadows  # noqa: E402
from mlflow_amnesia.index import RecordIndexBuilder  # noqa: E402
from mlflow_amnesia.learning.data import load_dataset, split  # noqa: E402
from mlflow_amnesia.learning.models import build_model, default_arch_spec  # noqa: E402
from mlflow_amnesia.learning.training import evaluate  # noqa: E402
from mlflow_amnesia.recorder import Recorder, float_state, state_layout  # noqa: E402
from mlflow_amnesia.store import DeltaStore  # noqa: E402

CODECS = ("f32", "int8", "int4")
KEY = bytes(range(32))


def run(seed: int, args: argparse.Namespace, records, sp, shadows, attack, arch: dict, tmp: Path) -> dict:
    rng = np.random.default_rng(seed)
    train = rng.permutation(np.asarray(sp.train))[: args.train]
    model = build_model(arch, seed=seed)
    opt = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9, weight_decay=5e-4)
    stores = {c: DeltaStore.create(str(tmp / f"s{seed}-{c}"), layout=state_layout(model), codec=c, key=KEY) for c in CODECS}
    recs = {c: Recorder(model, stores[c], RecordIndexBuilder(KEY), optimizer=opt) for c in CODECS}
    ids = [str(i) for i in range(len(records.ids))]
    batches: list[np.ndarray] = []
    carry = {c: [] for c in CODECS}
    prev = {k: v.detach().double().clone() for k, v in float_state(model).items()}
    model.train()
    for _ in range(args.epochs):
        order = rng.permutation(train)
        for s in range(0, len(order) - args.batch + 1, args.batch):
            b = order[s : s + args.batch]
            opt.zero_grad(set_to_none=True)
            torch.nn.functional.cross_entropy(model(records.x[b]), records.y[b]).backward()
            opt.step()
            for c in CODECS:
                recs[c].step([ids[i] for i in b])
            theta = {k: v.detach().double() for k, v in float_state(model).items()}
            step_norm = math.sqrt(sum(float(((theta[k] - prev[k]) ** 2).sum()) for k in theta))
            for c in CODECS:  # e_t = theta_t - r_t, what error feedback carries into step t+1
                e = math.sqrt(sum(float(((theta[k] - recs[c]._r[k]) ** 2).sum()) for k in theta))
                carry[c].append(e / max(step_norm, 1e-30))
            prev = {k: v.clone() for k, v in theta.items()}
            batches.append(b)
    for c in CODECS:
        recs[c].close()
        stores[c].close()
    forget = rng.choice(train, size=args.forget, replace=False)
    fset = set(int(i) for i in forget)
    steps = [t for t, b in enumerate(batches) if fset & set(int(i) for i in b)]
    final = {k: v.detach().clone() for k, v in model.state_dict().items()}
    out: dict = {"seed": seed, "steps": len(batches), "rolled_back": len(steps), "forgotten": len(forget)}
    exact = None
    holdout = np.asarray(sp.holdout)
    acc0, _ = evaluate(model, records.x[holdout], records.y[holdout])
    out["acc_test_before"] = acc0
    for c in CODECS:
        total = DeltaStore.open(str(tmp / f"s{seed}-{c}"), key=KEY).sum(steps)
        rolled = {k: (final[k].double() - torch.from_numpy(total[k]) if k in total else final[k].double()) for k in final}
        if c == "f32":
            exact = rolled
        model.load_state_dict({k: v.to(final[k].dtype) for k, v in rolled.items()})
        acc_t, _ = evaluate(model, records.x[holdout], records.y[holdout])
        acc_f, loss_f = evaluate(model, records.x[forget], records.y[forget])
        m = membership_audit(model, records, shadows, attack, targets_idx=forget, nonmembers_idx=holdout)
        sc = score_records(model, records, shadows, attack, np.r_[forget, holdout])
        est = auc_estimate(sc.lira, np.r_[np.ones(len(forget), bool), np.zeros(len(holdout), bool)])
        assert exact is not None
        dist = math.sqrt(sum(float(((rolled[k] - exact[k]) ** 2).sum()) for k in total))
        moved = math.sqrt(sum(float((torch.from_numpy(DeltaStore.open(str(tmp / f"s{seed}-f32"), key=KEY).sum(steps)[k]) ** 2).sum()) for k in total))
        out[c] = {
            "carry_median": float(np.median(carry[c])), "carry_p90": float(np.quantile(carry[c], 0.9)),
            "acc_test": acc_t, "acc_forget": acc_f, "loss_forget": loss_f,
            "rollback_error_vs_exact": dist / max(moved, 1e-30),
            "lira_auc": m["audit.lira.auc"], "lira_auc_ci": [est.lo, est.hi], "lira_n": [est.n_members, est.n_nonmembers],
            "lira_auc_delong": est.value, "lira_forgotten_scores": [float(v) for v in sc.lira[: len(forget)]],
            "mia_auc": m["audit.mia.auc"], "bytes_per_value": DeltaStore.open(str(tmp / f"s{seed}-{c}"), key=KEY).size().stored
            / (len(batches) * sum(math.prod(t["shape"]) for t in state_layout(model))),
        }
        print(f"seed {seed} {c:4s} carry {out[c]['carry_median']:.3f} (p90 {out[c]['carry_p90']:.3f})  acc.test {acc_t:.4f}  "
              f"acc.forget {acc_f:.3f}  loss.forget {loss_f:.3f}  LiRA AUC {out[c]['lira_auc']:.3f} [{est.lo:.3f}, {est.hi:.3f}] "
              f"(n {est.n_members}/{est.n_nonmembers})  mean LiRA score of the forgotten {float(np.mean(sc.lira[: len(forget)])):.3f}  "
              f"err vs exact {out[c]['rollback_error_vs_exact']:.2e}  B/value {out[c]['bytes_per_value']:.3f}", flush=True)
    model.load_state_dict(final)
    m = membership_audit(model, records, shadows, attack, targets_idx=forget, nonmembers_idx=holdout)
    out["lira_auc_before"] = m["audit.lira.auc"]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--train", type=int, default=898, help="training records (of the digits' training split: 898)")
    ap.add_argument("--forget", type=int, default=10, help="records forgotten (LiRA's members)")
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--lr", type=float, default=0.05)
    ap.add_argument("--shadows", type=int, default=8)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    if args.quick:
        args.seeds, args.epochs, args.shadows = 1, 4, 2
    t0, load0 = time.perf_counter(), os.getloadavg()[0]
    torch.set_num_threads(1)
    records = load_dataset("digits")
    sp = split(records, seed=0, holdout_fraction=0.5)
    arch = default_arch_spec("cnn", records)
    recipe = {"epochs": args.epochs, "batch_size": args.batch, "lr": args.lr, "momentum": 0.9, "weight_decay": 5e-4}
    pool = np.concatenate([np.asarray(sp.train), np.asarray(sp.holdout)])
    shadows = train_shadows(records, pool, arch, recipe, n_shadows=args.shadows, seed=0, progress=False)
    attack = AttackModels.fit(shadows, records, seed=0)
    runs = []
    with tempfile.TemporaryDirectory(prefix="amnesia-codec-forget-") as tmp:
        for seed in range(args.seeds):
            runs.append(run(seed, args, records, sp, shadows, attack, arch, Path(tmp)))
    info = machine()
    info["load_average_1min"] = [round(load0, 2), round(os.getloadavg()[0], 2)]
    cmd = " ".join(["python", "bench/codec_forgetting.py", *sys.argv[1:]])
    write_json(OUT / "codec_forgetting.json", {"command": cmd, "machine": info, "args": vars(args), "runs": runs,
                                               "seconds": time.perf_counter() - t0})
    for c in CODECS:
        vals = {k: [r[c][k] for r in runs] for k in ("carry_median", "acc_test", "acc_forget", "lira_auc", "rollback_error_vs_exact", "bytes_per_value")}
        print(c, {k: f"{np.mean(v):.4f} [{min(v):.4f}-{max(v):.4f}]" for k, v in vals.items()})
    # paired: per forgotten record, its LiRA score after the int4 rollback minus after int8's (and f32's)
    for a, b in (("int4", "int8"), ("int8", "f32"), ("int4", "f32")):
        d = np.concatenate([np.subtract(r[a]["lira_forgotten_scores"], r[b]["lira_forgotten_scores"]) for r in runs])
        half = 1.96 * float(np.std(d, ddof=1)) / math.sqrt(len(d)) if len(d) > 1 else math.nan
        print(f"LiRA score of the forgotten records, {a} - {b}: {np.mean(d):+.4f} [{np.mean(d) - half:+.4f}, {np.mean(d) + half:+.4f}] (n {len(d)})")


if __name__ == "__main__":
    main()
