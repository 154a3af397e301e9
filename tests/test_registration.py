"""A forget's steps after registration (description, alias, the parent's superseded tag, --purge)
are one idempotent function, and a parent with a child is superseded whether or not its tag was
written. The windows a SIGKILL can leave between those steps: tests/test_crash.py.
"""

from __future__ import annotations

from helpers import invoke


def _train(name: str) -> None:  # its own run and store: a purge deletes that store's chunks
    invoke("train", "--arch", "cnn", "--epochs", "1", "--batch-size", "128", "--codec", "f32", "--no-audit",
           "--model-name", name)


def test_a_parent_with_a_child_but_no_superseded_tag_can_be_purged(registry_copy):
    from mlflow_amnesia.mlflow import registry
    from mlflow_amnesia.jobs.purge import TAG_PURGED

    _train("untagged")
    ids = invoke("records", "--model", "untagged", "--limit", "2").output.split()
    (registry_copy / "ids.txt").write_text("\n".join(ids) + "\n")
    invoke("forget", "--model", "untagged", "--records", str(registry_copy / "ids.txt"), "--yes", "--no-audit")
    c = registry.client()
    c.delete_model_version_tag("untagged", "1", registry.TAG_SUPERSEDED)  # as a forget killed before it leaves v1
    r = invoke("purge", "--model", "untagged", "--version", "1", "--yes")
    assert "purged untagged v1" in r.output
    v1 = c.get_model_version("untagged", "1")
    assert TAG_PURGED in v1.tags
    r = invoke("purge", "--model", "untagged", "--version", "2", "--yes", ok=False)
    assert r.exit_code == 1 and "v2 is not superseded" in r.output  # the current version still is not


def test_complete_registration_is_idempotent_and_says_what_it_did(registry_copy, tmp_path):
    from mlflow_amnesia.mlflow import registry
    from mlflow_amnesia.jobs.forget import complete_registration

    _train("twice")
    ids = invoke("records", "--model", "twice", "--limit", "1").output.split()
    (tmp_path / "ids.txt").write_text(ids[0] + "\n")
    invoke("forget", "--model", "twice", "--records", str(tmp_path / "ids.txt"), "--yes", "--no-audit")
    c = registry.client()
    c.delete_model_version_tag("twice", "1", registry.TAG_SUPERSEDED)
    c.update_model_version("twice", "2", description="")
    done = complete_registration("twice", 2, set_alias="production").done
    assert done == ["description", "alias production", "superseded tag on v1"]
    assert complete_registration("twice", 2, set_alias="production").done == []
    v2 = c.get_model_version("twice", "2")
    assert "**twice v2** forgets 1 record(s) from v1" in v2.description and "**Lineage:**" in v2.description
    assert c.get_model_version("twice", "1").tags[registry.TAG_SUPERSEDED] == "2"
    assert int(c.get_model_version_by_alias("twice", "production").version) == 2
