"""benchmarks/compare_outputs.py: two small output trees, identical or with one planted change each."""

from __future__ import annotations

import importlib.util
import json
import math
import shutil
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import save_file

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "compare_outputs.py"


def _load_script():
    spec = importlib.util.spec_from_file_location("compare_outputs", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve their module while the class is built
    spec.loader.exec_module(module)
    return module


co = _load_script()


def _build_tree(root: Path) -> Path:
    """A miniature pipeline output: tensors, tables, a manifest, a figure and its data, a HF arrow file."""
    model = root / "models" / "zoo" / "m1"
    model.mkdir(parents=True)
    w = torch.arange(12, dtype=torch.float32).reshape(3, 4) / 7
    stats = torch.tensor([1.0, float("nan"), 3.0])
    save_file(
        {"w": w, "stats": stats, "ids": torch.arange(5)}, str(model / "model.safetensors"), metadata={"format": "pt"}
    )
    manifest = {
        "stage": "zoo",
        "config": {"x": 1, "token_dataset": str(root / "token_datasets" / "d")},
        "created_unix": 1000.0,
        "versions": {"torch": "2.13"},
        "files": ["a", "b"],
        "plan": {"block_rows": 8, "probe_gflops": 3.5, "estimated_seconds": 1.2},
    }
    (model / "manifest.json").write_text(json.dumps(manifest))
    frames = root / "dataframes"
    frames.mkdir()
    table = pd.DataFrame({"layer": [0, 0, 1], "corr": [0.5, float("nan"), 0.25], "name": ["a", "b", "c"]})
    table.to_csv(frames / "neuron_stats.csv", index=False)
    table.to_parquet(frames / "neuron_stats.parquet")
    figures = root / "figures"
    figures.mkdir()
    (figures / "fig1.png").write_bytes(b"\x89PNG\r\n\x1a\nfake-image")
    pd.DataFrame({"x": [1, 2], "y": [0.1, 0.2]}).to_csv(figures / "fig1.csv", index=False)
    arrays = root / "summary_data"
    arrays.mkdir()
    np.savez(arrays / "hist.npz", counts=np.arange(6).reshape(2, 3), edges=np.linspace(0, 1, 4))
    data = root / "token_datasets" / "d"
    data.mkdir(parents=True)
    (data / "data-00000-of-00001.arrow").write_bytes(b"arrow-bytes")
    return root


@pytest.fixture
def trees(tmp_path: Path) -> tuple[Path, Path]:
    return _build_tree(tmp_path / "old"), _build_tree(tmp_path / "new")


def _result(report, rel: str):
    return next(r for r in report.results if r.path == rel)


def test_identical_trees_have_no_data_differences(trees):
    old, new = trees
    report = co.compare_trees(old, new)
    assert not report.has_data_diff
    assert report.results and all(r.identical for r in report.results)
    assert not report.only_old and not report.only_new and not report.folder_notes
    # the manifests differ in bytes (each names its own root) yet are equal once roots are normalised
    assert (old / "models/zoo/m1/manifest.json").read_bytes() != (new / "models/zoo/m1/manifest.json").read_bytes()
    assert "no data differences" in co.render_markdown(report)


def test_changed_tensor_element_is_found_with_its_delta_and_count(trees):
    old, new = trees
    path = new / "models/zoo/m1/model.safetensors"
    w = torch.arange(12, dtype=torch.float32).reshape(3, 4) / 7
    w[1, 2] += 0.5
    save_file(
        {"w": w, "stats": torch.tensor([1.0, float("nan"), 3.0]), "ids": torch.arange(5)},
        str(path),
        metadata={"format": "pt"},
    )
    report = co.compare_trees(old, new)
    result = _result(report, "models/zoo/m1/model.safetensors")
    assert result.kind == "tensors" and len(result.diffs) == 1  # the NaN in `stats` is equal to its twin
    line = result.diffs[0]
    assert line.startswith("`w`:") and "max |Δ| = 0.5," in line and "1 of 12 elements differ" in line
    assert report.has_data_diff
    md = co.render_markdown(report)
    assert "### `models/zoo/m1/model.safetensors` (tensors)" in md and "| differing: tensors | 1 |" in md
    # a tolerance above the change makes it equal
    assert not co.compare_trees(old, new, atol=0.6).has_data_diff


def test_tensor_shape_and_key_changes(trees):
    old, new = trees
    save_file({"w": torch.zeros(4, 4), "extra": torch.ones(1)}, str(new / "models/zoo/m1/model.safetensors"))
    diffs = _result(co.compare_trees(old, new), "models/zoo/m1/model.safetensors").diffs
    assert "tensor `ids` only in old" in diffs and "tensor `extra` only in new" in diffs
    assert "`w`: shape [3, 4] → [4, 4]" in diffs
    assert any(d.startswith("metadata `format`") for d in diffs)


def test_changed_csv_column_is_named_and_nan_equals_nan(trees):
    old, new = trees
    table = pd.DataFrame({"layer": [0, 0, 1], "corr": [0.5, float("nan"), 0.75], "name": ["a", "B", "c"]})
    table.to_csv(new / "dataframes/neuron_stats.csv", index=False)
    diffs = _result(co.compare_trees(old, new), "dataframes/neuron_stats.csv").diffs
    assert len(diffs) == 2 and not any("`layer`" in d for d in diffs)
    assert any(d.startswith("column `corr`:") and "max |Δ| = 0.5," in d and "1 values differ" in d for d in diffs)
    assert any(d.startswith("column `name`:") and "first at row 1" in d for d in diffs)


def test_parquet_column_only_on_one_side_and_row_count(trees):
    old, new = trees
    pd.DataFrame({"layer": [0, 0, 1, 2], "corr": [0.5, float("nan"), 0.25, 0.0]}).to_parquet(
        new / "dataframes/neuron_stats.parquet"
    )
    diffs = _result(co.compare_trees(old, new), "dataframes/neuron_stats.parquet").diffs
    assert "column `name` only in old" in diffs
    assert any(d.startswith("rows: 3 → 4") for d in diffs)
    assert not any("`corr`" in d or "`layer`" in d for d in diffs)  # equal over the common rows


def test_volatile_json_keys_are_ignored_but_config_changes_are_reported(trees):
    old, new = trees
    path = new / "models/zoo/m1/manifest.json"
    manifest = json.loads(path.read_text())
    manifest.update(created_unix=2000.0, versions={"torch": "9.9"})
    manifest["plan"].update(probe_gflops=99.0, estimated_seconds=0.1)
    path.write_text(json.dumps(manifest))
    report = co.compare_trees(old, new)
    assert not report.has_data_diff
    manifest["config"]["x"] = 2
    path.write_text(json.dumps(manifest))
    report = co.compare_trees(old, new)
    assert _result(report, "models/zoo/m1/manifest.json").diffs == ["`config.x`: 1 → 2"]
    assert "`config.x`: 1 → 2" in co.render_markdown(report)
    # --ignore-key by dotted path or by name silences it
    assert not co.compare_trees(old, new, ignore_keys=["config.x"]).has_data_diff
    assert not co.compare_trees(old, new, ignore_keys=["x"]).has_data_diff


def test_npz_change_and_rendering_is_not_data(trees):
    old, new = trees
    np.savez(new / "summary_data/hist.npz", counts=np.arange(6).reshape(2, 3) * 2, edges=np.linspace(0, 1, 4))
    (new / "figures/fig1.png").write_bytes(b"\x89PNG\r\n\x1a\nother-image")
    report = co.compare_trees(old, new)
    assert _result(report, "summary_data/hist.npz").diffs == ["`counts`: max |Δ| = 5, 5 of 6 elements differ"]
    assert [r.path for r in report.differing("rendering")] == ["figures/fig1.png"]
    np.savez(new / "summary_data/hist.npz", counts=np.arange(6).reshape(2, 3), edges=np.linspace(0, 1, 4))
    report = co.compare_trees(old, new)
    assert not report.has_data_diff and len(report.differing("rendering")) == 1
    assert "## Rendering differences" in co.render_markdown(report)


def test_only_in_new_and_missing_folder_are_reported(trees):
    old, new = trees
    (new / "dataframes/new_table.csv").write_text("a\n1\n")
    shutil.rmtree(old / "figures")
    report = co.compare_trees(old, new)
    assert report.only_new == ["dataframes/new_table.csv", "figures/fig1.csv", "figures/fig1.png"]
    assert report.folder_notes == ["`figures/` exists only in new (2 file(s))"]
    md = co.render_markdown(report)
    assert "## Only in new" in md and "- `dataframes/new_table.csv`" in md
    # folders absent on both sides are skipped silently
    assert not co.compare_trees(old, new, folders=["correlation_results"]).results


def test_arrow_bytes_differ(trees):
    old, new = trees
    (new / "token_datasets/d/data-00000-of-00001.arrow").write_bytes(b"arrow-bytes-2")
    result = _result(co.compare_trees(old, new), "token_datasets/d/data-00000-of-00001.arrow")
    assert result.kind == "bytes" and result.diffs[0].startswith("bytes differ")


def test_main_exit_codes_and_out_file(trees, tmp_path, capsys):
    old, new = trees
    out = tmp_path / "report.md"
    assert co.main([str(old), str(new), "--fail-on-diff", "--out", str(out)]) == 0
    assert "no data differences" in out.read_text() and "# Output comparison" in capsys.readouterr().out
    save_file({"w": torch.zeros(3, 4)}, str(new / "models/zoo/m1/model.safetensors"))
    assert co.main([str(old), str(new)]) == 0  # the report is the result
    assert co.main([str(old), str(new), "--fail-on-diff"]) == 1
    assert co.main([str(old), str(new), "--fail-on-diff", "--folders", "dataframes,figures"]) == 0
    for bad in ([str(old), str(tmp_path / "missing")], [str(old), str(new), "--rtol", "-1"], [str(old)]):
        with pytest.raises(SystemExit) as exc:
            co.main(bad)
        assert exc.value.code == 2


def test_volatile_keys_constant():
    assert {"created_unix", "versions", "elapsed_s", "seconds", "probe_gflops", "estimated_seconds"} <= co.VOLATILE_KEYS
    assert math.isinf(
        co.array_stats(np.array([1.0, np.nan]), np.array([1.0, 2.0]), co.Context(0, 0, frozenset(), (), ()))[0]
    )
