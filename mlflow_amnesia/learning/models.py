"""Architectures from a JSON spec.

A model version stores its architecture as a small JSON dict (``arch.json``) next to its weights,
never as a pickled module: :func:`build_model` turns the dict back into a module, and the state
dict (read with ``weights_only=True``) fills it. Specs:

``{"arch": "resnet18", "stem": "cifar" | "imagenet", "in_channels": C, "num_classes": K}``
    torchvision's ResNet18. The ``cifar`` stem is a 3x3 stride-1 convolution and no max-pool
    (11,220,132 parameters for 3 channels and 100 classes); ``imagenet`` keeps the 7x7 stride-2
    convolution and the max-pool. Both accept inputs down to 8x8 (adaptive average pooling).
``{"arch": "cnn", "in_channels": C, "num_classes": K, "image_size": S | [H, W]}``
    A small fast CNN: conv3x3(32)-ReLU-maxpool, conv3x3(64)-ReLU-maxpool, fc(128)-ReLU, fc(K).
    No BatchNorm, so every state tensor is a parameter (handy for DDP and exact-rollback tests).
``{"arch": "builder", "builder": "package.module:function" | "<entry point name>", "kwargs": {...}}``
    The user's own architecture: ``function(**kwargs)`` must return a ``torch.nn.Module``. A
    name without ``:`` is looked up in the entry-point group ``mlflow_amnesia.architectures``.

A spec read from an artifact (``build_model(spec, source=...)``, as the flavor does) never makes
code run that nobody installed or allowed: a ``module:function`` builder is imported only if it
is the target of an installed entry point of that group or on the allow-list
(``MLFLOW_AMNESIA_ALLOWED_BUILDERS=pkg.mod:fn,...`` and ``builders=``), checked before any import.
A spec the caller typed (``train --arch pkg.mod:fn``, a spec in the user's own code) is trusted.
"""

from __future__ import annotations

import importlib
import inspect
import json
import os
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any

import torch
from torch import nn

from ..errors import InputError
from ..names import Registry

ENTRY_POINT_GROUP = "mlflow_amnesia.architectures"
ALLOWED_BUILDERS_ENV = "MLFLOW_AMNESIA_ALLOWED_BUILDERS"
_BUILDER_PATH = re.compile(
    r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*"
)
STEMS = ("cifar", "imagenet")

__all__ = [
    "ALLOWED_BUILDERS_ENV",
    "ARCHITECTURES",
    "ARCHS",
    "ENTRY_POINT_GROUP",
    "ArchKind",
    "SmallCNN",
    "SmallMLP",
    "allowed_builders",
    "build_model",
    "check_builder",
    "default_arch_spec",
    "validate_spec",
]


