"""forget's ``on_epoch`` hook: the model at each moment a per-epoch curve needs, and the metrics
it returns logged on the forget run at ``step=epoch`` (the paper's Figures 1/2 and Table 1 read
them; examples/paper/)."""

from __future__ import annotations

import copy

import numpy as np
import torch

from helpers import MODEL, invoke


def _ids(skip: int, n: int) -> list[str]:
    return invoke("records", "--model", MODEL, "--limit", str(skip + n)).output.split()[skip:]


def _history(run_id: str, key: str) -> list[tuple[int, float]]:
    import mlflow

    return sorted((m.step, m.value) for m in mlflow.MlflowClient().get_metric_history(run_id, key))


def _state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def test_on_epoch_sees_every_epoch_and_its_metrics_are_logged_per_step(registry_copy):
    import mlflow_amnesia as ma
    from mlflow_amnesia.mlflow.flavor import load_model
    from mlflow_amnesia.jobs.forget import plan_forget
    from mlflow_amnesia.unlearn.amnesiac import rolled_back_sums, subtract

    seen: dict[int, dict] = {}

    def on_epoch(epoch, module):
        seen[epoch] = _state(module)
        return {"epoch.norm": float(sum(float(v.double().norm()) for v in module.state_dict().values())),
                "epoch.marker": float(epoch)}

    # finetune: one call per trained epoch, 1-based; the last one sees the registered weights
    r = ma.forget(MODEL, ids=_ids(0, 2), method="finetune", method_epochs=2, yes=True, audit=False, on_epoch=on_epoch)
    assert sorted(seen) == [1, 2]
    assert [s for s, _ in _history(r.run_id, "epoch.marker")] == [1, 2]
    assert [v for _, v in _history(r.run_id, "epoch.marker")] == [1.0, 2.0]
    registered = load_model(f"models:/{MODEL}/{r.version}").module.state_dict()
    assert all(torch.equal(registered[k], v) for k, v in seen[2].items())
    assert not torch.equal(seen[1]["classifier.3.weight"], seen[2]["classifier.3.weight"])

    # amnesiac + repair: epoch 0 is the model right after the rollback (f32 codec: exact)
    seen.clear()
    ids = _ids(2, 2)
    plan, _, parent, key, _, _ = plan_forget(MODEL, ids=ids)
    expected = copy.deepcopy(parent.module)
    subtract(expected, rolled_back_sums(parent, plan.steps, key), len(plan.steps))
    r = ma.forget(MODEL, ids=ids, method="amnesiac", repair="finetune", repair_epochs=1, yes=True, audit=False,
                  on_epoch=on_epoch)
    assert sorted(seen) == [0, 1]
    assert all(np.allclose(seen[0][k].numpy(), v.numpy(), atol=1e-6) for k, v in expected.state_dict().items())
    assert [s for s, _ in _history(r.run_id, "epoch.norm")] == [0, 1]

    # relabel and retrain report their epochs the same way
    seen.clear()
    ma.forget(MODEL, ids=_ids(4, 1), method="relabel", method_epochs=2, yes=True, audit=False, on_epoch=on_epoch)
    assert sorted(seen) == [1, 2]
    seen.clear()
    ma.forget(MODEL, ids=_ids(5, 1), method="retrain", yes=True, audit=False, on_epoch=on_epoch)
    assert sorted(seen) == [1, 2]  # the recipe's 2 epochs, from the initial weights


def test_without_on_epoch_nothing_per_epoch_is_logged(registry_copy):
    import mlflow

    import mlflow_amnesia as ma

    r = ma.forget(MODEL, ids=_ids(0, 1), method="finetune", yes=True, audit=False)
    assert not [k for k in mlflow.MlflowClient().get_run(r.run_id).data.metrics if k.startswith("epoch.")]
