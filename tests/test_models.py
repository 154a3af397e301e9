"""Architectures from JSON specs: sizes, forward shapes, user builders, validation."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from mlflow_amnesia.errors import InputError
from mlflow_amnesia.learning.models import SmallCNN, build_model, default_arch_spec, validate_spec


def tiny_builder(in_channels: int = 1, num_classes: int = 10, hidden: int = 16) -> nn.Module:
    """A user's own architecture, found by import path or entry point."""
    return nn.Sequential(nn.Flatten(), nn.Linear(in_channels * 64, hidden), nn.ReLU(), nn.Linear(hidden, num_classes))


def not_a_module(**kwargs):
    return {"weights": 1}


BUILDER = f"{__name__}:tiny_builder"


def n_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def records_like(c: int, k: int, h: int, w: int | None = None):
    """What default_arch_spec reads from a Records: channels, classes, image size."""
    return SimpleNamespace(in_channels=c, num_classes=k, image_size=(h, w or h))


def test_cifar_resnet18_has_the_published_parameter_count():
    m = build_model({"arch": "resnet18", "stem": "cifar", "in_channels": 3, "num_classes": 100})
    assert n_params(m) == 11_220_132
    assert m.conv1.kernel_size == (3, 3) and m.conv1.stride == (1, 1) and isinstance(m.maxpool, nn.Identity)
    imagenet = build_model({"arch": "resnet18", "stem": "imagenet", "in_channels": 3, "num_classes": 100})
    assert n_params(imagenet) == 11_227_812 and imagenet.conv1.kernel_size == (7, 7)


@pytest.mark.parametrize("size", [8, 28])
@pytest.mark.parametrize(
    "spec",
    [
        {"arch": "resnet18", "stem": "cifar"},
        {"arch": "resnet18", "stem": "imagenet"},
        {"arch": "cnn"},
    ],
    ids=["resnet18-cifar", "resnet18-imagenet", "cnn"],
)
def test_forward_shapes_on_digits_and_mnist_sizes(spec, size):
    full = {**spec, "in_channels": 1, "num_classes": 10}
    if spec["arch"] == "cnn":
        full["image_size"] = size
    m = build_model(full).eval()
    with torch.no_grad():
        out = m(torch.randn(3, 1, size, size))
    assert out.shape == (3, 10)


def test_cnn_has_no_batchnorm_and_takes_non_square_images():
    m = build_model({"arch": "cnn", "in_channels": 3, "num_classes": 5, "image_size": [12, 20]})
    assert isinstance(m, SmallCNN)
    assert not any(isinstance(x, nn.modules.batchnorm._BatchNorm) for x in m.modules())
    assert set(m.state_dict()) == {n for n, _ in m.named_parameters()}  # every state tensor is a parameter
    assert m(torch.randn(2, 3, 12, 20)).shape == (2, 5)


def test_default_arch_spec_fits_the_records():
    digits = records_like(1, 10, 8)
    assert default_arch_spec("resnet18", digits) == {"arch": "resnet18", "stem": "cifar", "in_channels": 1, "num_classes": 10}
    assert default_arch_spec("resnet18", records_like(3, 100, 224))["stem"] == "imagenet"
    assert default_arch_spec("cnn", digits) == {"arch": "cnn", "in_channels": 1, "num_classes": 10, "image_size": 8}
    assert default_arch_spec("cnn", records_like(1, 10, 12, 20))["image_size"] == [12, 20]
    spec = default_arch_spec(BUILDER, digits)
    assert spec == {"arch": "builder", "builder": BUILDER, "kwargs": {"in_channels": 1, "num_classes": 10}}
    assert build_model(spec)(torch.zeros(2, 1, 8, 8)).shape == (2, 10)
    with pytest.raises(InputError, match="unknown architecture 'resnet50'"):
        default_arch_spec("resnet50", digits)


def test_builder_by_import_path():
    m = build_model({"arch": "builder", "builder": BUILDER, "kwargs": {"num_classes": 3, "hidden": 7}})
    assert m(torch.zeros(4, 1, 8, 8)).shape == (4, 3)
    assert m[1].out_features == 7


