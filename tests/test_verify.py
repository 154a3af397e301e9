"""`mlflow-amnesia verify` (mlflow_amnesia/jobs/verify.py): a false "OK" is the failure that matters.

Each test damages the module's trained store in one way (conftest's `trained`, shared by the
registry copies: every change is undone in `finally`) and checks that verify fails, exit 1,
naming the file and what to do. Purges killed for real are in tests/test_purge_crash.py.
"""

from __future__ import annotations

import ast
import contextlib
import json
import re
from pathlib import Path
from urllib.parse import urlparse

import pytest
from helpers import MODEL, invoke

REPO = Path(__file__).resolve().parents[1]


def _store_dir() -> Path:
    from mlflow_amnesia.mlflow.flavor import load_model

    return Path(urlparse(load_model(f"models:/{MODEL}/1").segments[0].store_url).path)


@contextlib.contextmanager
def _restored(*paths: Path):
    saved = {p: p.read_bytes() for p in paths}
    try:
        yield
    finally:
        for p, b in saved.items():
            p.write_bytes(b)


def _verify(ok: bool):
    r = invoke("verify", "--model", MODEL, ok=False)
    assert (r.exit_code == 0) == ok, r.output
    assert "Traceback" not in r.output
    return r


def test_a_sound_version_verifies(registry_copy):
    from mlflow_amnesia.jobs.verify import verify_version

    assert ": OK" in _verify(True).output
    rep = verify_version(MODEL)
    assert rep.ok and rep.version == 1 and rep.summary() == "" and not rep.segments[0].leftovers


def test_chunk_files_of_steps_the_store_marks_purged_fail_verify(registry_copy):
    """The state a purge killed between its manifest and its deletions leaves: the version's
    copy still lists the step, whose chunk is sound, so reading through the copy alone says OK."""
    from mlflow_amnesia.jobs.verify import verify_version

    manifest = _store_dir() / "manifest.json"
    with _restored(manifest):
        m = json.loads(manifest.read_bytes())
        step = m["steps"][3]
        files = [c["file"] for c in step["chunks"]]
        m["steps"][3] = {"step": step["step"], "purged": True, "purged_at": "2026-01-01T00:00:00+00:00",
                         "meta": step["meta"]}
        manifest.write_text(json.dumps(m))
        assert all((_store_dir() / f).is_file() for f in files)
        r = _verify(False)
        assert f"{files[0]}: still on disk although its step was purged" in r.output
        assert "the erasure is not finished" in r.output
        assert f"mlflow-amnesia purge --model {MODEL} --version N" in r.output
        rep = verify_version(MODEL)
        assert not rep.ok and rep.segments[0].leftovers == files


def _garble(m: dict, how: str) -> str:
    if how == "not-json":
        return "{not json"
    if how == "truncated":
        return json.dumps(m)[: len(json.dumps(m)) // 2]
    if how == "other-codec":
        m["codec"] = {**m["codec"], "name": "bf16"}
    elif how == "step-missing":
        del m["steps"][5]
    elif how == "digest-changed":
        m["steps"][2]["chunks"][0]["blake3"] = "0" * 64
    elif how == "other-layout":
        m["layout"][0]["name"] = "renamed.weight"
    return json.dumps(m)


@pytest.mark.parametrize("how, says", [
    ("not-json", "not valid JSON"),
    ("truncated", "not valid JSON"),
    ("other-codec", "codec"),
    ("step-missing", "step(s) 5 of the copy are not in the store's manifest"),
    ("digest-changed", "step(s) 2 record other chunk files, sizes or digests"),
    ("other-layout", "tensor layout differs"),
])
def test_a_garbled_or_disagreeing_store_manifest_fails_verify(registry_copy, how, says):
    """The version's copy is sound (a forget would work), the store's own manifest is not (the
    purge after it would fail, or erase by a wrong step table): verify must say so."""
    manifest = _store_dir() / "manifest.json"
    with _restored(manifest):
        manifest.write_text(_garble(json.loads(manifest.read_bytes()), how))
        r = _verify(False)
        assert "manifest.json: " in r.output and says in r.output, r.output
        assert "`mlflow-amnesia purge` relies on it, so restore it" in r.output
    _verify(True)


def test_an_unreadable_manifest_copy_in_the_version_fails_verify(registry_copy):
    from mlflow_amnesia.mlflow import registry

    version_dir = Path(urlparse(registry.client().get_model_version_download_uri(MODEL, "1")).path)
    copy = version_dir / "data" / "segments" / "0" / "manifest.json"
    with _restored(copy):
        copy.write_text("{not json")
        r = _verify(False)
        assert "the version's copy data/segments/0/manifest.json cannot be read" in r.output
        assert "forgets from this version will fail" in r.output


def test_verify_of_another_flavor_is_refused_naming_the_command(registry_copy):
    import mlflow

    class Echo(mlflow.pyfunc.PythonModel):
        def predict(self, context, model_input):
            return model_input

    with mlflow.start_run():
        mlflow.pyfunc.log_model(name="m", python_model=Echo(), registered_model_name="other-flavor")
    r = invoke("verify", "--model", "other-flavor", ok=False)
    assert r.exit_code == 1 and "not an mlflow_amnesia model version" in r.output
    assert "`mlflow-amnesia verify` checks versions registered by `mlflow-amnesia train`" in r.output


_CALL = re.compile(r"\b(verify|purge)\(\)|mode='a'|mode=\"a\"")


def _messages(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, text) of every string expression but docstrings; an f-string's literal parts joined."""
    docs = {id(n.body[0].value) for n in ast.walk(tree)
            if isinstance(n, (ast.Module, ast.ClassDef, ast.FunctionDef)) and n.body
            and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant)}
    inner = {id(v) for n in ast.walk(tree) if isinstance(n, ast.JoinedStr) for v in n.values}
    out = []
    for n in ast.walk(tree):
        if isinstance(n, ast.JoinedStr):
            out.append((n.lineno, "".join(v.value if isinstance(v, ast.Constant) else "{}" for v in n.values)))
        elif isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in docs | inner:
            out.append((n.lineno, n.value))
    return out


@pytest.mark.parametrize("module", [  # where the messages of the store, purge, the CLI, verify and the recorder live
    "recording/store/delta_store.py", "recording/store/manifest.py", "recording/store/chunk.py", "jobs/purge.py",
    "cli.py", "jobs/verify.py", "recording/recorder/recorder.py", "recording/recorder/staging.py",
    "recording/recorder/ddp.py"])
def test_messages_the_cli_prints_name_commands_not_python_calls(module):
    """What to run is a command and its flags (`mlflow-amnesia verify --model NAME`), never only a
    Python call that a user of the command line cannot make. Docstrings are for Python readers."""
    library_only = (  # raised only to a Python caller: no command runs into them
        "open it with DeltaStore.open(url, mode='a') to", "is closed; open it with mode='a'",
        "is open read-only; open it with mode='a'", "copied manifest is read-only: use mode='r'",
        "mode must be 'r' (read) or 'a' (append)",
    )
    tree = ast.parse((REPO / "mlflow_amnesia" / module).read_text())
    found = [f"line {line}: {text!r}" for line, text in _messages(tree)
             if _CALL.search(text) and "`mlflow-amnesia " not in text and not any(a in text for a in library_only)]
    assert found == []
