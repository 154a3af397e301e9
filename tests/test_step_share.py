"""The step-share guard (`forget --max-step-share`): a share in (0, 1], gating both the request's
share of the recorded steps and the lineage's cumulative share (steps already rolled back plus
this request's), so chained small forgets cannot roll back most of the training unnoticed.
"""

from __future__ import annotations

import pytest
from helpers import MODEL, invoke


@pytest.mark.parametrize("value", ["nan", "-1", "0", "1.5", "inf", "-inf"])
def test_a_share_outside_0_1_is_refused_in_one_line(registry_copy, value):
    from mlflow_amnesia.mlflow import registry

    r = invoke("forget", "--model", MODEL, "--records", "ids.txt", "--yes", "--no-audit", "--max-step-share", value,
               ok=False)
    assert r.exit_code != 0 and "Traceback" not in r.output
    assert len(r.output.strip().splitlines()) == 1, r.output
    assert "--max-step-share" in r.output and value in r.output and "above 0 and at most 1" in r.output
    assert [int(v.version) for v in registry.client().search_model_versions(f"name='{MODEL}'")] == [1]


@pytest.mark.parametrize("value", [float("nan"), -1.0, 0.0, 1.5, float("inf")])
def test_forget_refuses_a_share_outside_0_1(registry_copy, value):
    from mlflow_amnesia.errors import InputError
    from mlflow_amnesia.jobs.forget import forget

    with pytest.raises(InputError, match="above 0 and at most 1"):
        forget(MODEL, ids=["digits:1"], yes=True, audit=False, max_step_share=value)


def test_a_share_of_1_is_accepted(registry_copy):
    r = invoke("forget", "--model", MODEL, "--records", "ids.txt", "--dry-run", "--max-step-share", "1", ok=False)
    assert "max-step-share" not in r.output  # gets past the option check (to the missing ids file)


def test_chained_forgets_are_gated_on_the_cumulative_share(registry_copy, tmp_path):
    from mlflow_amnesia.mlflow import registry
    from mlflow_amnesia.jobs.forget import plan_forget

    limit = 0.1
    accepted = 0
    for rid in invoke("records", "--model", MODEL, "--limit", "20").output.split():
        plan, _, am, *_ = plan_forget(MODEL, ids=[rid])
        if not len(plan.steps):
            continue
        cumulative = (len(am.rolled_back) + len(plan.steps)) / plan.total_steps
        assert plan.share <= limit  # each request alone stays under the guard
        (tmp_path / "ids.txt").write_text(rid + "\n")
        args = ["forget", "--model", MODEL, "--records", str(tmp_path / "ids.txt"), "--no-audit",
                "--max-step-share", str(limit)]
        r = invoke(*args, ok=False)
        if cumulative <= limit:
            assert r.exit_code == 0, r.output
            accepted += 1
            continue
        assert r.exit_code == 1 and "--yes" in r.output, r.output
        assert f"{plan.share:.2%}" in r.output and f"{cumulative:.2%}" in r.output
        assert "along this lineage" in r.output
        n = len(registry.client().search_model_versions(f"name='{MODEL}'"))
        invoke(*args, "--yes")  # and --yes proceeds
        assert len(registry.client().search_model_versions(f"name='{MODEL}'")) == n + 1
        break
    else:
        pytest.fail("the cumulative share never passed the limit")
    assert accepted >= 2
