"""Model inversion: what does a model still "think" a class looks like?

The paper's attack (Graves et al. 2021, modifying Fredrikson et al. 2015's MI-FACE): start every
targeted class from a near-constant image plus a little Gaussian noise, take gradient steps on
the cost ``c(x) = 1 - softmax(model(x))[class]`` for a fixed number of iterations, and every
``process_every`` iterations apply *PROCESS*, a denoising step: a 3x3 median filter followed by
clamping to the valid pixel range (in the normalised space the model sees). The paper used
``process_every`` in [500, 1000].

Two choices the paper leaves open, measured on real MNIST with the small CNN:

* The constant is mid-grey (raw 0.5, the centre of the valid range) and the noise 0.1
  (normalised units). Around the data set's mean pixel value with noise 0.01 every ReLU of the
  first layer was off: the gradient was exactly zero and the image never moved.
* Steps are *normalised*: each moves an image by ``lr`` (root-mean-square per pixel) against the
  cost's gradient. The raw gradient of ``1 - p`` near a constant image is ~1e-3, so plain steps
  of the paper's size left the image where it started after 1,000 iterations.

All images are inverted together as one batch (the model is in eval mode, so they do not
interact); ``restarts`` inversions per class differ only in their starting noise.

Nobody should judge an inversion by eye, so each inversion gets two numbers:

``judge_confidence``
    How confidently *independent* models (the shadow models, trained on other halves of the
    data) classify the inversion as the targeted class: their mean softmax probability of it.
    An inversion that only fools the attacked model (adversarial noise) scores near chance.
``mean_image_corr``
    Pearson correlation between the inversion and the mean image of the class's reference
    records (e.g. held-out records of the class): does it look like the average example?

``audit.inversion.score`` (the headline) is the mean judge confidence over the targeted classes
(each class's restarts averaged first); ``audit.inversion.judge_confidence`` (the same value)
and ``audit.inversion.mean_image_corr`` are logged beside it. The correlation is reported but
not the headline: measured on MNIST it stayed within +-0.25 of zero whether or not the model
knew the class (the inversions keep a grey background and stroke fragments), while the judges'
confidence in a class's inversion fell from ~0.35-0.7 to ~0.01-0.3 once the class was removed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InputError
from ..learning.data import Records
from ..progress import Progress

__all__ = [
    "INVERSION_METRICS",
    "InversionResult",
    "denormalize",
    "inversion_audit",
    "inversion_scores",
    "invert_classes",
    "pixel_bounds",
    "process",
    "save_image_grid",
]

INVERSION_METRICS = ("audit.inversion.score", "audit.inversion.judge_confidence", "audit.inversion.mean_image_corr")


def _norm(records: Records) -> tuple[torch.Tensor, torch.Tensor]:
    n = records.spec["normalization"]
    mean = torch.tensor([float(m) for m in n["mean"]], dtype=torch.float32).view(1, -1, 1, 1)
    std = torch.tensor([float(s) for s in n["std"]], dtype=torch.float32).view(1, -1, 1, 1)
    return mean, std


def pixel_bounds(records: Records) -> tuple[torch.Tensor, torch.Tensor]:
    """(low, high), each (1, C, 1, 1): raw pixel values 0 and 1 in the normalised space of ``records``."""
    mean, std = _norm(records)
    return (0.0 - mean) / std, (1.0 - mean) / std


def denormalize(x: torch.Tensor, records: Records) -> torch.Tensor:
    """Normalised images back to raw pixel values in [0, 1] (clamped)."""
    mean, std = _norm(records)
    return (x.detach().cpu().float() * std + mean).clamp(0.0, 1.0)


def _median3x3(x: torch.Tensor) -> torch.Tensor:
    n, c, h, w = x.shape
    padded = F.pad(x, (1, 1, 1, 1), mode="replicate")
    patches = F.unfold(padded, kernel_size=3)  # (n, c*9, h*w)
    return patches.view(n, c, 9, h * w).median(dim=2).values.view(n, c, h, w)


def process(x: torch.Tensor, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
    """PROCESS: a 3x3 median filter (edge pixels replicated) then clamp to ``[low, high]``."""
    return torch.maximum(torch.minimum(_median3x3(x), high), low)


def invert_classes(
    model: nn.Module,
    records: Records,
    classes: Sequence[int],
    *,
    iterations: int = 1000,
    process_every: int = 500,
    lr: float = 0.01,
    noise: float = 0.1,
    restarts: int = 1,
    seed: int = 0,
    device: str | torch.device = "cpu",
) -> torch.Tensor:
    """Invert ``model`` ``restarts`` times for each class: (len(classes) * restarts, C, H, W).

    Images are class-major (all restarts of ``classes[0]`` first) and normalised. Each of the
    ``iterations`` steps moves every image by ``lr`` (root-mean-square per pixel, normalised
    units) against the gradient of ``1 - p_class``; PROCESS runs after every
    ``process_every``-th step and a final clamp keeps pixels valid. ``noise`` is the standard
    deviation (normalised units) of the starting noise, drawn from ``seed``; restarts differ
    only in their noise. ``model`` must already be on ``device``; its parameters, gradients
    and train/eval mode are left as they were.
    """
    cls = [int(c) for c in classes for _ in range(int(restarts))]
    bad = [c for c in cls if not 0 <= c < records.num_classes]
    if not len(classes) or bad:
        raise InputError(
            f"classes to invert must be 0..{records.num_classes - 1} of {records.spec.get('spec')!r}; got {list(classes)!r}."
        )
    if iterations < 1 or process_every < 1 or lr <= 0 or noise < 0 or restarts < 1:
        raise InputError(
            "inversion needs iterations >= 1, process_every >= 1, lr > 0, noise >= 0, restarts >= 1; "
            f"got {iterations}, {process_every}, {lr}, {noise}, {restarts}."
        )
    low, high = (b.to(device) for b in pixel_bounds(records))
    c, h, w = records.x.shape[1:]
    gen = torch.Generator().manual_seed(int(seed))
    start = ((low + high) / 2).cpu().expand(len(cls), c, h, w)  # mid-grey: the centre of the valid range
    x = (start + noise * torch.randn(len(cls), c, h, w, generator=gen)).to(device).requires_grad_(True)
    target = torch.tensor(cls, dtype=torch.int64, device=device)
    was_training = model.training
    model.eval()
    requires = [q.requires_grad for q in model.parameters()]
    for q in model.parameters():
        q.requires_grad_(False)
    prog = Progress("model inversion", total=int(iterations), unit="iterations")
    try:
        for it in range(int(iterations)):
            p = torch.softmax(model(x), dim=1).gather(1, target.view(-1, 1))
            cost = (1.0 - p).sum()
            (grad,) = torch.autograd.grad(cost, x)
            with torch.no_grad():
                rms = grad.pow(2).mean(dim=(1, 2, 3), keepdim=True).sqrt()
                x -= lr * grad / rms.clamp_min(1e-12)
                if (it + 1) % process_every == 0:
                    x.copy_(process(x, low, high))
            prog.update(cost=float(cost.detach()) / len(cls))
    finally:
        for p_, r in zip(model.parameters(), requires):
            p_.requires_grad_(r)
        model.train(was_training)
        prog.close()
    return torch.maximum(torch.minimum(x.detach(), high), low).cpu()


@torch.no_grad()
def inversion_scores(
    images: torch.Tensor,
    classes: Sequence[int],
    records: Records,
    *,
    judges: Sequence[nn.Module],
    reference_idx: np.ndarray,
    device: str | torch.device = "cpu",
) -> tuple[np.ndarray, np.ndarray]:
    """(judge_confidence, mean_image_corr) per inverted image; ``classes`` names each image's class.

    ``reference_idx``: positions of records whose per-class mean image is the comparison (the
    held-out records are a good choice); a class without reference records gets nan.
    """
    cls = torch.tensor([int(c) for c in classes], dtype=torch.int64)
    if len(cls) != len(images):
        raise InputError(f"{len(images)} inverted images but {len(cls)} classes.")
    if not judges:
        raise InputError("inversion scoring needs at least one judge model (e.g. the shadow models).")
    conf = torch.zeros(len(cls), dtype=torch.float64)
    for j in judges:
        j.eval()
        conf += torch.softmax(j(images.to(device)).double().cpu(), dim=1).gather(1, cls.view(-1, 1)).squeeze(1)
    conf /= len(judges)
    ref = np.asarray(reference_idx, dtype=np.int64)
    y_ref = records.y[ref]
    corr = np.full(len(cls), np.nan)
    for i, c in enumerate(cls.tolist()):
        members = ref[(y_ref == c).numpy()]
        if len(members) == 0:
            continue
        mean_img = records.x[members].double().mean(0).flatten()
        a = images[i].double().flatten()
        a, b = a - a.mean(), mean_img - mean_img.mean()
        denom = float(a.norm() * b.norm())
        corr[i] = float(a @ b) / denom if denom > 0 else 0.0
    return conf.numpy(), corr


@dataclass
class InversionResult:
    """Inverted images with their scores and the settings used.

    ``classes`` are the targeted classes; ``images`` (len(classes) * restarts, C, H, W, normalised,
    class-major), ``judge_confidence`` and ``mean_image_corr`` have one entry per image.
    """

    classes: list[int]
    restarts: int
    images: torch.Tensor
    judge_confidence: np.ndarray
    mean_image_corr: np.ndarray
    settings: dict[str, Any] = field(default_factory=dict)

    def per_class(self) -> dict[int, dict[str, float]]:
        """Per targeted class: mean judge confidence and mean image correlation over its restarts."""
        j = self.judge_confidence.reshape(len(self.classes), self.restarts)
        c = self.mean_image_corr.reshape(len(self.classes), self.restarts)
        return {
            k: {"judge_confidence": float(j[i].mean()), "mean_image_corr": float(c[i].mean())}
            for i, k in enumerate(self.classes)
        }

    def metrics(self, prefix: str = "audit") -> dict[str, float]:
        """``<prefix>.inversion.score`` (= mean judge confidence), ``.judge_confidence``, ``.mean_image_corr``.

        Means over the targeted classes (each class weighs the same); a class without reference
        records is left out of the correlation.
        """
        per = self.per_class().values()
        judge = float(np.mean([p["judge_confidence"] for p in per]))
        corrs = [p["mean_image_corr"] for p in per if math.isfinite(p["mean_image_corr"])]
        corr = float(np.mean(corrs)) if corrs else math.nan
        return {
            f"{prefix}.inversion.score": judge,
            f"{prefix}.inversion.judge_confidence": judge,
            f"{prefix}.inversion.mean_image_corr": corr,
        }

    def save_png(self, path: str | Path, records: Records) -> Path:
        """A PNG grid of the inversions (one row per class when restarts > 1), captioned
        ``class: judge confidence``."""
        image_classes = [c for c in self.classes for _ in range(self.restarts)]
        labels = [f"{records.classes[c]}: {p:.2f}" for c, p in zip(image_classes, self.judge_confidence)]
        return save_image_grid(
            self.images, path, records=records, labels=labels, ncols=self.restarts if self.restarts > 1 else None
        )


def inversion_audit(
    model: nn.Module,
    records: Records,
    classes: Sequence[int],
    *,
    judges: Sequence[nn.Module],
    reference_idx: np.ndarray,
    iterations: int = 1000,
    process_every: int = 500,
    lr: float = 0.01,
    noise: float = 0.1,
    restarts: int = 1,
    seed: int = 0,
    device: str | torch.device = "cpu",
) -> InversionResult:
    """Invert ``model`` for ``classes`` and score the inversions with ``judges`` (see module doc)."""
    images = invert_classes(
        model,
        records,
        classes,
        iterations=iterations,
        process_every=process_every,
        lr=lr,
        noise=noise,
        restarts=restarts,
        seed=seed,
        device=device,
    )
    image_classes = [int(c) for c in classes for _ in range(int(restarts))]
    judge, corr = inversion_scores(
        images, image_classes, records, judges=judges, reference_idx=reference_idx, device=device
    )
    settings = {
        "iterations": int(iterations),
        "process_every": int(process_every),
        "lr": float(lr),
        "noise": float(noise),
        "restarts": int(restarts),
        "seed": int(seed),
        "n_judges": len(judges),
    }
    return InversionResult([int(c) for c in classes], int(restarts), images, judge, corr, settings)


def save_image_grid(
    images: torch.Tensor,
    path: str | Path,
    *,
    records: Records,
    labels: Sequence[str] | None = None,
    ncols: int | None = None,
    min_tile: int = 84,
) -> Path:
    """Write normalised ``images`` (N, C, H, W) as one PNG grid (PIL), captions under each tile.

    Tiles are scaled up by an integer factor (nearest neighbour) to at least ``min_tile`` pixels;
    ``ncols`` defaults to all images in one row up to 10. One- and three-channel images only.
    """
    from PIL import Image, ImageDraw

    if images.ndim != 4 or images.shape[1] not in (1, 3) or len(images) == 0:
        raise InputError(f"an image grid needs N x 1|3 x H x W images, got {tuple(images.shape)}.")
    if labels is not None and len(labels) != len(images):
        raise InputError(f"{len(images)} images but {len(labels)} labels.")
    raw = (denormalize(images, records) * 255.0).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    n, h, w, c = raw.shape
    k = max(1, math.ceil(min_tile / max(h, w)))
    cols = ncols or min(n, 10)
    rows = math.ceil(n / cols)
    pad, cap = 4, (14 if labels is not None else 0)
    tile_w, tile_h = w * k, h * k
    canvas = Image.new("RGB", (cols * (tile_w + pad) + pad, rows * (tile_h + cap + pad) + pad), (32, 32, 32))
    draw = ImageDraw.Draw(canvas)
    for i in range(n):
        r_, c_ = divmod(i, cols)
        img = raw[i].repeat(k, 0).repeat(k, 1)
        tile = Image.fromarray(img[:, :, 0], mode="L").convert("RGB") if c == 1 else Image.fromarray(img, mode="RGB")
        x0, y0 = pad + c_ * (tile_w + pad), pad + r_ * (tile_h + cap + pad)
        canvas.paste(tile, (x0, y0))
        if labels is not None:
            draw.text((x0 + 2, y0 + tile_h + 1), str(labels[i]), fill=(230, 230, 230))
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(out, format="PNG")
    return out
