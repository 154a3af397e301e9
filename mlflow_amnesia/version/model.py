"""A loaded model version: :class:`AmnesiaModel`, and reading one from a local directory.

A version is its weights in a torch module, its architecture spec, its metadata
(:class:`~mlflow_amnesia.version.info.VersionInfo`), its recorded phases (segments, with their
manifest and index copies: no chunk is read), the steps already rolled back along its lineage
and the keyed hashes of every record forgotten along it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..errors import InputError
from ..keys import no_hashes
from ..learning.training import inference_batch_size
from ..recording.phase import Segment
from .files import ARCH, INFO, MAX_SMALL_JSON, WEIGHTS, LocalFiles, VersionFiles, check_not_purged, read_weights
from .info import RESTORE, VersionInfo, text

__all__ = ["AmnesiaModel", "read_model"]


@dataclass
class AmnesiaModel:
    """A loaded version: the torch module plus what a forget or an audit needs.

    ``info`` is a :class:`VersionInfo`; a plain dict (the JSON of ``amnesia.json``) is taken as one.
    """

    module: torch.nn.Module
    arch: dict
    info: VersionInfo
    segments: list[Segment]
    rolled_back: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    forgotten: np.ndarray = field(default_factory=no_hashes)
    #: raw images shaped ``(k, C, H, W)`` in the data set's units that a pyfunc input example shows
    #: (class means of held-out records, never a record: :func:`mlflow_amnesia.learning.data.example_images`)
    example: np.ndarray | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.info, VersionInfo):
            self.info = VersionInfo.from_json(self.info or {})

    @property
    def total_steps(self) -> int:
        return sum(s.n_steps for s in self.segments)

    @property
    def next_step(self) -> int:
        return max([s.last_step + 1 for s in self.segments] + [0])

    @property
    def normalization(self) -> dict | None:
        """``{"scale", "mean", "std"}``: what turns this version's raw pixels into its input."""
        norm = (self.info.dataset or {}).get("normalization")
        return dict(norm) if isinstance(norm, dict) else None

    @property
    def class_names(self) -> list[str]:
        n = int(self.info.num_classes or 0)
        names = [str(c) for c in (self.info.classes or [])]
        return names if len(names) == n else [str(i) for i in range(n)]

    def images(self, x: object, *, raw: bool = True) -> torch.Tensor:
        """A batch as the network takes it: float32 ``(N, C, H, W)``, normalised.

        ``raw=True``: pixels in the data set's units (``0..scale``: 0..255 for MNIST and CIFAR,
        0..16 for digits; uint8, int or float) shaped ``(N, C, H, W)``, ``(N, H, W)`` (one
        channel), ``(N, H, W, C)`` (channels last) or flat ``(N, C*H*W)``, normalised here as in
        training. ``raw=False``: already normalised float tensors, in the same shapes."""
        shape = tuple(int(s) for s in (self.info.input_shape or ()))
        try:
            a = np.asarray(x)
            if a.dtype == object or a.dtype.kind not in "biuf":
                a = a.astype(np.float64)
        except (TypeError, ValueError) as e:
            raise InputError(
                f"expected a batch of images as numbers, got {type(x).__name__} ({text(e, 120)})"
            ) from None
        c, h, w = (shape + (1, 1, 1))[:3] if len(shape) == 3 else (0, 0, 0)
        if a.ndim == 2 and a.shape[1] == int(np.prod(shape)):
            a = a.reshape(-1, *shape)
        elif a.ndim == 3 and c == 1 and a.shape[1:] == (h, w):
            a = a[:, None]
        elif a.ndim == 4 and c > 1 and a.shape[1:] == (h, w, c) and a.shape[1:] != shape:
            a = np.moveaxis(a, 3, 1)
        if a.ndim != 4 or tuple(a.shape[1:]) != shape:
            forms = f"(N, {', '.join(map(str, shape))}) or flat (N, {int(np.prod(shape))})"
            if c == 1:
                forms += f" or (N, {h}, {w})"
            elif c > 1:
                forms += f" or channels last (N, {h}, {w}, {c})"
            raise InputError(f"expected images shaped {forms}, got {a.shape}")
        if a.dtype.kind == "f" and not np.isfinite(a).all():
            raise InputError("the images hold NaN or infinite values: send pixel values")
        if not raw:
            return torch.as_tensor(a.astype(np.float32, copy=False))
        norm = self.normalization
        if norm is None:
            raise InputError(
                "this version records no normalisation (data/amnesia.json has no dataset.normalization): "
                "send normalised tensors (pyfunc params={'input': 'normalized'})"
            )
        scale = float(norm["scale"])
        if a.size and (a.min() < 0 or a.max() > scale):
            raise InputError(
                f"raw pixels of this model lie in 0..{scale:g} (the data set's units), got values in "
                f"{float(a.min()):.4g}..{float(a.max()):.4g}: send the images as the data set has them, "
                "or, for already normalised tensors, pyfunc params={'input': 'normalized'}"
            )
        from ..learning.data import normalize

        return normalize(torch.as_tensor(a.astype(np.float32, copy=False)), norm)

    @torch.no_grad()
    def predict_raw(self, x: object, batch_size: int | None = None) -> np.ndarray:
        """Class probabilities for raw pixels (:meth:`images` says which), normalised as in training."""
        return self.predict_proba(self.images(x, raw=True), batch_size=batch_size)

    @torch.no_grad()
    def predict_proba(self, x: np.ndarray | torch.Tensor, batch_size: int | None = None) -> np.ndarray:
        """Class probabilities for a batch of images shaped (N, C, H, W) or flattened (N, C*H*W), in
        batches of ``batch_size`` (default: :func:`~mlflow_amnesia.learning.training.inference_batch_size`)."""
        self.module.eval()
        t = torch.as_tensor(np.asarray(x, dtype=np.float32))
        shape = tuple(self.info.input_shape or ())
        if t.ndim == 2 and t.shape[1] == int(np.prod(shape)):  # flattened images (tabular serving)
            t = t.reshape(-1, *shape)
        if t.ndim != 4 or tuple(t.shape[1:]) != shape:
            raise InputError(f"expected images shaped (N, {', '.join(map(str, shape))}), got {tuple(t.shape)}")
        batch_size = batch_size or inference_batch_size(t)
        out = [torch.softmax(self.module(t[i : i + batch_size]), dim=1) for i in range(0, len(t), batch_size)]
        return torch.cat(out).numpy() if out else np.zeros((0, self.info.num_classes or 0), np.float32)


