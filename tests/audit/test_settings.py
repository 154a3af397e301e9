"""What an audit runs by default: inversion where it says something, iterations fitted to the image."""

from __future__ import annotations

import json

import pytest

from mlflow_amnesia.audit.privacy import AuditSettings, fitted_iterations

DIGITS = {"spec": "digits"}


@pytest.mark.parametrize(("shape", "expected"), [((1, 8, 8), 100), ((1, 28, 28), 1000), ((3, 32, 32), 1000),
                                                 ((1, 16, 16), 327), ((1, 2, 2), 100)])
def test_iterations_are_fitted_to_the_image_size(shape, expected):
    assert fitted_iterations(shape) == expected
    assert AuditSettings().iterations(shape) == (expected, expected // 2)


def test_explicit_iterations_and_process_every_win():
    assert AuditSettings(inversion_iterations=30).iterations((1, 28, 28)) == (30, 15)
    assert AuditSettings(inversion_iterations=30, process_every=500).iterations((1, 8, 8)) == (30, 30)
    assert AuditSettings(inversion_iterations=1).iterations((1, 8, 8)) == (1, 1)


def test_auto_inverts_a_forget_only():
    auto, on, off = AuditSettings(), AuditSettings(inversion="on"), AuditSettings(inversion="off")
    assert auto.inverts(forgot=True) and not auto.inverts(forgot=False)
    assert on.inverts(forgot=True) and on.inverts(forgot=False)
    assert not off.inverts(forgot=True) and not off.inverts(forgot=False)
    with pytest.raises(ValueError, match="inversion must be one of"):
        AuditSettings(inversion="sometimes")


def test_the_fingerprint_changes_with_what_the_audit_computes_and_only_then():
    def fp(s: AuditSettings, **kw) -> str:
        return s.fingerprint(DIGITS, (1, 8, 8), **{"privacy": True, "forgot": True, **kw})

    base = fp(AuditSettings())
    assert json.loads(base) == {"format": 1, "privacy": True, "shadows": 4, "shadow_seed": 0, "retain_sample": 200,
                                "inversion": [100, 50, 3], "acc_retain_max": 5000}
    # the same figures: spelled out defaults give the same line
    assert fp(AuditSettings(shadows=4, inversion_iterations=100, process_every=50)) == base
    # a trained version with inversion auto is not inverted: iterations do not matter there
    assert fp(AuditSettings(), forgot=False) == fp(AuditSettings(inversion_iterations=7), forgot=False)
    for other in (AuditSettings(shadows=2), AuditSettings(inversion_iterations=30), AuditSettings(inversion="off"),
                  AuditSettings(retain_sample=50), AuditSettings(shadow_seed=1)):
        assert fp(other) != base, other
    assert json.loads(fp(AuditSettings(), privacy=False)) == {"format": 1, "privacy": False, "acc_retain_max": 5000}
    assert fp(AuditSettings(), privacy=False) == fp(AuditSettings(shadows=2), privacy=False)
