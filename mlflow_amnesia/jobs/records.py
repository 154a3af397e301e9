"""Listing the record ids of a version's data, so a user can write an ids file."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from ..mlflow import registry


def list_records(
    model_name: str,
    *,
    version: int | None = None,
    alias: str | None = None,
    cls: str | None = None,
    part: str = "train",
    limit: int | None = None,
    data_root: str | None = None,
) -> Iterator[tuple[str, str]]:
    """(record id, class name) of the version's training (or held-out) records, in data order,
    leaving out records already forgotten along the lineage and every record under a deletion
    request in the erasure ledger of the model or its data set (even where this version still
    holds it: such a record is never listed as present)."""
    from ..learning.data import Split, class_records, forgotten_positions, rebuild
    from ..mlflow import ledger
    from ..mlflow.flavor import load_model

    mv = registry.resolve_version(model_name, version=version, alias=alias)
    am = load_model(registry.model_uri(mv))
    fp = (am.info.dataset or {}).get("fingerprint")
    requested = ledger.requests(model=model_name, datasets=[fp] if fp else [])
    key = None
    if part == "train" and (
        len(am.forgotten) or requested
    ):  # the forgotten are keyed hashes: the version's key finds them
        from ..keys import load_key_for

        key = load_key_for(am.info.key_id, f"{model_name} v{mv.version}", to="leave out its forgotten records")
    records = rebuild(am.info.dataset or {}, root=data_root)
    sp = Split.from_json(am.info.split or {}, records)
    pos = np.asarray(sp.train if part == "train" else sp.holdout, dtype=np.int64)
    if cls is not None:
        pos = np.intersect1d(pos, class_records(records, int(cls) if str(cls).isdigit() else cls))
    if key is not None:
        from ..keys import hash_rows

        gone = np.concatenate([hash_rows(am.forgotten)] + [hash_rows(r.hashes) for r in requested])
        pos = np.setdiff1d(pos, forgotten_positions(records, pos, gone, key))
    if limit is not None:
        pos = pos[:limit]
    y = records.y.numpy()
    for p in pos:
        yield str(records.ids[p]), str(records.classes[y[p]])
