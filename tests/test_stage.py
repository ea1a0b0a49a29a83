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


def test_rewriting_an_identical_dataframe_keeps_the_file(tmp_path):
    """A stage that rebuilds the same table (neuron_df on every `make all`) leaves the file and its mtime alone,
    so that the browser's input digest (size + mtime) does not see new input; changed rows replace it."""
    import os

    import pandas as pd

    from neuron_lib.common import save_dataframe_atomic

    df = pd.DataFrame({"layer": [0, 1], "neuron": [3, 4], "x": [0.1, float("nan")]})
    stem = tmp_path / "t"
    written = save_dataframe_atomic(df, stem)
    for p in written:
        os.utime(p, ns=(1_000_000_000, 1_000_000_000))
    save_dataframe_atomic(df.copy(), stem)
    assert [p.stat().st_mtime_ns for p in written] == [1_000_000_000] * 2
    save_dataframe_atomic(df.assign(x=[0.2, 0.3]), stem)
    assert all(p.stat().st_mtime_ns != 1_000_000_000 for p in written)
    assert pd.read_csv(stem.with_suffix(".csv")).x.tolist() == [0.2, 0.3]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary file left behind
