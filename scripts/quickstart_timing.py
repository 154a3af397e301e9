"""Time the README's main command as a newcomer runs it: a fresh clone, a fresh HOME, phase by phase.

The command is read from README.md (the fenced block after ``<!-- main-command -->``) and split
at its ``&&``; each phase runs in its own shell in the clone (after the ``. .venv/bin/activate``
phase, every later phase activates the venv first), and the script writes, per phase, its wall
seconds and CPU seconds (user + system of the phase and every process it waited for, from
``wait4``). ``mlflow run`` is split where its own log says the entry point's command starts
(``=== Running command``): before that line is the environment build (an install; its CPU is
read from /proc for the phase's process tree at that moment), after it the training. The budget (issue "First forget in minutes") counts from the end of the installs to the
lineage output: training, records, forget, audit and lineage.

    python scripts/quickstart_timing.py                        # as the README says (builds the mlflow run env)
    python scripts/quickstart_timing.py --env-manager local    # reuse the venv: no second torch env
    python scripts/quickstart_timing.py --out docs/results/quickstart_timing.json

The clone's HOME (and XDG dirs) are fresh, so the record key is created by ``train`` and pip
has no cache of its own; the rest of the environment (PATH, PYENV_ROOT, pip's index settings)
is this shell's.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
INSTALLS = ("python3 -m venv", "pip install", "env build")


def main_command(readme: Path) -> str:
    lines, on, block = [], False, False
    for line in readme.read_text().splitlines():
        if "<!-- main-command -->" in line:
            on = True
            continue
        if on and line.startswith("```"):
            if block:
                break
            block = True
            continue
        if on and block:
            lines.append(line)
    if not lines:
        raise SystemExit(f"{readme} has no block after <!-- main-command -->")
    return " ".join(lines).strip()


def phases(cmd: str, env_manager: str | None) -> list[str]:
    out = [p.strip() for p in cmd.split("&&")]
    if env_manager:
        out = [p + f" --env-manager {env_manager}" if p.startswith("mlflow run ") else p for p in out]
    return out


def tree_cpu(root: int) -> float:
    """CPU seconds so far of ``root`` and its live descendants, with the children each has reaped
    (user + system + children's user + system, from /proc)."""
    tick = os.sysconf("SC_CLK_TCK")
    parent, cpu = {}, {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parent[int(d.name)] = int(fields[1])
        cpu[int(d.name)] = sum(int(f) for f in fields[11:15]) / tick
    tree, grew = {root}, True
    while grew:
        more = {p for p, pp in parent.items() if pp in tree} - tree
        tree |= more
        grew = bool(more)
    return sum(cpu.get(p, 0.0) for p in tree)


def run_phase(shell: str, cwd: Path, env: dict, log) -> dict:
    """Run ``shell`` in bash; wall and CPU seconds, and (for ``mlflow run``) where its command started."""
    t0 = time.monotonic()
    p = subprocess.Popen(["bash", "-c", shell], cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    started = started_cpu = None
    assert p.stdout is not None
    for raw in p.stdout:
        line = raw.decode(errors="replace")
        log.write(f"[{time.monotonic() - t0:8.1f}] {line}")
        log.flush()
        if started is None and "=== Running command" in line:
            started, started_cpu = time.monotonic() - t0, tree_cpu(p.pid)
    _, status, ru = os.wait4(p.pid, 0)
    p.returncode = os.waitstatus_to_exitcode(status)
    return {
        "wall_s": round(time.monotonic() - t0, 1),
        "cpu_s": round(ru.ru_utime + ru.ru_stime, 1),
        "rc": p.returncode,
        "command_started_s": None if started is None else round(started, 1),
        "command_started_cpu_s": None if started_cpu is None else round(started_cpu, 1),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repo", default=str(ROOT), help="the git repository to clone (default: this checkout)")
    ap.add_argument("--env-manager", choices=["local", "virtualenv"], default=None,
                    help="add --env-manager to `mlflow run` (default: as the README has it)")
    ap.add_argument("--out", default=str(ROOT / "docs/results/quickstart_timing.json"), help="JSON figures")
    ap.add_argument("--keep", action="store_true", help="keep the clone (its mlflow.db, mlruns) and print where")
    a = ap.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="amnesia-quickstart-"))
    clone, home = work / "clone", work / "home"
    home.mkdir()
    subprocess.run(["git", "clone", "-q", a.repo, str(clone)], check=True)
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=clone, capture_output=True, text=True).stdout.strip()
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("MLFLOW_", "XDG_", "VIRTUAL_ENV", "PYTHONPATH", "AMNESIA_"))}
    env.update(HOME=str(home), PYTHONUNBUFFERED="1")
    steps = phases(main_command(clone / "README.md"), a.env_manager)
    rows, activate = [], ""
    log_path = work / "quickstart.log"
    print(f"clone {clone} (commit {commit[:10]}), HOME {home}, log {log_path}", flush=True)
    with open(log_path, "w") as log:
        for step in steps:
            if step.startswith(". ") or step.startswith("source "):
                activate = step + " && "
                continue
            log.write(f"\n$ {step}\n")
            print(f"$ {step}", flush=True)
            r = run_phase(activate + step, clone, env, log)
            print(f"  {r['wall_s']:.1f} s wall, {r['cpu_s']:.1f} s CPU, exit {r['rc']}", flush=True)
            if step.startswith("mlflow run ") and r["command_started_s"] is not None:
                build, build_cpu = r["command_started_s"], r["command_started_cpu_s"]
                rows.append({"phase": "mlflow run: env build", "wall_s": build, "cpu_s": build_cpu, "rc": 0,
                             "install": True})
                rows.append({"phase": "mlflow run: " + re.sub(r"^mlflow run ", "", step), "wall_s":
                             round(r["wall_s"] - build, 1), "cpu_s": round(r["cpu_s"] - build_cpu, 1),
                             "rc": r["rc"], "install": False})
            else:
                rows.append({"phase": step, **{k: r[k] for k in ("wall_s", "cpu_s", "rc")},
                             "install": step.startswith(INSTALLS)})
            if r["rc"] != 0:
                print(f"phase failed: {step} (exit {r['rc']}); see {log_path}", file=sys.stderr)
                break
    after = [r for r in rows if not r["install"]]
    doc = {
        "commit": commit,
        "env_manager": a.env_manager or "as README (virtualenv)",
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "load_avg_at_end": os.getloadavg()},
        "phases": rows,
        "after_installs": {"wall_s": round(sum(r["wall_s"] for r in after), 1),
                           "cpu_s": round(sum(r["cpu_s"] or 0 for r in after), 1)},
        "ok": all(r["rc"] == 0 for r in rows) and len(rows) >= len([s for s in steps if not s.startswith(". ")]),
        "command": " && ".join(steps),
    }
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(doc, indent=1) + "\n")
    print(f"after the installs: {doc['after_installs']['wall_s']:.0f} s wall, "
          f"{doc['after_installs']['cpu_s']:.0f} s CPU; figures in {a.out}")
    if a.keep:
        print(f"kept {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)
    return 0 if doc["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
