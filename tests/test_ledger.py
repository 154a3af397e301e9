"""The erasure ledger (issue 16): a deletion request tracked across roots, retrains and killed runs.

One registry is built once for the module (it costs three short trainings and two forgets) and
the tests run on it in order, as a privacy officer would: a killed train and two roots both hold
the records, both roots forget them, a re-train leaves them out, one `purge --request` erases
every place, and an older request left open fails `requests --check`.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import KEY, invoke

pytestmark = pytest.mark.slow  # the module builds its registry once: three short trainings, two forgets

REPO = Path(__file__).resolve().parents[1]
CHILD = Path(__file__).with_name("reliability_child.py")
M = "ledgered"
TRAIN = ("train", "--arch", "cnn", "--epochs", "1", "--batch-size", "256", "--codec", "f32", "--no-audit", "--model-name", M)


def _today() -> dt.date:
    return dt.date.today()


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """Root v1, a train SIGKILLed after 3 steps (no version), root v2; the request R (3 records of v1)
    received 3 days ago, forgotten from v2 (-> v3) and from v1 (-> v4)."""
    base = tmp_path_factory.mktemp("ledger")
    mp = pytest.MonkeyPatch()
    env = {
        "MLFLOW_AMNESIA_QUIET": "1",
        "MLFLOW_AMNESIA_KEY": KEY,
        "XDG_CONFIG_HOME": str(base / "config"),
        "MLFLOW_AMNESIA_LOCK_DIR": str(base / "locks"),
        "MLFLOW_TRACKING_URI": f"sqlite:///{base / 'mlflow.db'}",
        "MLFLOW_REGISTRY_URI": f"sqlite:///{base / 'mlflow.db'}",
    }
    for k, v in env.items():
        mp.setenv(k, v)
    mp.chdir(base)
    import mlflow

    mlflow.set_tracking_uri(env["MLFLOW_TRACKING_URI"])
    mlflow.set_registry_uri(env["MLFLOW_REGISTRY_URI"])
    invoke(*TRAIN)
    child_env = {**os.environ, **env, "AMNESIA_TEST_KILL_AT": "recording:3"}
    child_env["PYTHONPATH"] = os.pathsep.join([str(REPO), child_env.get("PYTHONPATH", "")])
    p = subprocess.run([sys.executable, str(CHILD), *TRAIN], env=child_env, capture_output=True, text=True, timeout=300)
    assert p.returncode == -signal.SIGKILL, p.stdout + p.stderr
    invoke(*TRAIN)
    ids = invoke("records", "--model", M, "--version", "1", "--limit", "3").output.split()
    (base / "ids.txt").write_text("\n".join(ids) + "\n")
    received = (_today() - dt.timedelta(days=3)).isoformat()
    for v in ("2", "1"):
        invoke("forget", "--model", M, "--version", v, "--records", "ids.txt", "--yes", "--no-audit", "--received", received)
    yield {"base": base, "ids": ids, "received": received, "env": env}
    mp.undo()


@pytest.fixture
def world(built, monkeypatch):
    """The module's registry, as the current tracking store of the test (the autouse fixture gave it its own)."""
    import mlflow

    for k, v in built["env"].items():
        monkeypatch.setenv(k, v)
    monkeypatch.chdir(built["base"])
    mlflow.set_tracking_uri(built["env"]["MLFLOW_TRACKING_URI"])
    mlflow.set_registry_uri(built["env"]["MLFLOW_REGISTRY_URI"])
    return built


def _status(*extra: str, ok: bool = True):
    r = invoke("requests", "--model", M, "--format", "json", *extra, ok=ok)
    return json.loads(r.output) if ok else r


def _places(req: dict) -> dict[str, tuple[str, str]]:
    return {p["place"]: (p["status"], p["detail"]) for p in req["places"]}


def test_one_request_across_two_roots_a_killed_run_and_the_shadow_pool(world):
    (req,) = _status()
    assert req["records"] == 3 and req["received"] == world["received"] and not req["done"]
    from mlflow_amnesia.jobs.requests import one_month_after

    deadline = one_month_after(dt.date.fromisoformat(world["received"]))
    assert req["deadline"] == deadline.isoformat() and req["days_left"] == (deadline - _today()).days
    p = _places(req)
    assert p["v1 (root v1)"][0] == "still holds" and p["v2 (root v2)"][0] == "still holds"
    assert p["v3 (root v2)"][0] == "forgotten" and p["v3 (root v2)"][1].startswith("forgot them: amnesiac from v2, ")
    assert p["v4 (root v1)"][0] == "forgotten"
    (run,) = [k for k in p if k.startswith("run ")]
    assert p[run][0] == "still holds" and "(train, running, no version)" in run  # SIGKILLed: MLflow still says RUNNING
    assert p["shadow pool"][0] == "never held"  # --no-audit: no shadow set cached
    text = invoke("requests", "--model", M).output
    assert f"request {req['request'][:16]}  3 record(s)  received {world['received']}  open, " in text


