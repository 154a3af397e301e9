"""What a privacy officer sees in the MLflow UI, checked in a real (headless) browser.

Starts ``mlflow server`` on localhost with a temporary sqlite store, registers two versions
through the CLI (train, then forget with a cheap privacy audit), opens version 2's page in
Debian's Chromium driven by Playwright, and checks that its lineage tags, its audit table beside
the parent's, its links and its lineage picture are on the page. Skips, saying why, where there
is no Chromium or no Playwright. The server, browser and page helpers are those of
``scripts/ui_screenshot.py``, which regenerates the README's screenshot.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from helpers import KEY

REPO = Path(__file__).resolve().parents[1]
MODEL = "digits-cnn"

pytestmark = [pytest.mark.ui, pytest.mark.slow]


def _ui():
    spec = importlib.util.spec_from_file_location("ui_screenshot", REPO / "scripts" / "ui_screenshot.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


ui = _ui()


@pytest.fixture
def browser_available():
    why = ui.browser_missing()
    if why:
        pytest.skip(f"UI test needs a browser: {why}")


@pytest.fixture
def one_torch_thread():
    """The tiny models here run fastest on one thread; on a busy 2-core machine two threads made
    the audit's attack-model fit ~15x slower (205 vs 14 ms a step, measured)."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _in_process_cli(base: str, monkeypatch):
    """``mlflow-amnesia ARGS`` in this process (CliRunner), against the server at ``base``."""
    import mlflow
    from click.testing import CliRunner

    from mlflow_amnesia.cli import main

    monkeypatch.setenv("MLFLOW_TRACKING_URI", base)
    monkeypatch.setenv("MLFLOW_REGISTRY_URI", base)
    monkeypatch.setenv("MLFLOW_AMNESIA_KEY", KEY)
    mlflow.set_tracking_uri(base)
    mlflow.set_registry_uri(base)

    def run(*args: str) -> str:
        r = CliRunner().invoke(main, list(args), catch_exceptions=False)
        assert r.exit_code == 0, r.output
        return r.stdout

    return run


def test_version_page_shows_lineage_tags_audit_table_and_picture(browser_available, one_torch_thread, tmp_path,
                                                                   monkeypatch):
    with ui.mlflow_server(tmp_path / "server") as base:
        cli = _in_process_cli(base, monkeypatch)
        # v1 without its audit (speed); v2 with a cheap one: 2 shadow models, 20 inversion steps;
        # 12 records: below MIN_PER_CLASS (10) a forget logs per-record statistics, no AUC row
        ui.register_demo(cli, tmp_path, model=MODEL, epochs=1, n_records=12,
                         audit=("--shadows", "2", "--inversion-iterations", "20"), audit_training=False)
        from mlflow_amnesia.mlflow import registry

        mv = registry.resolve_version(MODEL, version=2)
        run = registry.client().get_run(mv.run_id)

        with ui.chromium() as page:
            ui.open_version_page(page, base, MODEL, 2)
            # the lineage tags, names and values
            for tag in ("amnesia.method", "amnesia.parent_version", "amnesia.n_records", "amnesia.forget_request",
                        "amnesia.steps_rolled_back"):
                assert page.get_by_text(tag, exact=True).first.is_visible(), tag
            assert page.get_by_text(mv.tags["amnesia.forget_request"], exact=True).first.is_visible()
            # the description: this version's audit and accuracy beside the parent's, and the change
            table = page.locator("table", has=page.locator("td", has_text="audit.mia.auc"))
            assert table.count() == 1, "the description's figures table has no audit.mia.auc row"
            heads = [h.strip() for h in table.locator("th").all_inner_texts()]
            assert heads == ["metric", "v2", "v1 (parent)", "change"]
            row = [c.strip() for c in table.locator("tr", has=page.locator("td", has_text="acc.test")).first.locator("td").all_inner_texts()]
            assert row[1] == f"{run.data.metrics['acc.test']:.4f}"
            assert page.locator("td", has_text="audit.lira.auc").first.is_visible()
            # links: the parent version and the source run, inside the UI
            assert page.locator(f'a[href="#/models/{MODEL}/versions/1"]').count() >= 1
            assert page.locator(f'a[href="#/experiments/{run.info.experiment_id}/runs/{mv.run_id}"]').count() >= 1
            # the lineage picture, served by the tracking server from the forget run's artifacts
            size = page.evaluate("() => { const i = document.querySelector('img[src*=\"lineage.png\"]');"
                                 " return i ? [i.naturalWidth, i.naturalHeight] : null; }")
            assert size is not None and size[0] >= 400 and size[1] >= 300, size
            # the summary says what was forgotten by count and request hash, and how
            summary = page.get_by_text("forgets 12 record(s) from v1").first
            assert summary.is_visible()
            assert mv.tags["amnesia.forget_request"][:16] in summary.inner_text()

            shot = tmp_path / "version-page.png"
            ui.screenshot(page, shot)
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000
