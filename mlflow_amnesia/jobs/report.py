"""The `report` job: one self-contained HTML page per deletion request, to hand to whoever asked.

The page (no script, no external resource: it opens the same anywhere, and prints) holds:

* the request: its keyed hash, the number of records, the day it was received, the deadline, the
  day it was finished (or that it is still open, and where);
* every version involved: the versions that forgot the records (method, repair, parent, steps
  rolled back), the versions trained without them, and those that still held or hold them;
* the audit of each forgetting version as logged on its run: the verdict (tag
  ``amnesia.audit.verdict``) when there is one, and every ``acc.*`` / ``audit.*`` figure with its
  95% interval (``NAME.lo``, ``NAME.hi``) and sample (``NAME.n_members``, ``NAME.n_nonmembers``)
  where they were logged;
* the status of every place (``mlflow-amnesia requests``);
* the sha256 of the page's content: the hex digest of every byte before the line
  ``<!-- sha256 -->`` (UTF-8), written after it; :func:`verify` (``python -m
  mlflow_amnesia.jobs.report --verify FILE``) recomputes it.

No record id is on the page: the records are counted, and named only by the request's keyed hash.
With ``log`` the page is also logged on each forget run of the request (``erasure/report-<hash>.html``)
and linked from the description of the version that run registered.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import html
import math
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import InputError
from ..mlflow import registry
from ..tags import TAG_VERDICT
from .requests import FORGOTTEN, NEVER, PURGED, RequestStatus, request_status

MARKER = "<!-- sha256 -->"
ARTIFACT_DIR = "erasure"
_LINK_START = "**Erasure report:**"
_SUFFIXES = (".lo", ".hi", ".n_members", ".n_nonmembers")
_STATUS_CLASS = {FORGOTTEN: "ok", PURGED: "ok", NEVER: "none"}


@dataclass
class Report:
    path: str
    request: str
    sha256: str
    html: str
    logged: list[str] = field(default_factory=list)


def figures(metrics: dict[str, float]) -> list[dict]:
    """The run's ``acc.*`` and ``audit.*`` figures, each with its interval and sample where logged."""
    out = []
    for name in sorted(metrics):
        if not (name.startswith("acc.") or name.startswith("audit.")) or name.endswith(_SUFFIXES):
            continue
        row = {"name": name, "value": metrics[name]}
        for suffix in _SUFFIXES:
            if name + suffix in metrics:
                row[suffix[1:]] = metrics[name + suffix]
        out.append(row)
    return out


def _num(x) -> str:
    if x is None:
        return ""
    x = float(x)
    if math.isnan(x):
        return "n/a"
    return f"{int(x)}" if x.is_integer() and abs(x) >= 2 else f"{x:.3f}"


def _e(x: object) -> str:
    """``x`` escaped for HTML, its `backticked` parts as code."""
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", html.escape(str(x), quote=True))


_CSS = """
body{font:14px/1.45 -apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;margin:2em auto;max-width:60em;color:#1d2733;padding:0 1em}
h1{font-size:1.5em;margin-bottom:.2em}h2{font-size:1.15em;margin-top:1.6em;border-bottom:1px solid #d8dee4;padding-bottom:.2em}
table{border-collapse:collapse;width:100%;margin:.4em 0}th,td{border:1px solid #d8dee4;padding:.3em .55em;text-align:left;vertical-align:top}
th{background:#f3f5f7}td.n{text-align:right;font-variant-numeric:tabular-nums}code{font-size:.92em;word-break:break-all}
.ok{color:#116329;font-weight:600}.open{color:#a40e26;font-weight:600}.none{color:#57606a}
.banner{padding:.6em .9em;border-radius:4px;margin:.8em 0;font-weight:600}.banner.ok{background:#dafbe1}.banner.open{background:#ffebe9}
footer{margin-top:2em;font-size:.85em;color:#57606a}
"""