def test_the_ledger_holds_keyed_hashes_only(world):
    from mlflow_amnesia.keys import hash_ids
    from mlflow_amnesia.mlflow import ledger

    found = ledger.entries(model=M)
    assert sorted(e.kind for e in found) == ["forgotten", "forgotten", "request"]  # two forgets, one request
    dump = "\n".join(e.to_json() for e in found)
    for rid in world["ids"]:
        assert rid not in dump
    (req,) = [e for e in found if e.kind == "request"]
    assert sorted(req["hashes"]) == sorted(h.tobytes().hex() for h in hash_ids(world["ids"], bytes.fromhex(KEY)))
    import mlflow

    assert mlflow.MlflowClient().get_registered_model(M).tags["amnesia.ledger"] == ledger.LEDGER_EXPERIMENT


def test_retrain_after_a_forget_leaves_the_records_out_and_records_agrees(world):
    r = invoke(*TRAIN)
    (req,) = _status()
    assert "v5" in r.output
    import mlflow

    v5 = mlflow.MlflowClient().get_model_version(M, "5")
    assert v5.tags["amnesia.excluded_records"] == "3"
    assert f"Left out 3 training record(s) under 1 deletion request(s)" in v5.description
    assert req["request"][:16] in v5.description
    assert _places(req)["v5 (root v5)"] == ("forgotten", "never trained on them: `train` left them out")
    listed = set(invoke("records", "--model", M, "--version", "5").output.split())
    assert listed and not listed & set(world["ids"])
    still = set(invoke("records", "--model", M, "--version", "2").output.split())  # holds them, yet never lists them
    assert still and not still & set(world["ids"])
    from mlflow_amnesia.mlflow.flavor import load_model

    assert len(load_model(f"models:/{M}/5").forgotten) == 3  # a forget of them there: "already forgotten"
    r = invoke("forget", "--model", M, "--records", str(world["base"] / "ids.txt"), "--yes", "--no-audit", ok=False)
    assert r.exit_code == 1 and "already forgotten" in r.output


def test_one_purge_request_erases_both_roots_and_the_killed_trains_store(world):
    (req,) = _status()
    h = req["request"][:12]
    (run,) = [p for p in req["places"] if p["kind"] == "run"]
    base = [x for x in Path(world["base"], "mlruns").rglob(run["run_id"])][0]
    assert any(base.rglob("*.zst"))
    dry = invoke("purge", "--model", M, "--request", h, "--dry-run").output
    assert f"{M} v1: superseded by v4" in dry and f"{M} v2: superseded by v3" in dry and run["run_id"][:12] in dry
    assert _places(_status()[0])["v1 (root v1)"][0] == "still holds"  # a dry run deletes nothing
    out = invoke("purge", "--model", M, "--request", h, "--yes").output
    assert f"purged {M} v1, v2" in out and f"purged run {run['run_id']}" in out
    (req,) = _status()
    p = _places(req)
    assert p["v1 (root v1)"][0] == p["v2 (root v2)"][0] == "purged"
    assert p[[k for k in p if k.startswith("run ")][0]][0] == "purged"
    assert not any(base.rglob("*.zst"))
    assert req["done"] and req["finished"][:10] == _today().isoformat()
    invoke("requests", "--model", M, "--check")  # finished within the month: exit 0
    again = invoke("purge", "--model", M, "--request", h, "--yes").output
    assert "nothing left for a purge to delete" in again


def test_an_overdue_request_fails_requests_check(world):
    more = invoke("records", "--model", M, "--limit", "1").output.split()
    (world["base"] / "late.txt").write_text(more[0] + "\n")
    old = (_today() - dt.timedelta(days=40)).isoformat()
    invoke("forget", "--model", M, "--records", "late.txt", "--yes", "--no-audit", "--received", old)
    r = invoke("requests", "--model", M, "--check", ok=False)
    assert r.exit_code == 1
    assert "1 deletion request(s) of ledgered are overdue" in r.output and "OVERDUE by 40 day(s)" not in r.output
    late = [s for s in _status() if s["received"] == old][0]
    assert late["overdue"] and late["days_left"] < 0
    assert "still holds" in {st for st, _ in _places(late).values()}  # its parent: superseded, not purged
    text = invoke("requests", "--model", M).output
    assert f"OVERDUE by {-late['days_left']} day(s)" in text and "1 OVERDUE" in text


