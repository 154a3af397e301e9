#!/usr/bin/env python3
"""Regenerate docs/images/version-page.png: a forgotten-records model version in the MLflow UI.

Starts ``mlflow server`` on localhost (temporary sqlite store and artifact folder), trains a
small CNN on the bundled digits set with every step recorded, forgets three records through the
``mlflow-amnesia`` CLI, opens version 2's page in headless Chromium (Debian's ``/usr/bin/chromium``
driven by Playwright; no browser download) and screenshots it. A few minutes on 2 CPU cores:

    python scripts/ui_screenshot.py                       # -> docs/images/version-page.png
    python scripts/ui_screenshot.py --output /tmp/v2.png --epochs 2

Needs ``apt-get install chromium`` (or ``MLFLOW_AMNESIA_CHROMIUM=/path/to/chrome``) and
``pip install playwright`` (in the ``test`` extra). ``tests/test_ui.py`` drives the UI with the
same functions.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Callable, Iterator, Optional, Sequence

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUTPUT = REPO / "docs" / "images" / "version-page.png"

# Headless, and nothing that phones home: without the background-networking flags Chromium
# waits on a closed network (component updates, sync) before it serves the page.
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage"]
# The MLflow UI opens its Assistant side panel on a first visit; a screenshot wants the page.
_NO_ASSISTANT = ("localStorage.setItem('mlflow.assistant.fab.autoOpenedOnFirstLoad_v1', 'true');"
                 "localStorage.setItem('mlflow.assistant.panelOpen_v1', 'false');")

Cli = Callable[..., str]


def chromium_path() -> Optional[str]:
    """The Chromium to drive: ``$MLFLOW_AMNESIA_CHROMIUM``, else Debian's ``/usr/bin/chromium``,
    else ``chromium`` on the PATH; None when there is none."""
    env = os.environ.get("MLFLOW_AMNESIA_CHROMIUM")
    if env:
        return env if Path(env).exists() else None
    if Path("/usr/bin/chromium").exists():
        return "/usr/bin/chromium"
    return shutil.which("chromium")


def browser_missing() -> Optional[str]:
    """Why the UI cannot be driven here (no Chromium, no Playwright), or None when it can."""
    if chromium_path() is None:
        return ("no Chromium: install Debian's package (apt-get install chromium) or set "
                "MLFLOW_AMNESIA_CHROMIUM to a Chrome/Chromium binary")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the Python package playwright is not installed (pip install -e '.[test]')"
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def mlflow_server(workdir: Path, *, port: Optional[int] = None, timeout: float = 180.0) -> Iterator[str]:
    """Run ``mlflow server`` on 127.0.0.1 with a sqlite store and artifacts under ``workdir``;
    yield its base URL once ``/health`` answers; stop it (and its workers) on exit."""
    workdir.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
    env.update({"MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true", "GIT_PYTHON_REFRESH": "quiet",
                # MLflow 3's job runner (GenAI jobs: 7 huey consumers) is not needed to browse the registry
                "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"})
    log_path = workdir / "server.log"
    cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{workdir / 'mlflow.db'}",
           "--default-artifact-root", str(workdir / "artifacts"), "--no-serve-artifacts",
           "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    base = f"http://127.0.0.1:{port}"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=workdir, start_new_session=True)
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"mlflow server exited with status {proc.returncode}:\n{_tail(log_path)}")
            try:
                with urllib.request.urlopen(f"{base}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"mlflow server did not answer {base}/health within {timeout:.0f} s:\n{_tail(log_path)}")
            time.sleep(0.5)
        yield base
    finally:
        _stop(proc)


def _tail(path: Path, n: int = 30) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-n:]) if path.exists() else ""


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM the server's process group (the server, uvicorn and its workers: it is the group
    this module started), wait for the server, then SIGKILL whatever of the group is left."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        pass
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=15)


def register_demo(cli: Cli, workdir: Path, *, model: str = "digits-cnn", epochs: int = 8, n_records: int = 3,
                  audit: Sequence[str] = ("--shadows", "4", "--inversion-iterations", "100"),
                  audit_training: bool = True) -> None:
    """Through the CLI: train ``model`` (small CNN on digits) as v1, forget ``n_records`` of its
    records with a finetune repair as v2, each with the privacy audit ``audit`` (v1's only if
    ``audit_training``). ``cli(*args)`` runs ``mlflow-amnesia ARGS`` and returns its stdout."""
    cli("train", "--arch", "cnn", "--epochs", str(epochs), "--model-name", model,
        *(audit if audit_training else ("--no-audit",)))
    ids = workdir / "ids.txt"
    ids.write_text(cli("records", "--model", model, "--limit", str(n_records)))
    cli("forget", "--model", model, "--records", str(ids), "--repair", "finetune", "--yes", *audit)


def subprocess_cli(tracking_uri: str, env: Optional[dict] = None) -> Cli:
    """A ``cli`` for :func:`register_demo` that runs ``python -m mlflow_amnesia.cli`` against ``tracking_uri``."""
    e = dict(os.environ if env is None else env)
    e.update({"MLFLOW_TRACKING_URI": tracking_uri, "MLFLOW_REGISTRY_URI": tracking_uri, "GIT_PYTHON_REFRESH": "quiet"})
    e.setdefault("OMP_NUM_THREADS", "1")  # tiny models: one thread is fastest, and far faster on a busy machine

    def run(*args: str) -> str:
        r = subprocess.run([sys.executable, "-m", "mlflow_amnesia.cli", *args], env=e, capture_output=True, text=True)
        if r.returncode != 0:
            raise RuntimeError(f"mlflow-amnesia {' '.join(args)} failed ({r.returncode}):\n{r.stderr[-3000:]}")
        return r.stdout

    return run


@contextlib.contextmanager
def chromium(viewport: tuple[int, int] = (1400, 1600)):
    """A Playwright page in headless Chromium (no Assistant panel), closed on exit."""
    from playwright.sync_api import sync_playwright

    exe = chromium_path()
    if exe is None:
        raise RuntimeError(browser_missing())
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=exe, args=CHROMIUM_ARGS, timeout=120_000)
        try:
            context = browser.new_context(viewport={"width": viewport[0], "height": viewport[1]})
            context.add_init_script(_NO_ASSISTANT)
            yield context.new_page()
        finally:
            browser.close()


def version_url(base: str, model: str, version: int) -> str:
    from mlflow_amnesia.registry import version_link

    return f"{base}/{version_link(model, version)}"


def open_version_page(page, base: str, model: str, version: int, *, timeout_ms: int = 90_000) -> None:
    """Load the version's page and wait until the React app shows its tags, its description's
    figures table and (for a forget) the lineage picture: wait for content, never a fixed sleep."""
    page.goto(version_url(base, model, version))
    page.get_by_text("amnesia.method", exact=True).first.wait_for(state="visible", timeout=timeout_ms)
    page.locator("td", has_text="acc.test").first.wait_for(state="visible", timeout=timeout_ms)
    if page.locator('img[src*="lineage.png"]').count():
        page.wait_for_function(
            "() => [...document.querySelectorAll('img[src*=\"lineage.png\"]')].every(i => i.complete && i.naturalWidth > 0)",
            timeout=timeout_ms)


def screenshot(page, path: Path) -> None:
    """The page's main pane (without the navigation sidebar), or the whole page if it has none."""
    main_pane = page.locator("main")
    if main_pane.count():
        main_pane.first.screenshot(path=str(path))
    else:
        page.screenshot(path=str(path), full_page=True)


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help=f"PNG to write (default {DEFAULT_OUTPUT.relative_to(REPO)})")
    ap.add_argument("--epochs", type=int, default=8, help="training epochs of the small CNN")
    ap.add_argument("--shadows", type=int, default=4, help="shadow models of the membership-inference audit")
    ap.add_argument("--inversion-iterations", type=int, default=100)
    args = ap.parse_args(argv)
    why = browser_missing()
    if why:
        print(f"cannot take the screenshot: {why}", file=sys.stderr)
        return 2
    audit = ("--shadows", str(args.shadows), "--inversion-iterations", str(args.inversion_iterations))
    with tempfile.TemporaryDirectory(prefix="amnesia-ui-") as tmp:
        work = Path(tmp)
        env = dict(os.environ, MLFLOW_AMNESIA_KEY=os.environ.get("MLFLOW_AMNESIA_KEY", "5a" * 32))  # a demo key, not yours
        with mlflow_server(work / "server") as base:
            print(f"mlflow server at {base}; training and forgetting (a few minutes)", file=sys.stderr)
            register_demo(subprocess_cli(base, env), work, epochs=args.epochs, audit=audit)
            with chromium() as page:
                open_version_page(page, base, "digits-cnn", 2)
                args.output.parent.mkdir(parents=True, exist_ok=True)
                screenshot(page, args.output)
    print(f"wrote {args.output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