def render(s: RequestStatus, model_name: str, *, generated: str | None = None) -> str:
    """The page for one request's status (see the module doc); the sha256 footer included."""
    r = s.request
    generated = generated or dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat()
    c = registry.client()
    if s.done:
        banner = (
            f'<div class="banner ok" id="state">Erased: no place holds the records any more '
            f"(finished {_e((s.finished or '?')[:10])}{', after the deadline' if s.late else ', within the deadline'}).</div>"
        )
    else:
        held = [p.label for p in s.places if p.open]
        banner = (
            f'<div class="banner open" id="state">{"OVERDUE" if s.overdue else "Open"}: '
            f"{len(held)} place(s) still hold the records ({_e(', '.join(held))}); "
            f"{'overdue by ' + str(-s.days_left) + ' day(s)' if s.overdue else str(s.days_left) + ' day(s) left'}.</div>"
        )
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>Erasure report {_e(r.request[:16])} - {_e(model_name)}</title>",
        f"<style>{_CSS}</style></head><body>",
        f"<h1>Erasure report: {_e(model_name)}</h1>",
        f"<p>Deletion request <code>{_e(r.request)}</code> (a keyed hash of its record ids: the ids are stored nowhere).</p>",
        banner,
        '<h2>Request</h2><table id="request">',
        f"<tr><th>request hash</th><td><code>{_e(r.request)}</code></td></tr>",
        f'<tr><th>records</th><td class="n">{r.n}</td></tr>',
        f"<tr><th>data set</th><td>{_e(r.data or '?')} <code>{_e(r.dataset or '')}</code></td></tr>",
        f"<tr><th>received</th><td>{_e(r.received)}</td></tr>",
        f"<tr><th>deadline (one month)</th><td>{_e(s.deadline.isoformat())}</td></tr>",
        f"<tr><th>finished</th><td>{_e((s.finished or '')[:10]) if s.done else 'not yet'}</td></tr>",
        f"<tr><th>record key id</th><td><code>{_e(r.key_id or '?')}</code></td></tr>",
        "</table>",
    ]
    versions = [p for p in s.places if p.kind == "version" and p.status != NEVER]
    parts += [
        '<h2>Versions involved</h2><table id="versions"><tr><th>version</th><th>status</th><th>method</th>'
        "<th>from</th><th>steps rolled back</th><th>detail</th></tr>"
    ]
    for p in versions:
        own = p.how.get("version") == p.version and "parent" in p.how
        method = p.how.get("method", "") if own or p.how.get("method") == "excluded at training" else ""
        if own and p.how.get("repair") not in (None, "", "none"):
            method += f" + repair {p.how['repair']}"
        parts.append(
            f'<tr><td>{_e(model_name)} {_e(p.label)}</td><td class="{_STATUS_CLASS.get(p.status, "open")}">{_e(p.status)}</td>'
            f"<td>{_e(method)}</td><td>{_e('v' + str(p.how['parent']) if own else '')}</td>"
            f'<td class="n">{_e(p.how.get("steps_rolled_back", "") if own else "")}</td><td>{_e(p.detail)}</td></tr>'
        )
    parts.append("</table>")
    parts.append('<h2>Audit</h2><div id="audit">')
    forgetting = [p for p in versions if p.how.get("version") == p.version and "parent" in p.how]
    if not forgetting:
        parts.append("<p>No version forgot these records by a forget (nothing to audit).</p>")
    for p in forgetting:
        mv = c.get_model_version(model_name, str(p.version))
        verdict = (mv.tags or {}).get(TAG_VERDICT)
        rows = figures(registry.run_metrics(mv.run_id))
        parts.append(f"<h3>{_e(model_name)} v{p.version}</h3>")
        parts.append(
            f'<p class="verdict">Verdict: <strong>{_e(verdict)}</strong></p>'
            if verdict
            else '<p class="verdict">Verdict: none recorded (tag amnesia.audit.verdict absent).</p>'
        )
        if not rows:
            parts.append("<p>No audit figure was logged on its run (a forget with --no-audit).</p>")
            continue
        parts.append(
            "<table><tr><th>figure</th><th>value</th><th>95% interval</th><th>members</th><th>non-members</th></tr>"
        )
        for f in rows:
            ci = f"[{_num(f['lo'])}, {_num(f['hi'])}]" if "lo" in f and "hi" in f else "not logged"
            parts.append(
                f'<tr><td><code>{_e(f["name"])}</code></td><td class="n">{_num(f["value"])}</td><td>{_e(ci)}</td>'
                f'<td class="n">{_num(f.get("n_members"))}</td><td class="n">{_num(f.get("n_nonmembers"))}</td></tr>'
            )
        parts.append("</table>")
    parts.append("</div>")
    parts += [
        '<h2>Every place that may hold the records</h2><table id="places">'
        "<tr><th>place</th><th>status</th><th>detail</th></tr>"
    ]
    for p in s.places:
        parts.append(
            f'<tr><td>{_e(p.label)}</td><td class="{_STATUS_CLASS.get(p.status, "open")}">{_e(p.status)}</td>'
            f"<td>{_e(p.detail)}</td></tr>"
        )
    parts.append("</table>")
    parts.append(
        f"<p>Generated {_e(generated)} by mlflow-amnesia from the registry and the erasure ledger "
        "(experiment mlflow-amnesia-ledger).</p>"
    )
    body = "\n".join(parts) + "\n" + MARKER
    digest = hashlib.sha256(body.encode("utf-8")).hexdigest()
    return (
        body + f'\n<footer id="sha256">sha256 of this page\'s content (every byte before the line {_e(MARKER)}): '
        f"<code>{digest}</code></footer>\n</body></html>\n"
    )