def test_a_forget_killed_before_its_ledger_entry_is_finished_by_the_rerun(world):
    import mlflow

    from mlflow_amnesia.jobs.forget import registration_left
    from mlflow_amnesia.mlflow import ledger

    c = mlflow.MlflowClient()
    latest = max(int(v.version) for v in c.search_model_versions(f"name = '{M}'"))
    exp = c.get_experiment_by_name(ledger.LEDGER_EXPERIMENT).experiment_id
    (run,) = [
        r for r in c.search_runs([exp])
        if r.data.tags.get("amnesia.ledger.kind") == "forgotten" and ledger._read_run(r)["version"] == latest
    ]
    c.delete_run(run.info.run_id)  # as a forget killed after registering, before the ledger step, leaves it
    assert registration_left(M, latest) == ["ledger entry"]
    r = invoke("forget", "--model", M, "--records", "late.txt", "--yes", "--no-audit")
    assert f"completed the earlier registration of v{latest}" in r.output and "ledger entry" in r.output
    assert registration_left(M, latest) == []


def test_received_is_checked_before_anything_is_done(world):
    tomorrow = (_today() + dt.timedelta(days=1)).isoformat()
    for bad, says in (("2026-13-01", "not a date"), ("yesterday", "not a date"), (tomorrow, "that day is after today")):
        r = invoke("forget", "--model", M, "--records", "ids.txt", "--yes", "--received", bad, ok=False)
        assert r.exit_code == 1 and f"--received {bad}: {says}" in r.output, r.output
    r = invoke("requests", "--model", M, "--request", "abc", ok=False)
    assert r.exit_code == 1 and "--request 'abc'" in r.output
    r = invoke("purge", "--model", M, ok=False)
    assert r.exit_code == 1 and "--version N" in r.output and "--request HASH" in r.output


# ---------------------------------------------------------------------------------------------
# the windows between a ledger write's steps, and two writers at once


def _entry(i: int, model: str = "window"):
    from mlflow_amnesia.mlflow import ledger

    return ledger.Entry("purged", model, {"version": i, "superseded_by": i + 1, "at": "2026-01-01"})


class _Killed(BaseException):
    """Stands for a SIGKILL: nothing after it runs (and nothing cleans up: set_terminated is a no-op)."""


@pytest.mark.parametrize("window", ["run created", "entry logged"])
def test_a_ledger_write_killed_between_its_steps_is_finished_by_the_rerun(window, world, monkeypatch):
    import mlflow
    from mlflow import MlflowClient

    from mlflow_amnesia.mlflow import ledger

    model = f"window-{window.split()[0]}"  # the module's tracking store (a new one costs seconds), a model of its own
    e, real_log = _entry(1, model), MlflowClient.log_text

    def log_text(self, *a, **k):
        if window == "entry logged":
            real_log(self, *a, **k)
        raise _Killed

    monkeypatch.setattr(MlflowClient, "log_text", log_text)
    monkeypatch.setattr(MlflowClient, "set_terminated", lambda self, *a, **k: None)
    with pytest.raises(_Killed):
        ledger.write(e)
    monkeypatch.setattr(MlflowClient, "log_text", real_log)
    monkeypatch.undo()
    exp = mlflow.MlflowClient().get_experiment_by_name(ledger.LEDGER_EXPERIMENT)
    (left,) = mlflow.MlflowClient().search_runs([exp.experiment_id], f"tags.`amnesia.ledger.model` = '{model}'")
    assert left.info.status == "RUNNING"  # what the kill left behind
    assert ledger.entries(model=model) == []  # a half-written entry is read by nobody
    assert ledger.write(e) is True  # the re-run writes it
    assert [x.id for x in ledger.entries(model=model)] == [e.id]
    assert ledger.write(e) is False  # and a third run finds it there


def test_a_tampered_entry_is_an_error_not_ignored(world):
    import mlflow

    from mlflow_amnesia.errors import InputError
    from mlflow_amnesia.mlflow import ledger

    ledger.write(_entry(7, "window-tampered"))
    (run,) = mlflow.MlflowClient().search_runs(
        [mlflow.MlflowClient().get_experiment_by_name(ledger.LEDGER_EXPERIMENT).experiment_id],
        "tags.`amnesia.ledger.model` = 'window-tampered'",
    )
    p = Path(run.info.artifact_uri.removeprefix("file://")) / ledger.ENTRY_FILE
    p.write_text(p.read_text().replace('"version":7', '"version":8'))
    with pytest.raises(InputError, match="does not hash to its tag"):
        ledger.entries(model="window-tampered")


