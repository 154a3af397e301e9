"""The recorded state of a model: which tensors are deltas, their names, shapes and dtypes.

A model's recorded state is every floating-point tensor of ``model.state_dict()`` (parameters
and float buffers such as BatchNorm running statistics), in ``state_dict()`` order, named as the
inner module of a ``DistributedDataParallel`` wrapper names them. Integer buffers are counted,
not recorded; complex tensors are refused.
"""

from __future__ import annotations

import torch

from ...errors import InputError

__all__ = ["float_state", "integer_state_names", "state_layout", "unwrap"]


def _check_state_entry(name: str, t: torch.Tensor) -> None:
    if t.is_complex():
        raise InputError(
            f"state_dict entry {name!r} is complex ({t.dtype}); the recorder stores real float32 "
            "deltas only. Keep complex values as two real tensors (torch.view_as_real)."
        )


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The module a ``DistributedDataParallel`` (or ``DataParallel``) wrapper trains, else ``model``.

    Recorded names are the inner module's (``conv.weight``, not ``module.conv.weight``), so a
    store recorded under DDP matches the model a version saves and a forget loads.
    """
    parallel = (torch.nn.parallel.DistributedDataParallel, torch.nn.DataParallel)
    while isinstance(model, parallel):
        model = model.module
    return model


def float_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The recorded state: every floating-point tensor of ``model.state_dict()``, in its order.

    Parameters and float buffers (BatchNorm running mean/var) alike; the tensors are detached
    views of the model's own storage, not copies. Integer and bool buffers are left out
    (see :func:`integer_state_names`); complex tensors raise :class:`InputError`.
    """
    out: dict[str, torch.Tensor] = {}
    for name, t in unwrap(model).state_dict().items():
        if not isinstance(t, torch.Tensor):
            continue
        _check_state_entry(name, t)
        if t.is_floating_point():
            out[name] = t
    return out


def integer_state_names(model: torch.nn.Module) -> list[str]:
    """Names of the ``state_dict`` tensors that are *not* recorded (integer and bool buffers).

    For BatchNorm's ``num_batches_tracked`` a rollback of ``k`` steps decrements it by ``k``
    (the recorder's steps are counted; one forward pass per step).
    """
    return [
        name
        for name, t in unwrap(model).state_dict().items()
        if isinstance(t, torch.Tensor) and not t.is_floating_point() and not t.is_complex()
    ]


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def state_layout(model: torch.nn.Module) -> list[dict]:
    """The layout to create a store with: ``[{"name", "shape", "dtype"}]`` of :func:`float_state`.

    ``dtype`` is the model tensor's (``"float32"``, ``"bfloat16"``...); deltas are stored as
    float32 whatever it is.
    """
    return [
        {"name": name, "shape": list(t.shape), "dtype": _dtype_name(t.dtype)} for name, t in float_state(model).items()
    ]
