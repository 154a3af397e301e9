"""An optimizer's hyper-parameters as JSON: for the store's meta (once) and each step's meta.

Only real scalars and tuples of them are kept (a tensor lr is read once), so the meta is plain
JSON whatever the optimizer; schedulers change the per-step values, flags go in the store meta.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

__all__ = ["optimizer_meta", "step_meta"]


def _number(v: Any) -> float | int | None:
    """``v`` as a JSON number when it is a real scalar (bools excluded), else None."""
    if isinstance(v, bool):
        return None
    if isinstance(v, torch.Tensor):
        if v.numel() != 1 or v.is_complex():
            return None
        v = v.item()  # a tensor lr (capturable optimizers): one sync, only for such optimizers
    if isinstance(v, (int, np.integer)):
        return int(v)
    if isinstance(v, (float, np.floating)):
        f = float(v)
        return f if math.isfinite(f) else None
    return None


def _hparams(group: Mapping[str, Any], *, flags: bool) -> dict:
    """The scalar hyper-parameters of a param group (numbers, number tuples; bools if ``flags``)."""
    out: dict[str, Any] = {}
    for k, v in group.items():
        if k == "params":
            continue
        if flags and isinstance(v, (bool, str)):
            out[k] = v
            continue
        n = _number(v)
        if n is not None:
            out[k] = n
        elif isinstance(v, (tuple, list)) and v and all(_number(x) is not None for x in v):
            out[k] = [_number(x) for x in v]
    return out


def step_meta(optimizer: torch.optim.Optimizer | None) -> dict:
    """One step's meta: ``{"lr": <group 0's lr>, "param_groups": [{lr, momentum, betas...}]}``.

    Only numeric hyper-parameters (they change under schedulers); flags such as ``nesterov``
    are in the store-level :func:`optimizer_meta`. Empty without an optimizer.
    """
    if optimizer is None:
        return {}
    groups = [_hparams(g, flags=False) for g in optimizer.param_groups]
    meta: dict[str, Any] = {"param_groups": groups}
    if groups and "lr" in groups[0]:
        meta = {"lr": groups[0]["lr"], **meta}
    return meta


def optimizer_meta(optimizer: torch.optim.Optimizer) -> dict:
    """The optimizer for the store-level meta: ``{"class", "name", "defaults", "param_groups"}``.

    Pass it as ``DeltaStore.create(..., meta={"optimizer": optimizer_meta(opt), ...})``.
    ``class`` is the qualified class name (``torch.optim.sgd.SGD``); ``defaults`` and each
    param group hold the scalar hyper-parameters and flags, each group also its number of tensors.
    """
    cls = type(optimizer)
    return {
        "class": f"{cls.__module__}.{cls.__qualname__}",
        "name": cls.__name__,
        "defaults": _hparams(optimizer.defaults, flags=True),
        "param_groups": [{**_hparams(g, flags=True), "n_tensors": len(g["params"])} for g in optimizer.param_groups],
    }
