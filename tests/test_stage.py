"""The stage skeleton: the one folder-state rule, --overwrite, manifest-last writes, the result type."""

from __future__ import annotations

import json

import pytest
import torch

from neuron_lib import stage
from neuron_lib.common import ManifestMismatch, make_manifest, write_manifest


def finished(folder, fp="abc", name="demo"):
    return stage.write_folder(
        folder, {"a.safetensors": {"x": torch.arange(3)}}, make_manifest(name, {}, config_fingerprint=fp)
    )


def test_folder_states(tmp_path):
    folder = tmp_path / "out"
    assert stage.folder_state(folder, "demo", "abc", ["a.safetensors"]) == "absent"
    finished(folder)
    assert stage.folder_state(folder, "demo", "abc", ["a.safetensors"]) == "finished"
    assert stage.folder_state(folder, "demo", "xyz", ["a.safetensors"]) == "other"
    assert stage.folder_state(folder, "other_stage", "abc", ["a.safetensors"]) == "other"
    assert stage.folder_state(folder, "demo", "abc", lambda m: ["a.safetensors", "b.csv"]) == "corrupt"
    (folder / "manifest.json").write_text("{not json")
    assert stage.folder_state(folder, "demo", "abc") == "corrupt"
    (folder / "manifest.json").write_text(json.dumps([1, 2]))
    assert stage.folder_state(folder, "demo", "abc") == "corrupt"


def test_must_run_refuses_other_and_corrupt_unless_overwrite(tmp_path):
    f = tmp_path / "f"
    assert stage.must_run(f, "absent", False, "demo") is True
    assert stage.must_run(f, "finished", False, "demo") is False
    assert stage.must_run(f, "finished", True, "demo") is False  # same configuration: reused, never recomputed
    for state in ("other", "corrupt"):
        with pytest.raises(ManifestMismatch, match="--overwrite"):
            stage.must_run(f, state, False, "demo")
        assert stage.must_run(f, state, True, "demo") is True


def test_write_folder_is_fresh_and_writes_the_manifest_last(tmp_path):
    folder = tmp_path / "out"
    finished(folder)
    (folder / "stale.txt").write_text("old")
    bad = {"a.safetensors": {"x": torch.arange(3)}, "b.safetensors": {"y": "not a tensor"}}
    with pytest.raises((TypeError, AttributeError)):
        stage.write_folder(folder, bad, make_manifest("demo", {}, config_fingerprint="abc"))
    # the failed write left no manifest: the folder reads as unfinished, and the stale file is gone
    assert not (folder / "manifest.json").exists() and not (folder / "stale.txt").exists()
    assert stage.folder_state(folder, "demo", "abc") == "absent"
    write_manifest(folder, make_manifest("demo", {}, config_fingerprint="abc"))
    assert stage.folder_state(folder, "demo", "abc", ["a.safetensors"]) == "finished"


def test_stage_result():
    r = stage.StageResult("demo", "skipped", {"folder": "x"})
    assert r.skipped and r.n_tokens is None and r.details == {}


def test_write_folder_takes_file_names_not_paths(tmp_path):
    with pytest.raises(ValueError, match="file names"):
        stage.write_folder(tmp_path / "out", {"sub/a.safetensors": {"x": torch.arange(3)}}, {})
