"""Privacy-audit cost: shadow models are built once, every later audit only runs inference.

Real MNIST (t10k), the target architecture trained on ``--members`` records; ``--shadows``
shadow models over members + as many held-out records (each shadow trains on half of that
pool, as many records as the target), the paper's per-class attack networks, then the audit
itself from the saved (cached) set: load + score members and held-out records. Prints times and
the ratios measured in this one run; writes bench/out/audit.json.

    python bench/audit.py                  # cnn, 250 members, 8 shadows
    python bench/audit.py --shadows 16 --members 1000
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import MNIST_DIR, OUT, machine, write_json  # noqa: E402

from mlflow_amnesia.audit.inversion import inversion_audit  # noqa: E402
from mlflow_amnesia.audit.membership import AttackModels, membership_audit  # noqa: E402
from mlflow_amnesia.audit.shadow import ShadowSet, train_shadows  # noqa: E402
from mlflow_amnesia.data import epoch_order, load_dataset  # noqa: E402
from mlflow_amnesia.models import build_model, default_arch_spec  # noqa: E402
from mlflow_amnesia.training import Recipe, epoch_orders, make_optimizer, run_epochs  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", default="cnn")
    ap.add_argument("--members", type=int, default=250)
    ap.add_argument("--shadows", type=int, default=8)
    ap.add_argument("--epochs", type=int, default=20)
    args = ap.parse_args()

    records = load_dataset(f"idx:{MNIST_DIR}")
    perm = epoch_order(len(records), 123, 0)
    members, holdout = np.sort(perm[: args.members]), np.sort(perm[args.members : 2 * args.members])
    spec = default_arch_spec(args.arch, records)
    recipe = Recipe(epochs=args.epochs, batch_size=32, lr=0.05)
    t = {}

    t0 = time.perf_counter()
    target = build_model(spec, seed=1)
    run_epochs(target, make_optimizer(target, recipe), records.x, records.y, epoch_orders(members, 1, recipe.epochs),
               batch_size=recipe.batch_size)
    t["target_train"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    shadows = train_shadows(records, np.union1d(members, holdout), spec, recipe, n_shadows=args.shadows, seed=0)
    t["shadow_train"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    attack = AttackModels.fit(shadows, records)
    t["attack_fit"] = time.perf_counter() - t0

    with tempfile.TemporaryDirectory() as d:
        t0 = time.perf_counter()
        shadows.save(d)
        attack.save(d)
        t["save"] = time.perf_counter() - t0
        size = sum(p.stat().st_size for p in Path(d).iterdir())
        t0 = time.perf_counter()
        shadows, attack = ShadowSet.load(d), AttackModels.load(d)
        t["load"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    metrics = membership_audit(target, records, shadows, attack, targets_idx=members, nonmembers_idx=holdout)
    t["audit"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    inv = inversion_audit(target, records, list(range(records.num_classes)), judges=shadows.modules(),
                          reference_idx=holdout, iterations=1000, process_every=500)
    t["inversion_10_classes_1000_it"] = time.perf_counter() - t0

    ratios = {
        "audit_over_shadow_train": (t["load"] + t["audit"]) / t["shadow_train"],
        "audit_over_shadow_train_and_attack_fit": (t["load"] + t["audit"]) / (t["shadow_train"] + t["attack_fit"]),
        "shadow_train_over_target_train": t["shadow_train"] / t["target_train"],
        "inversion_over_target_train": t["inversion_10_classes_1000_it"] / t["target_train"],
    }
    for k, v in t.items():
        print(f"{k:32s} {v:9.2f} s")
    print(f"{'cached set size':32s} {size / 1e6:9.2f} MB")
    for k, v in ratios.items():
        print(f"{k:40s} {v:.4f}")
    print({k: round(v, 3) for k, v in {**metrics, **inv.metrics()}.items()})
    write_json(OUT / "audit.json", {"command": " ".join(sys.argv), "machine": machine(), "args": vars(args),
                                    "seconds": t, "ratios": ratios, "cached_bytes": size,
                                    "metrics": {**metrics, **inv.metrics()}})


if __name__ == "__main__":
    main()