class SmallCNN(nn.Module):
    """conv3x3(32)-ReLU-maxpool2, conv3x3(64)-ReLU-maxpool2, fc(128)-ReLU, fc(num_classes)."""

    def __init__(self, in_channels: int, num_classes: int, image_size: tuple[int, int]) -> None:
        super().__init__()
        h, w = image_size
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 32, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(64 * (h // 4) * (w // 4), 128),
            nn.ReLU(inplace=True),
            nn.Linear(128, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class SmallMLP(nn.Module):
    """flatten, fc(hidden)-ReLU, fc(num_classes): a model that memorises small data sets cheaply.

    At 64 hidden units on 28x28 inputs it has 50,890 parameters (an eighth of :class:`SmallCNN`),
    so a recorded shadow pool of it stays small (docs/BENCHMARKS.md, "U-LiRA").
    """

    def __init__(self, in_channels: int, num_classes: int, image_size: tuple[int, int], hidden: int = 64) -> None:
        super().__init__()
        h, w = image_size
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(in_channels * h * w, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, num_classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(x)


def _positive_int(spec: Mapping[str, Any], key: str, minimum: int = 1) -> int:
    v = spec[key]
    if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
        raise InputError(f"architecture spec {spec.get('arch')!r}: {key} must be an integer >= {minimum}, got {v!r}.")
    return v


def _image_size(spec: Mapping[str, Any]) -> tuple[int, int]:
    v = spec["image_size"]
    hw = [v, v] if isinstance(v, int) and not isinstance(v, bool) else v
    if (
        not isinstance(hw, (list, tuple))
        or len(hw) != 2
        or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 4 for s in hw)
    ):
        raise InputError(f"architecture spec 'cnn': image_size must be an integer >= 4 or [height, width], got {v!r}.")
    return int(hw[0]), int(hw[1])


def validate_spec(spec: Any) -> dict[str, Any]:
    """Check an architecture spec (a JSON-able dict with known keys) and return a plain copy.

    Raises InputError naming the arch, the unknown or missing keys, or the bad value.
    """
    if not isinstance(spec, Mapping):
        raise InputError(f"an architecture spec must be a JSON object (dict), got {type(spec).__name__}.")
    try:
        plain = json.loads(json.dumps(dict(spec), allow_nan=False))
    except (TypeError, ValueError) as e:
        raise InputError(
            f"architecture spec {dict(spec)!r} is not JSON-serialisable ({e}); use plain numbers, strings, lists and dicts."
        ) from None
    arch = plain.get("arch")
    kind = ARCHITECTURES.get(arch)
    required, optional = kind.required, kind.optional
    missing, unknown = required - plain.keys(), plain.keys() - required - optional
    if missing or unknown:
        parts = ([f"missing {', '.join(sorted(missing))}"] if missing else []) + (
            [f"unknown {', '.join(sorted(unknown))}"] if unknown else []
        )
        raise InputError(
            f"architecture spec {arch!r}: {'; '.join(parts)}. Its keys are {', '.join(sorted(required | optional))}."
        )
    kind.check(plain)
    return plain


def _check_resnet18(spec: dict[str, Any]) -> None:
    _positive_int(spec, "in_channels")
    _positive_int(spec, "num_classes")
    if spec["stem"] not in STEMS:
        raise InputError(f"architecture spec 'resnet18': stem must be one of {', '.join(STEMS)}, got {spec['stem']!r}.")


def _check_cnn(spec: dict[str, Any]) -> None:
    _positive_int(spec, "in_channels")
    _positive_int(spec, "num_classes")
    _image_size(spec)


def _check_mlp(spec: dict[str, Any]) -> None:
    _check_cnn(spec)
    if "hidden" in spec:
        _positive_int(spec, "hidden")


def _check_builder_spec(spec: dict[str, Any]) -> None:
    if not isinstance(spec["builder"], str) or not spec["builder"].strip():
        raise InputError(
            f"architecture spec 'builder': builder must be 'package.module:function' or an entry-point name, got {spec['builder']!r}."
        )
    if not isinstance(spec.get("kwargs", {}), dict):
        raise InputError(f"architecture spec 'builder': kwargs must be a JSON object, got {spec['kwargs']!r}.")


def _resnet18(stem: str, in_channels: int, num_classes: int) -> nn.Module:
    from torchvision.models import resnet18

    m = resnet18(weights=None, num_classes=num_classes)
    if stem == "cifar":
        m.conv1 = nn.Conv2d(in_channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
        m.maxpool = nn.Identity()
    elif in_channels != 3:
        m.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
    return m


def _resolve_builder(name: str) -> Callable[..., Any]:
    if ":" in name:
        mod_name, _, attr = name.partition(":")
        try:
            obj: Any = importlib.import_module(mod_name)
        except ImportError as e:
            raise InputError(
                f"architecture builder {name!r}: cannot import module {mod_name!r} ({e}); is its package installed?"
            ) from None
        for part in attr.split("."):
            if not hasattr(obj, part):
                raise InputError(f"architecture builder {name!r}: module {mod_name!r} has no attribute {attr!r}.")
            obj = getattr(obj, part)
    else:
        eps = [ep for ep in entry_points(group=ENTRY_POINT_GROUP) if ep.name == name]
        if not eps:
            known = sorted({ep.name for ep in entry_points(group=ENTRY_POINT_GROUP)})
            raise InputError(
                f"unknown architecture {name!r}: not one of resnet18, cnn, not 'package.module:function', and "
                f"no installed entry point in group {ENTRY_POINT_GROUP!r} has that name "
                f"(installed: {', '.join(known) or 'none'})."
            )
        try:
            obj = eps[0].load()
        except (ImportError, AttributeError) as e:
            raise InputError(
                f"architecture builder entry point {name!r} ({eps[0].value}) cannot be loaded: {e}."
            ) from None
    if not callable(obj):
        raise InputError(f"architecture builder {name!r} is a {type(obj).__name__}, not a function or class.")
    return obj


def allowed_builders(builders: Iterable[str] = ()) -> frozenset[str]:
    """The ``module:function`` builders a spec read from an artifact may name: ``builders`` plus
    the comma-separated ``MLFLOW_AMNESIA_ALLOWED_BUILDERS``. InputError names a malformed entry."""
    env = [b.strip() for b in os.environ.get(ALLOWED_BUILDERS_ENV, "").split(",") if b.strip()]
    for b in env:
        if not _BUILDER_PATH.fullmatch(b):
            raise InputError(
                f"{ALLOWED_BUILDERS_ENV} lists {b!r}, which is not a builder 'package.module:function': "
                "fix the variable (comma-separated module:function names)."
            )
    given = [str(b).strip() for b in builders]
    for b in given:
        if not _BUILDER_PATH.fullmatch(b):
            raise InputError(f"allowed builder {b!r} is not 'package.module:function'.")
    return frozenset(env) | frozenset(given)


def check_builder(spec: Mapping[str, Any], *, source: str, builders: Iterable[str] = ()) -> None:
    """Refuse, before any import, a builder that ``spec`` (read from ``source``) may not run.

    Allowed: an entry-point name of group ``mlflow_amnesia.architectures`` (installed code), a
    ``module:function`` that an installed entry point of that group targets, or one on
    :func:`allowed_builders`. Anything else is an InputError saying how to allow it.
    """
    if not isinstance(spec, Mapping) or spec.get("arch") != "builder":
        return
    name = spec.get("builder")
    if not isinstance(name, str) or ":" not in name:
        return  # an entry-point name (or invalid, which validate_spec reports): only installed code
    if not _BUILDER_PATH.fullmatch(name):
        raise InputError(
            f"{source} names the architecture builder {name!r}, which is not 'package.module:function': "
            "the file is damaged or was not written by mlflow-amnesia; restore it."
        )
    if name in allowed_builders(builders) or name in {
        ep.value.replace(" ", "") for ep in entry_points(group=ENTRY_POINT_GROUP)
    }:
        return
    raise InputError(
        f"{source} names the architecture builder {name}, and mlflow-amnesia never imports code that a model's "
        f"files name unless you allow it. If you trust {name}, set {ALLOWED_BUILDERS_ENV}={name} (comma-separated "
        f"for several) or install it as an entry point in group {ENTRY_POINT_GROUP!r}, then re-run."
    )


def build_model(
    spec: Mapping[str, Any], *, seed: int | None = None, source: str | None = None, builders: Iterable[str] = ()
) -> nn.Module:
    """Build the module a spec describes (see the module docstring).

    With ``seed``, parameters are initialised from that seed without touching the global RNG,
    so two builds with the same (spec, seed) have identical weights. ``source`` says the spec
    was read from an artifact (named in errors): its builder must pass :func:`check_builder`.
    """
    s = validate_spec(spec)
    if source is not None:
        check_builder(s, source=source, builders=builders)
    if seed is None:
        return _build(s)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        return _build(s)


def state_shapes(spec: Mapping[str, Any]) -> dict[str, tuple[int, ...]] | None:
    """The ``state_dict`` shapes of a built-in architecture, computed on the meta device (nothing
    allocated, the RNG untouched); None for a builder, whose code alone knows them.

    Lets a loader check that weights fit a spec before it builds anything: a spec claiming
    10**12 classes would otherwise allocate terabytes. InputError when no module fits the spec.
    """
    s = validate_spec(spec)
    if s["arch"] == "builder":
        return None
    try:
        with torch.random.fork_rng(devices=[]), torch.device("meta"):
            m = _build(s)
    except (RuntimeError, ValueError, OverflowError, TypeError) as e:
        raise InputError(f"architecture spec {s} describes no buildable module ({type(e).__name__}: {e}).") from None
    return {k: tuple(v.shape) for k, v in m.state_dict().items()}


def _build(s: dict[str, Any]) -> nn.Module:
    return ARCHITECTURES.get(s["arch"]).build(s)


def _build_from_builder(s: dict[str, Any]) -> nn.Module:
    """The user's module: ``builder(**kwargs)``, the builder resolved as :func:`_resolve_builder` says."""
    fn = _resolve_builder(s["builder"])
    kwargs = s.get("kwargs", {})
    try:
        inspect.signature(fn).bind(**kwargs)
    except TypeError as e:
        raise InputError(
            f"architecture builder {s['builder']!r} does not accept kwargs {sorted(kwargs)}: {e}."
        ) from None
    except ValueError:
        pass  # no introspectable signature (a builtin): let the call decide
    module = fn(**kwargs)
    if not isinstance(module, nn.Module):
        raise InputError(
            f"architecture builder {s['builder']!r} returned {type(module).__name__}, not a torch.nn.Module."
        )
    return module


@dataclass(frozen=True)
class ArchKind:
    """One value of a spec's ``"arch"``: its keys, the check of their values, and the build."""

    required: frozenset[str]
    optional: frozenset[str]
    check: Callable[[dict[str, Any]], None]
    build: Callable[[dict[str, Any]], nn.Module]


#: The architectures a spec may name. ``builder`` is the user's own code, resolved and allowed
#: only as :func:`check_builder` and :func:`_resolve_builder` say (entry points of
#: :data:`ENTRY_POINT_GROUP` are builders, not entries of this registry).
ARCHITECTURES: Registry[ArchKind] = Registry(
    "architecture", unknown="unknown architecture {name!r}: use one of {choices} (builder for your own)."
)
ARCHITECTURES.register(
    "resnet18",
    ArchKind(
        frozenset({"arch", "stem", "in_channels", "num_classes"}),
        frozenset(),
        _check_resnet18,
        lambda s: _resnet18(s["stem"], s["in_channels"], s["num_classes"]),
    ),
)
ARCHITECTURES.register(
    "cnn",
    ArchKind(
        frozenset({"arch", "in_channels", "num_classes", "image_size"}),
        frozenset(),
        _check_cnn,
        lambda s: SmallCNN(s["in_channels"], s["num_classes"], _image_size(s)),
    ),
)
ARCHITECTURES.register(
    "mlp",
    ArchKind(
        frozenset({"arch", "in_channels", "num_classes", "image_size"}),
        frozenset({"hidden"}),
        _check_mlp,
        lambda s: SmallMLP(s["in_channels"], s["num_classes"], _image_size(s), int(s.get("hidden", 64))),
    ),
)
ARCHITECTURES.register(
    "builder", ArchKind(frozenset({"arch", "builder"}), frozenset({"kwargs"}), _check_builder_spec, _build_from_builder)
)
ARCHS = ARCHITECTURES.names()


def default_arch_spec(arch: str, records: Any) -> dict[str, Any]:
    """The spec of ``arch`` sized for ``records`` (a :class:`mlflow_amnesia.learning.data.Records`).

    ``resnet18`` gets the cifar stem for images up to 64 pixels, else the imagenet stem. A
    builder path or entry-point name gets whichever of ``in_channels``, ``num_classes`` and
    ``image_size`` its signature accepts.
    """
    h, w = records.image_size
    c, k = int(records.in_channels), int(records.num_classes)
    size: int | list[int] = h if h == w else [h, w]
    if arch == "resnet18":
        return {
            "arch": "resnet18",
            "stem": "cifar" if max(h, w) <= 64 else "imagenet",
            "in_channels": c,
            "num_classes": k,
        }
    if arch in ("cnn", "mlp"):
        return {"arch": arch, "in_channels": c, "num_classes": k, "image_size": size}
    if arch == "builder" or not isinstance(arch, str) or not arch.strip():
        raise InputError(
            f"architecture {arch!r}: name one of resnet18, cnn, or a builder 'package.module:function' / entry-point name."
        )
    fn = _resolve_builder(arch)
    offer = {"in_channels": c, "num_classes": k, "image_size": size}
    params: Mapping[str, inspect.Parameter]
    try:
        params = inspect.signature(fn).parameters
    except ValueError:
        params = {}
    takes_all = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    kwargs = {key: v for key, v in offer.items() if takes_all or key in params}
    return {"arch": "builder", "builder": arch, "kwargs": kwargs}
