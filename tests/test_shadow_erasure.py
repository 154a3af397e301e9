"""The shadow pool forgets too (issue 16, item 4): `purge --request` erases the audit's shadow models
that trained on a request's records, and no audit trains a shadow model on them again.

The audit's shadow models are trained on every record of the split, the forgotten ones included
(a forget's audit needs shadows that trained on its records). `requests` lists the cached runs
(assembled set and member runs) that did as a place still holding the records; `purge --request`
deletes their artifacts (listed empty afterwards), tags them, and enters it in the ledger; from
then on every audit's pool leaves the records out (the set says which requests it left out, tag
``amnesia.shadow_excludes``), so the request stays finished. A purge SIGKILLed between two of
these steps is finished by its re-run.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from helpers import KEY, invoke

pytestmark = pytest.mark.slow  # a short training with 2 shadow models and a forget, restored per kill

REPO = Path(__file__).resolve().parents[1]
CHILD = Path(__file__).with_name("reliability_child.py")
M = "shadowed"
AUDIT = ("--shadows", "2", "--inversion", "off")
POINTS = ["shadow-started", "shadow-deleted", "shadow-tagged"]


def _env(base: Path) -> dict[str, str]:
    uri = f"sqlite:///{base / 'mlflow.db'}"
    return {"MLFLOW_AMNESIA_QUIET": "1", "MLFLOW_AMNESIA_KEY": KEY, "MLFLOW_TRACKING_URI": uri,
            "MLFLOW_REGISTRY_URI": uri, "XDG_CACHE_HOME": str(base / "cache")}


def _use(base: Path, mp: pytest.MonkeyPatch) -> None:
    import mlflow

    for k, v in _env(base).items():
        mp.setenv(k, v)
    mp.chdir(base)
    mlflow.set_tracking_uri(_env(base)["MLFLOW_TRACKING_URI"])
    mlflow.set_registry_uri(_env(base)["MLFLOW_REGISTRY_URI"])


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """v1 (small CNN, 1 epoch, its audit's 2 shadow models cached), v2 forgot 3 records with an
    audit on the same pool; saved as a copy, so each test restores the same registry and files."""
    root = tmp_path_factory.mktemp("shadow-erasure")
    base = root / "registry"
    base.mkdir()
    mp = pytest.MonkeyPatch()
    try:
        _use(base, mp)
        invoke("train", "--arch", "cnn", "--epochs", "1", "--batch-size", "128", "--codec", "f32", "--model-name", M,
               *AUDIT)
        ids = invoke("records", "--model", M, "--limit", "3").output.split()
        (base / "ids.txt").write_text("\n".join(ids) + "\n")
        invoke("forget", "--model", M, "--records", "ids.txt", "--yes", *AUDIT)
    finally:
        mp.undo()
    shutil.copytree(base, root / "saved", symlinks=True)
    return SimpleNamespace(base=base, saved=root / "saved", ids=ids, positions=sorted(int(i.split(":")[1]) for i in ids))


@pytest.fixture
def world(built, monkeypatch, request):
    """The module's registry as the fixture left it (artifacts restored in place: their paths are
    absolute; the database restored too)."""
    for d in ("mlruns", "cache"):
        shutil.rmtree(built.base / d, ignore_errors=True)
        if (built.saved / d).exists():
            shutil.copytree(built.saved / d, built.base / d, symlinks=True)
    shutil.copy(built.saved / "mlflow.db", built.base / "mlflow.db")
    _use(built.base, monkeypatch)
    return built


def _request() -> dict:
    (req,) = json.loads(invoke("requests", "--model", M, "--format", "json").output)
    return req


def _pool(req: dict) -> dict:
    (p,) = [p for p in req["places"] if p["place"] == "shadow pool"]
    return p


def _shadow_runs(include_purged: bool = True) -> list:
    import mlflow

    c = mlflow.MlflowClient()
    exp = c.get_experiment_by_name("mlflow-amnesia-shadows")
    runs = c.search_runs([exp.experiment_id], max_results=1000)
    return [r for r in runs if include_purged or "amnesia.purged" not in r.data.tags]


def _files(run) -> list[str]:
    from mlflow_amnesia.mlflow.artifacts import list_files, repo_at

    return [p for p, _ in list_files(repo_at(run.info.artifact_uri))]


def _ledger_kinds() -> list[str]:
    from mlflow_amnesia.mlflow import ledger

    return sorted(e.kind for e in ledger.entries(model=M))


def _assert_erased(world, req_hash: str) -> None:
    """The request is finished: every shadow run that trained on its records has no artifact left
    and is tagged purged, the ledger says so, and the pool place says purged."""
    req = _request()
    assert _pool(req)["status"] == "purged", _pool(req)
    assert req["done"], req
    held = [r for r in _shadow_runs() if req_hash not in r.data.tags.get("amnesia.shadow_excludes", "").split(",")]
    assert len(held) == 3  # the set and its 2 members, all of which trained on the records
    for r in held:
        assert "amnesia.purged" in r.data.tags and _files(r) == [], (r.info.run_id, _files(r))
    assert _ledger_kinds().count("purged-shadows") == 1
    assert not list((world.base / "cache").rglob("member.json")), "a downloaded member copy is left"


def test_requests_lists_the_pool_and_purge_request_erases_it_for_good(world):
    req = _request()
    pool = _pool(req)
    assert pool["status"] == "still holds" and not req["done"]
    assert "1 cached shadow set(s) and 2 pool member run(s)" in pool["detail"], pool["detail"]
    runs = _shadow_runs()
    assert len(runs) == 3 and all(_files(r) for r in runs)
    assert {r.data.tags.get("amnesia.shadow_excludes") for r in runs} == {""}  # their pool left nothing out

    dry = invoke("purge", "--model", M, "--request", req["request"], "--dry-run").output
    assert "shadow pool: delete the artifacts" in dry and "3 run(s)" in dry, dry
    assert all(_files(r) for r in _shadow_runs()), "a dry run deleted something"

    out = invoke("purge", "--model", M, "--request", req["request"], "--yes").output
    assert "purged 3 shadow run(s) that trained on the records" in out, out
    _assert_erased(world, req["request"])
    again = invoke("purge", "--model", M, "--request", req["request"], "--yes").output
    assert "nothing left for a purge to delete" in again and _ledger_kinds().count("purged-shadows") == 1

    # a later audit trains a new pool that leaves the records out, and says which request it left out
    invoke("audit", "--model", M, "--version", "2", "--force", *AUDIT)
    fresh = _shadow_runs(include_purged=False)
    assert len(fresh) == 3 and {r.data.tags["amnesia.shadow_excludes"] for r in fresh} == {req["request"]}
    (s,) = [r for r in fresh if "amnesia.shadow_key" in r.data.tags]
    import mlflow

    from mlflow_amnesia.audit.shadow import ShadowSet

    local = mlflow.artifacts.download_artifacts(run_id=s.info.run_id, artifact_path="shadows",
                                                dst_path=str(world.base / "check"))
    shadows = ShadowSet.load(local)
    pool = {int(p) for p in shadows.pool}
    assert pool and not pool & set(world.positions)
    assert shadows.info["excluded_requests"] == [req["request"]]
    assert _request()["done"], "the new pool must not reopen the request"


@pytest.mark.parametrize("point", POINTS)
def test_a_shadow_purge_killed_between_two_steps_is_finished_by_its_rerun(world, point):
    req = _request()
    env = {**os.environ, **_env(world.base), "AMNESIA_TEST_KILL_AT": f"purge:{point}"}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    p = subprocess.run([sys.executable, str(CHILD), "purge", "--model", M, "--request", req["request"], "--yes"],
                       env=env, cwd=world.base, capture_output=True, text=True, timeout=300)
    assert p.returncode == -signal.SIGKILL, p.stdout + p.stderr
    # killed: the pool is not reported erased, and no audit uses a run being erased
    assert _pool(_request())["status"] == "still holds"
    from mlflow_amnesia.mlflow.shadow_cache import usable

    started = [r for r in _shadow_runs() if "amnesia.purge_started" in r.data.tags]
    assert started and not any(usable(r) for r in started)
    invoke("purge", "--model", M, "--request", req["request"], "--yes")
    _assert_erased(world, req["request"])