def test_builder_by_entry_point(tmp_path, monkeypatch):
    dist = tmp_path / "my_archs-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: my-archs\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(f"[mlflow_amnesia.architectures]\ntiny = {BUILDER}\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    m = build_model({"arch": "builder", "builder": "tiny", "kwargs": {"num_classes": 4}})
    assert m(torch.zeros(1, 1, 8, 8)).shape == (1, 4)
    with pytest.raises(InputError, match=r"unknown architecture 'small'.*installed: tiny"):
        build_model({"arch": "builder", "builder": "small"})


@pytest.mark.parametrize(
    "builder, pattern",
    [
        ("no_such_package.models:net", "cannot import module 'no_such_package.models'"),
        (f"{__name__}:missing_fn", "has no attribute 'missing_fn'"),
        (f"{__name__}:BUILDER", "is a str, not a function"),
        (f"{__name__}:not_a_module", "returned dict, not a torch.nn.Module"),
        ("nonexistent-entry-point", "unknown architecture 'nonexistent-entry-point'"),
    ],
)
def test_bad_builders_are_named(builder, pattern):
    with pytest.raises(InputError, match=pattern) as e:
        build_model({"arch": "builder", "builder": builder})
    assert builder.split(":")[0] in str(e.value)


def test_builder_kwargs_are_checked_before_the_call():
    with pytest.raises(InputError, match=r"does not accept kwargs \['depth'\]"):
        build_model({"arch": "builder", "builder": BUILDER, "kwargs": {"depth": 3}})


@pytest.mark.parametrize(
    "spec, pattern",
    [
        ({"arch": "vgg", "in_channels": 3, "num_classes": 10}, "unknown architecture 'vgg'"),
        ({"in_channels": 3}, "unknown architecture None"),
        ({"arch": "resnet18", "in_channels": 3, "num_classes": 10}, "missing stem"),
        ({"arch": "resnet18", "stem": "cifar", "in_channels": 3, "num_classes": 10, "dropout": 0.1}, "unknown dropout"),
        ({"arch": "resnet18", "stem": "tiny", "in_channels": 3, "num_classes": 10}, "stem must be one of cifar, imagenet"),
        ({"arch": "cnn", "in_channels": 0, "num_classes": 10, "image_size": 8}, "in_channels must be an integer >= 1"),
        ({"arch": "cnn", "in_channels": 1, "num_classes": 10.0, "image_size": 8}, "num_classes must be an integer"),
        ({"arch": "cnn", "in_channels": 1, "num_classes": 10, "image_size": 2}, "image_size must be"),
        ({"arch": "cnn", "in_channels": 1, "num_classes": 10, "image_size": torch.tensor(8)}, "not JSON-serialisable"),
        ({"arch": "builder", "builder": BUILDER, "kwargs": [1]}, "kwargs must be a JSON object"),
        ([("arch", "cnn")], "must be a JSON object"),
    ],
)
def test_invalid_specs_are_refused(spec, pattern):
    with pytest.raises(InputError, match=pattern):
        build_model(spec)


def test_spec_json_roundtrip_builds_the_same_architecture():
    for spec in (
        {"arch": "resnet18", "stem": "cifar", "in_channels": 1, "num_classes": 10},
        {"arch": "cnn", "in_channels": 1, "num_classes": 10, "image_size": 28},
        {"arch": "builder", "builder": BUILDER, "kwargs": {"hidden": 5}},
    ):
        back = json.loads(json.dumps(validate_spec(spec)))
        a, b = build_model(spec).state_dict(), build_model(back).state_dict()
        assert list(a) == list(b)
        assert all(a[k].shape == b[k].shape and a[k].dtype == b[k].dtype for k in a)


def test_seeded_builds_are_identical_and_leave_the_global_rng_alone():
    spec = {"arch": "cnn", "in_channels": 1, "num_classes": 10, "image_size": 8}
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    a = build_model(spec, seed=1).state_dict()
    b = build_model(spec, seed=1).state_dict()
    assert torch.equal(torch.rand(3), expected_next)
    assert all(torch.equal(a[k], b[k]) for k in a)
    c = build_model(spec, seed=2).state_dict()
    assert not torch.equal(a["features.0.weight"], c["features.0.weight"])
