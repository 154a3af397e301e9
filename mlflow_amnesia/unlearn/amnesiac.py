"""Amnesiac unlearning (Graves et al., AAAI 2021): subtract the recorded deltas of the steps
that saw the records, then optionally repair accuracy by fine-tuning on the retained data.

The rollback reads only the chunks of the steps it subtracts (per segment, streamed by the
store with bounded memory) and computes everything before touching the model, so a damaged
chunk fails the forget with nothing changed.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from ..errors import InputError
from ..flavor import AmnesiaModel
from ..progress import info as say
from .base import ForgetContext, MethodResult, UnlearningMethod, check_repair, register_method


def rolled_back_sums(model: AmnesiaModel, steps: np.ndarray) -> dict[str, np.ndarray]:
    """sum(delta_t for t in steps) per tensor name (float64), across the version's segments."""
    from ..progress import Progress

    steps = np.unique(np.asarray(steps, dtype=np.int64))
    total: dict[str, np.ndarray] = {}
    covered = np.zeros(len(steps), dtype=bool)
    for seg in model.segments:
        mask = seg.holds(steps)
        if not mask.any():
            continue
        covered |= mask
        store = seg.open_store()
        prog = Progress(f"rollback ({seg.role})", total=int(mask.sum()), unit="steps")
        sums = store.sum(steps[mask].tolist(), progress=prog)
        prog.close()
        for name, arr in sums.items():
            total[name] = total[name] + arr if name in total else arr
    if not covered.all():
        missing = steps[~covered][:20].tolist()
        raise InputError(f"steps {missing} are not recorded in any segment of this model version")
    return total


def subtract(module: torch.nn.Module, sums: dict[str, np.ndarray], n_steps: int) -> None:
    """module_state -= sums (in float64, cast back); BatchNorm step counters -= n_steps."""
    state = module.state_dict()
    with torch.no_grad():
        for name, t in state.items():
            if name in sums:
                new = t.detach().double().cpu().numpy() - sums[name].reshape(t.shape)
                t.copy_(torch.from_numpy(new).to(t.dtype))
            elif name.endswith("num_batches_tracked"):
                t.sub_(n_steps).clamp_(min=0)


@register_method
class Amnesiac(UnlearningMethod):
    """Roll back the steps that saw the records; ``repair=finetune`` then trains K epochs on the
    retained records (recorded as a new segment, so those steps can be rolled back later too)."""

    name = "amnesiac"
    needs_data = False
    rolls_back = True

    def apply(self, ctx: ForgetContext) -> MethodResult:
        repair = check_repair(ctx.options.get("repair"))
        t0 = time.monotonic()
        sums = rolled_back_sums(ctx.model, ctx.steps)
        subtract(ctx.model.module, sums, len(ctx.steps))
        metrics = {"unlearn.seconds": time.monotonic() - t0, "unlearn.steps": float(len(ctx.steps))}
        summary = f"rolled back {len(ctx.steps)} steps"
        segments = []
        if repair == "finetune":
            seg, secs = finetune_retained(ctx, epochs=int(ctx.options.get("repair_epochs", 1)), role="repair")
            segments.append(seg)
            metrics["repair.seconds"] = secs
            metrics["repair.steps"] = float(max(0, seg.last_step - seg.first_step + 1))
            summary += f", then fine-tuned {ctx.options.get('repair_epochs', 1)} epoch(s) on the retained records"
        return MethodResult(rolled_back=np.asarray(ctx.steps, np.int64), new_segments=segments, metrics=metrics, summary=summary)


def finetune_retained(ctx: ForgetContext, *, epochs: int, role: str):
    """Train ``epochs`` on the retained training records (all forgotten ones excluded), recorded."""
    from ..audit import forgotten_positions
    from ..data import Split
    from ..training import Recipe, epoch_orders, make_optimizer, record_phase

    if epochs < 1:
        raise InputError("--repair-epochs must be >= 1")
    records = ctx.load_records()
    sp = Split.from_json(ctx.model.info["split"], records)
    forgotten = np.concatenate([ctx.model.forgotten.reshape(-1, 16), ctx.target_hashes.reshape(-1, 16)])
    drop = forgotten_positions(records, sp.train, forgotten, ctx.key)
    retained = np.setdiff1d(np.asarray(sp.train, np.int64), drop)
    recipe = Recipe.from_dict(ctx.model.info["recipe"])
    if ctx.options.get("repair_lr"):
        recipe.lr = float(ctx.options["repair_lr"])
    seed = recipe.seed + 7919 * (ctx.next_step + 1)  # a fresh, reproducible order per phase
    orders = epoch_orders(retained, seed, epochs)
    optimizer = make_optimizer(ctx.model.module, recipe)
    say(f"{role}: {epochs} epoch(s) on {len(retained)} retained records")
    t0 = time.monotonic()
    seg = record_phase(
        ctx.model.module, optimizer, records.x, records.y, list(records.ids), orders,
        batch_size=recipe.batch_size, base_url=ctx.phase_base(), codec=ctx.model.info["codec"],
        role=role, key=ctx.key, run_id=ctx.run_id, first_step=ctx.next_step,
    )
    return seg, time.monotonic() - t0
