"""A forget's steps after registration (description, alias, the parent's superseded tag, --purge)
are one idempotent function, and a parent with a child is superseded whether or not its tag was
written. The windows a SIGKILL can leave between those steps: tests/test_crash.py.
"""

from __future__ import annotations

import pytest
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
    c.update_model_version("twice", "1", description="")  # as a forget killed before the banner leaves it
    done = complete_registration("twice", 2, set_alias="production").done
    assert done == ["description", "alias production", "superseded tag on v1", "banner on v1"]
    assert complete_registration("twice", 2, set_alias="production").done == []
    v2 = c.get_model_version("twice", "2")
    assert "**twice v2** forgets 1 record(s) from v1" in v2.description and "**Lineage:**" in v2.description
    assert c.get_model_version("twice", "1").tags[registry.TAG_SUPERSEDED] == "2"
    assert int(c.get_model_version_by_alias("twice", "production").version) == 2


@pytest.mark.slow
def test_a_superseded_version_is_marked_warns_when_loaded_and_loses_its_alias(registry_copy, tmp_path):
    import mlflow

    from mlflow_amnesia.jobs.forget import complete_registration
    from mlflow_amnesia.mlflow import flavor, registry

    _train("marked")
    c = registry.client()
    c.update_model_version("marked", "1", description="Trained on digits.")
    c.set_registered_model_alias("marked", "production", "1")
    c.set_registered_model_alias("marked", "staging", "1")
    ids = invoke("records", "--model", "marked", "--limit", "3").output.split()
    (tmp_path / "ids.txt").write_text("\n".join(ids) + "\n")
    r = invoke("forget", "--model", "models:/marked@production", "--records", str(tmp_path / "ids.txt"), "--yes",
               "--no-audit", "--set-alias", "production")
    assert "note: alias(es) staging still point at v1, which v2 superseded" in r.output  # not moved: said so
    c.delete_registered_model_alias("marked", "staging")
    v1 = c.get_model_version("marked", "1")
    banner = v1.description.split("\n", 1)[0]
    assert banner.startswith("> **Superseded by v2.**") and "contribution of the 3 record(s) v2 forgot" in banner
    assert "`mlflow-amnesia purge --model marked --version 1`" in banner
    assert v1.description.endswith("Trained on digits.")  # what was there stays, below the banner
    assert int(c.get_model_version_by_alias("marked", "production").version) == 2  # the alias moved off v1
    # idempotent: a second completion neither stacks banners nor changes the description
    c.update_model_version("marked", "1", description=registry.with_banner(v1.description, "> **Superseded by v9.** old"))
    assert complete_registration("marked", 2).done == ["banner on v1"]
    assert complete_registration("marked", 2).done == []
    d = c.get_model_version("marked", "1").description
    assert d == v1.description and d.count(registry.BANNER_START) == 1
    # loading or serving it (pyfunc, the path `mlflow models serve` takes) warns; its child does not
    with pytest.warns(flavor.SupersededVersionWarning, match="marked v1 .* was superseded by v2.*still holds"):
        flavor.load_model("models:/marked/1")
    with pytest.warns(flavor.SupersededVersionWarning, match="mlflow-amnesia purge --model marked --version 1"):
        mlflow.pyfunc.load_model("models:/marked/1")
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error", flavor.SupersededVersionWarning)
        flavor.load_model("models:/marked@production")
    # purged: the tombstone note replaces the banner
    invoke("purge", "--model", "models:/marked/1", "--yes")
    d = c.get_model_version("marked", "1").description
    assert d.startswith("**Purged**") and registry.BANNER_START not in d and "Trained on digits." in d