def verify(page: str) -> str:
    """The digest the page states, if it matches its content; :class:`InputError` otherwise."""
    if MARKER not in page:
        raise InputError("not an erasure report: no sha256 line")
    body, foot = page.split(MARKER, 1)
    m = re.search(r"<code>([0-9a-f]{64})</code>", foot)
    got = hashlib.sha256((body + MARKER).encode("utf-8")).hexdigest()
    if m is None or m.group(1) != got:
        raise InputError(
            f"the erasure report was altered: its content hashes to {got}, the page states {m and m.group(1)}"
        )
    return got


def write_report(model_name: str, request: str, *, output: str | None = None, log: bool = True) -> Report:
    """Render the request's page, write it to ``output``, and (``log``) log it on its forget runs."""
    (s,) = request_status(model_name, request=request)
    page = render(s, model_name)
    digest = verify(page)
    safe = re.sub(r"[^A-Za-z0-9._-]+", "-", model_name)
    path = output or f"erasure-{safe}-{s.request.request[:16]}.html"
    try:
        Path(path).write_text(page, encoding="utf-8")
    except OSError as e:
        raise InputError(f"cannot write the report to {path}: {e.strerror} (choose another --output)") from None
    rep = Report(path, s.request.request, digest, page)
    if log:
        rep.logged = _log(s, model_name, page)
    return rep


def _log(s: RequestStatus, model_name: str, page: str) -> list[str]:
    """Log the page on each forget run of the request, and link it from the version it registered."""
    c = registry.client()
    art = f"{ARTIFACT_DIR}/report-{s.request.request[:16]}.html"
    out = []
    for p in s.places:
        if p.kind != "version" or p.how.get("version") != p.version or "parent" not in p.how:
            continue
        mv = c.get_model_version(model_name, str(p.version))
        if not mv.run_id:
            continue
        c.log_text(mv.run_id, page, art)
        link = f"{_LINK_START} [request {s.request.request[:16]}…]({registry.artifact_link(mv.run_id, art)})"
        desc = mv.description or ""
        if link not in desc:
            c.update_model_version(model_name, str(p.version), description=f"{desc}\n\n{link}" if desc else link)
        out.append(f"logged on run {mv.run_id} as {art}, linked from {model_name} v{p.version}'s description")
    return out


def main(argv: list[str] | None = None) -> int:
    """``python -m mlflow_amnesia.jobs.report --verify FILE``: check a report's sha256."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2 or args[0] != "--verify":
        print("usage: python -m mlflow_amnesia.jobs.report --verify FILE", file=sys.stderr)
        return 2
    try:
        digest = verify(Path(args[1]).read_text(encoding="utf-8"))
    except (OSError, InputError) as e:
        print(f"{args[1]}: {e}", file=sys.stderr)
        return 1
    print(f"{args[1]}: sha256 {digest} matches its content")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