def read_model(path: Path, label: str | None = None, builders: Iterable[str] = ()) -> AmnesiaModel:
    """Load the version in the local directory ``path``; ``label`` names it in errors (its URI).

    Every file goes through :class:`VersionFiles` (checked, bounded); the weights must fit the
    architecture (compared on the meta device before the module is built).
    """
    from ..learning.models import build_model, state_shapes

    local = LocalFiles(path)
    if not local.path(INFO).is_file():
        mlmodel = path / "MLmodel"
        hint = ""
        if mlmodel.is_file():
            hint = f" Its MLmodel lists flavors: {_flavors_of(mlmodel)}."
        raise InputError(
            f"{path} is not an mlflow_amnesia model (no {INFO}).{hint} "
            "Use a model version registered by `mlflow-amnesia train` or `forget`."
        )
    check_not_purged(local.data)
    files = VersionFiles(local, label or str(path))
    info = files.info()
    assert info is not None
    arch = files.arch(builders)
    segments = files.segments(info)
    rolled = files.rolled_back(segments)
    forgotten = files.forgotten()
    state = read_weights(local.path(WEIGHTS), files.where(WEIGHTS))
    shapes = state_shapes(arch)  # a built-in architecture: check the weights fit before building it
    got = {k: tuple(v.shape) for k, v in state.items()}
    if shapes is not None and shapes != got:
        odd = sorted(set(shapes) ^ set(got))
        first = (
            f"{text(odd[0], 80)} is only in {'the weights' if odd[0] in got else 'the architecture'}"
            if odd
            else next(
                f"{text(k, 80)} is {got[k]} in the weights, {shapes[k]} in the architecture"
                for k in sorted(shapes)
                if shapes[k] != got[k]
            )
        )
        raise InputError(
            f"{files.where(WEIGHTS)} does not fit {ARCH} ({len(got)} tensors, the architecture has "
            f"{len(shapes)}; {first}): one of the files is not this version's; {RESTORE}."
        )
    module = build_model(arch, source=files.where(ARCH), builders=builders)
    try:
        module.load_state_dict(state)
    except RuntimeError as e:  # a builder's module (shapes unknown until built)
        raise InputError(
            f"{files.where(WEIGHTS)} does not fit {ARCH} ({text(str(e).splitlines()[-1], 160)}); {RESTORE}."
        ) from None
    module.eval()
    return AmnesiaModel(module=module, arch=arch, info=info, segments=segments, rolled_back=rolled, forgotten=forgotten)


def _flavors_of(mlmodel: Path) -> str:
    import yaml

    try:
        if mlmodel.stat().st_size > MAX_SMALL_JSON:
            return "unreadable"
        return text(", ".join(sorted(map(str, (yaml.safe_load(mlmodel.read_text()) or {}).get("flavors", {})))))
    except Exception:  # noqa: BLE001 - only for a hint in an error message
        return "unreadable"
