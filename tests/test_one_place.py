"""One concept, one place: tag names, the keyed-hash membership test, store errors (issue 14).

These read the package's source: a second copy of a concept (a tag spelled out as a string, the
membership test written again) fails here, before it can drift from the first.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import numpy as np

import mlflow_amnesia

PACKAGE = Path(mlflow_amnesia.__file__).parent
_TAG = re.compile(r"^amnesia\.[a-z_]+$")
_NOT_TAGS = {"amnesia.json"}  # a file name of a version (data/amnesia.json), not a tag


def _sources():
    for f in sorted(PACKAGE.rglob("*.py")):
        yield f, ast.parse(f.read_text(), str(f))


def test_every_amnesia_tag_name_is_spelled_once_in_tags_py():
    found = []
    for f, tree in _sources():
        if f.name == "tags.py" and f.parent == PACKAGE:
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and _TAG.match(node.value) \
                    and node.value not in _NOT_TAGS:
                found.append(f"{f.relative_to(PACKAGE)}:{node.lineno}: {node.value!r}")
    assert not found, "tag names outside mlflow_amnesia/tags.py:\n" + "\n".join(found)


def test_stored_tag_names_are_unchanged():
    from mlflow_amnesia import tags

    assert (tags.TAG_PARENT, tags.TAG_METHOD, tags.TAG_N_RECORDS, tags.TAG_STEPS, tags.TAG_REQUEST,
            tags.TAG_SUPERSEDED, tags.TAG_REPAIR, tags.TAG_FLAVOR_FORMAT, tags.TAG_PURGED, tags.TAG_PURGE_STARTED,
            tags.TAG_PLAN, tags.TAG_ROLE, tags.TAG_SHADOW_KEY) == (
        "amnesia.parent_version", "amnesia.method", "amnesia.n_records", "amnesia.steps_rolled_back",
        "amnesia.forget_request", "amnesia.superseded_by", "amnesia.repair", "amnesia.flavor", "amnesia.purged",
        "amnesia.purge_started", "amnesia.forget_plan", "amnesia.role", "amnesia.shadow_key")


def test_the_keyed_hash_membership_test_lives_in_keys_only():
    """``.view("V16")`` (or any V-view of hashes) and the literal 16 for a hash width outside keys.py
    would be a second copy of the membership test or of ``keys.HASH_BYTES``."""
    found = []
    for f, tree in _sources():
        if f.name == "keys.py" and f.parent == PACKAGE:
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and re.fullmatch(r"V\d+", node.value):
                found.append(f"{f.relative_to(PACKAGE)}:{node.lineno}: {node.value!r}")
            if _hash_row_spelled_out(node):
                found.append(f"{f.relative_to(PACKAGE)}:{node.lineno}: a hash row of 16 bytes spelled out")
    assert not found, "use mlflow_amnesia.keys (hashes_in, hash_keys, hash_rows, HASH_BYTES):\n" + "\n".join(found)


def _hash_row_spelled_out(node: ast.AST) -> bool:
    """``(0, 16)``, ``(-1, 16)`` or ``x.reshape(-1, 16)``: the shape of keyed hashes written with 16."""
    if isinstance(node, ast.Tuple):
        items = node.elts
    elif isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "reshape":
        items = node.args
    else:
        return False
    return (len(items) == 2 and isinstance(items[1], ast.Constant) and items[1].value == 16
            and isinstance(items[0], (ast.Constant, ast.UnaryOp)))


def test_hashes_in_is_the_membership_of_whole_hash_rows():
    from mlflow_amnesia.keys import HASH_BYTES, hash_ids, hashes_in, no_hashes

    key = bytes(range(32))
    a = hash_ids(["x", "y", "z"], key)
    b = hash_ids(["z", "w", "x"], key)
    assert hashes_in(a, b).tolist() == [True, False, True]
    assert hashes_in(a, no_hashes()).tolist() == [False, False, False]
    assert hashes_in(no_hashes(), a).shape == (0,)
    assert no_hashes().shape == (0, HASH_BYTES)
    half = a.copy()
    half[0, HASH_BYTES // 2:] = b[1, HASH_BYTES // 2:]  # agreeing in one half is not membership
    assert not hashes_in(half[:1], np.concatenate([a[1:], b]))[0]


def test_store_errors_live_in_errors_and_are_the_stores():
    from mlflow_amnesia import errors
    from mlflow_amnesia.recording import store

    assert store.UnknownStepsError is errors.UnknownStepsError
    assert store.PurgedStepsError is errors.PurgedStepsError
    assert issubclass(errors.UnknownStepsError, errors.StoreError)
    assert "purged" in str(errors.PurgedStepsError([3, 1], "memory://s"))
