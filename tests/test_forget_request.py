"""Typed options and forget as named steps (issue 14): ForgetRequest, PlannedForget, each method's
own options dataclass."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from helpers import MODEL


def test_a_method_reads_its_own_typed_options_from_any_request():
    from mlflow_amnesia.unlearn import METHODS, AllOptions, MethodOptions
    from mlflow_amnesia.unlearn.amnesiac import AmnesiacOptions
    from mlflow_amnesia.unlearn.common import EpochsOptions
    from mlflow_amnesia.unlearn.relabel import RelabelOptions

    every = AllOptions(repair="replay", repair_epochs=2, repair_lr=0.5, epochs=3, copies=2, cls="7")
    assert AmnesiacOptions.of(every) == AmnesiacOptions(repair="replay", repair_epochs=2, repair_lr=0.5)
    assert RelabelOptions.of(every) == RelabelOptions(epochs=3, copies=2, cls="7")
    assert EpochsOptions.of({"epochs": 3, "repair": "none", "copies": 4}) == EpochsOptions(epochs=3)  # a plain mapping too
    assert AmnesiacOptions.of(None) == AmnesiacOptions()
    assert {n: METHODS.get(n).Options for n in METHODS.names()} == {
        "amnesiac": AmnesiacOptions, "finetune": EpochsOptions, "relabel": RelabelOptions, "retrain": EpochsOptions}
    assert all(issubclass(o, MethodOptions) and dataclasses.is_dataclass(o) for o in (AmnesiacOptions, RelabelOptions))


def test_a_forget_request_holds_what_the_user_asked_and_its_method_options():
    from mlflow_amnesia.jobs.forget import ForgetRequest
    from mlflow_amnesia.unlearn import AllOptions

    r = ForgetRequest("m", ids=["a"], method="relabel", method_epochs=2, copies=3, repair_lr=0.1)
    assert r.method_options() == AllOptions(repair=None, repair_epochs=1, repair_lr=0.1, epochs=2, copies=3, cls=None)
    with pytest.raises(TypeError, match="unexpected keyword argument 'colour'"):
        ForgetRequest("m", colour="red")


def test_forget_takes_its_keywords_as_a_request(monkeypatch):
    import importlib

    import mlflow_amnesia as ma

    forget_mod = importlib.import_module("mlflow_amnesia.jobs.forget")  # the real module (ma.forget is its function)

    seen = []
    monkeypatch.setattr(forget_mod, "run_forget", lambda request: seen.append(request) or "done")
    assert ma.forget("m", ids=["a"], repair="finetune", yes=True, dry_run=True) == "done"
    assert seen == [forget_mod.ForgetRequest("m", ids=["a"], repair="finetune", yes=True, dry_run=True)]
    with pytest.raises(TypeError, match="unexpected keyword argument"):
        ma.forget("m", idz=["a"], dry_run=True)


def test_plan_forget_is_typed_and_still_unpacks_as_before(registry_copy):
    from mlflow_amnesia.mlflow.flavor import AmnesiaModel
    from mlflow_amnesia.jobs.forget import ForgetPlan, PlannedForget, plan_forget
    from mlflow_amnesia.keys import HASH_BYTES

    planned = plan_forget(MODEL, ids=["digits:0"])
    assert isinstance(planned, PlannedForget) and isinstance(planned.plan, ForgetPlan)
    assert isinstance(planned.model, AmnesiaModel) and int(planned.version.version) == 1
    assert planned.target_hashes.shape == (1, HASH_BYTES) and planned.records is None
    plan, mv, am, key, hashes, records = planned
    assert plan is planned.plan and key == planned.key and np.array_equal(hashes, planned.target_hashes)
    assert len(plan.steps) == plan.n_steps > 0