def test_two_writers_at_once_lose_nothing(world):
    import threading

    from mlflow_amnesia.mlflow import ledger

    ledger.write(_entry(0, "window-two"))
    errors: list[BaseException] = []

    def writer(k: int) -> None:
        try:
            for i in range(3):
                ledger.write(_entry(10 * k + i + 1, "window-two"))
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    ts = [threading.Thread(target=writer, args=(k,)) for k in (1, 2)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert not errors
    got = sorted(int(e["version"]) for e in ledger.entries(model="window-two"))
    assert got == [0, 11, 12, 13, 21, 22, 23]


def test_deadline_is_one_calendar_month():
    from mlflow_amnesia.jobs.requests import one_month_after

    assert one_month_after(dt.date(2026, 1, 31)) == dt.date(2026, 2, 28)
    assert one_month_after(dt.date(2026, 12, 15)) == dt.date(2027, 1, 15)
    assert one_month_after(dt.date(2028, 1, 30)) == dt.date(2028, 2, 29)


def _ui():
    import importlib.util

    spec = importlib.util.spec_from_file_location("ui_screenshot", REPO / "scripts" / "ui_screenshot.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.ui
@pytest.mark.slow
def test_the_erasure_report_shows_the_request_in_a_browser(world, tmp_path):
    """After the purge above: the page, rendered by headless Chromium, says what a privacy officer hands over."""
    import mlflow

    from mlflow_amnesia.jobs.report import verify

    ui = _ui()
    why = ui.browser_missing()
    if why:
        pytest.skip(f"the report test needs a browser: {why}")
    req = [s for s in _status() if s["received"] == world["received"]][0]
    out = tmp_path / "report.html"
    r = invoke("report", "--model", M, "--request", req["request"][:16], "--output", str(out))
    page_html = out.read_text()
    assert f"sha256 {verify(page_html)}" in r.output
    for rid in world["ids"]:
        assert rid not in page_html
    c = mlflow.MlflowClient()
    for v in (3, 4):  # the two forgets of the request: the page on their runs, linked from their versions
        mv = c.get_model_version(M, str(v))
        assert f"**Erasure report:** [request {req['request'][:16]}…](get-artifact?path=erasure/report-" in mv.description
        got = mlflow.artifacts.load_text(f"runs:/{mv.run_id}/erasure/report-{req['request'][:16]}.html")
        assert verify(got) == verify(page_html)
    with ui.chromium((1100, 900)) as page:
        page.goto(out.as_uri())
        assert page.locator("#state").inner_text().startswith("Erased: no place holds the records any more")
        req_rows = dict(
            (row.locator("th").inner_text(), row.locator("td").inner_text())
            for row in page.locator("#request tr").all()
        )
        assert req_rows["request hash"] == req["request"] and req_rows["records"] == "3"
        assert req_rows["received"] == world["received"] and req_rows["finished"] == _today().isoformat()
        versions = [[c.inner_text() for c in row.locator("td").all()] for row in page.locator("#versions tr").all()[1:]]
        by = {row[0]: row for row in versions}
        assert by[f"{M} v3 (root v2)"][1:4] == ["forgotten", "amnesiac", "v2"]
        assert by[f"{M} v4 (root v1)"][1:4] == ["forgotten", "amnesiac", "v1"]
        assert by[f"{M} v1 (root v1)"][1] == by[f"{M} v2 (root v2)"][1] == "purged"
        assert by[f"{M} v5 (root v5)"][2] == "excluded at training"
        places = {row.locator("td").first.inner_text(): row.locator("td").nth(1).inner_text()
                  for row in page.locator("#places tr").all()[1:]}
        assert [v for k, v in places.items() if k.startswith("run ")] == ["purged"]
        assert places["shadow pool"] == "never held"
        assert "acc.test" in page.locator("#audit").inner_text()
        assert verify(page_html) in page.locator("#sha256").inner_text()


def test_a_forget_killed_right_after_entering_the_request_is_finished_by_the_rerun(world):
    """Between the ledger's request entry and the method: nothing registered, the request already
    known (a train now would leave the record out); the same command then registers, one entry kept."""
    import mlflow

    from mlflow_amnesia.mlflow import ledger

    rid = invoke("records", "--model", M, "--limit", "1").output.split()[-1]
    (world["base"] / "entered.txt").write_text(rid + "\n")
    before = len(mlflow.MlflowClient().search_model_versions(f"name = '{M}'"))
    args = ["forget", "--model", M, "--records", "entered.txt", "--yes", "--no-audit", "--received", world["received"]]
    env = {**os.environ, **world["env"], "AMNESIA_TEST_KILL_AT": "entered"}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    p = subprocess.run([sys.executable, str(CHILD), *args], env=env, capture_output=True, text=True, timeout=300,
                       cwd=world["base"])
    assert p.returncode == -signal.SIGKILL, p.stdout + p.stderr
    assert len(mlflow.MlflowClient().search_model_versions(f"name = '{M}'")) == before
    (entered,) = [s for s in _status() if s["records"] == 1 and s["received"] == world["received"]]
    assert not entered["done"] and "forgotten" not in {st for st, _ in _places(entered).values()}
    invoke(*args)
    assert len(mlflow.MlflowClient().search_model_versions(f"name = '{M}'")) == before + 1
    mine = [e for e in ledger.entries(model=M) if e.request == entered["request"]]
    assert sorted(e.kind for e in mine) == ["forgotten", "request"]


def test_killed_runs_leave_a_phase_and_a_logged_model_that_requests_lists_and_purge_erases(world):
    """A relabel forget SIGKILLed after its method, before it registered: its recorded phase starts
    from the parent's weights and its deltas were computed on the forgotten records; a train killed
    while uploading its model leaves that logged model's weights beside its store. `requests` lists
    both as holding the request, and `purge --request` deletes both."""
    import mlflow

    def killed(at: str, *args: str) -> None:
        env = {**os.environ, **world["env"], "AMNESIA_TEST_KILL_AT": at}
        env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
        p = subprocess.run([sys.executable, str(CHILD), *args], env=env, capture_output=True, text=True, timeout=300,
                           cwd=world["base"])
        assert p.returncode == -signal.SIGKILL, p.stdout + p.stderr

    killed("upload", *TRAIN)  # a train killed while uploading its model: a logged model beside its store
    rid = invoke("records", "--model", M, "--limit", "1").output.split()[0]
    (world["base"] / "relabel.txt").write_text(rid + "\n")
    killed("audit", "forget", "--model", M, "--records", "relabel.txt", "--method", "relabel", "--yes", "--no-audit")
    (req,) = [s for s in _status() if s["records"] == 1 and s["received"] == _today().isoformat()]
    (run,) = [x for x in req["places"] if x["kind"] == "run" and "(forget, " in x["place"]]
    assert run["status"] == "still holds" and "(forget, running, no version)" in run["place"], run
    base = [x for x in Path(world["base"], "mlruns").rglob(run["run_id"])][0]
    assert any(base.rglob("*.zst"))
    c = mlflow.MlflowClient()
    trains = [x for x in req["places"] if x["kind"] == "run" and x["status"] == "still holds" and "(train, " in x["place"]]
    (train,) = [x for x in trains if "its logged model (" in x["detail"]]
    exp = c.get_run(train["run_id"]).info.experiment_id
    (lm,) = c.search_logged_models([exp], filter_string=f"source_run_id = '{train['run_id']}'")
    lm_dir = Path(lm.artifact_location.removeprefix("file://"))
    assert any(f.is_file() for f in lm_dir.rglob("*"))
    for x in req["places"]:  # every root forgets the record (the purge refuses while a version never forgot it)
        if x["kind"] == "version" and "never forgot them" in x["detail"]:
            invoke("forget", "--model", M, "--version", str(x["version"]), "--records", "relabel.txt", "--yes",
                   "--no-audit")
    (req,) = [s for s in _status() if s["request"] == req["request"]]
    assert {x["run_id"]: x["status"] for x in req["places"] if x["kind"] == "run"}[run["run_id"]] == "still holds"
    dry = invoke("purge", "--model", M, "--request", req["request"][:12], "--dry-run").output
    assert run["run_id"][:12] in dry
    asked = invoke("purge", "--model", M, "--request", req["request"][:12], ok=False)  # no --yes, no terminal
    assert asked.exit_code == 1 and "re-run with --yes to proceed, or with --dry-run" in asked.output
    assert any(base.rglob("*.zst")) and any(f.is_file() for f in lm_dir.rglob("*"))  # nothing deleted
    out = invoke("purge", "--model", M, "--request", req["request"][:12], "--yes").output
    assert f"purged run {run['run_id']}" in out
    (req,) = [s for s in _status() if s["request"] == req["request"]]
    status = {x["run_id"]: x["status"] for x in req["places"] if x["kind"] == "run"}
    assert status[run["run_id"]] == status[train["run_id"]] == "purged"
    assert not any(base.rglob("*.zst"))
    assert not any(f.is_file() for f in lm_dir.rglob("*"))  # the killed train's logged weights too
