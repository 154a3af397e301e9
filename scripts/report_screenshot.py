"""Screenshot an erasure report (``mlflow-amnesia report``) in headless Chromium, for the README.

    python scripts/report_screenshot.py erasure-digits-cnn-<hash>.html docs/images/erasure-report.png

Uses the Chromium of ``scripts/ui_screenshot.py`` (Debian's ``/usr/bin/chromium`` driven by
Playwright, or ``MLFLOW_AMNESIA_CHROMIUM``; never a browser download). The page needs no server:
it is opened from its file.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    spec = importlib.util.spec_from_file_location("ui_screenshot", HERE / "ui_screenshot.py")
    ui = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ui)
    why = ui.browser_missing()
    if why:
        print(why, file=sys.stderr)
        return 1
    page_file, out = Path(argv[0]).resolve(), Path(argv[1])
    with ui.chromium((1000, 900)) as page:
        page.goto(page_file.as_uri())
        page.locator("#sha256").wait_for(state="visible")
        page.screenshot(path=str(out), full_page=True)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
