"""The seed zoo: seed-only differences, deterministic data order, resumable training, manifests."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from neuron_lib import zoo
from neuron_lib.common import NeuronLibError


def test_batch_rows_is_a_seeded_permutation_per_epoch():
    n_rows, bs = 10, 4
    rows = torch.cat([zoo.batch_rows(7, s, bs, n_rows) for s in range(5)])  # 20 rows = 2 epochs
    assert sorted(rows[:10].tolist()) == list(range(10)) and sorted(rows[10:20].tolist()) == list(range(10))
    assert torch.equal(rows, torch.cat([zoo.batch_rows(7, s, bs, n_rows) for s in range(5)]))
    assert not torch.equal(rows, torch.cat([zoo.batch_rows(8, s, bs, n_rows) for s in range(5)]))


def test_learning_rate_schedule():
    cfg = zoo.make_config("default", max_steps=100, warmup_steps=10, lr=1e-3, min_lr_frac=0.1)
    assert math.isclose(zoo.learning_rate(cfg, 0), 1e-4)
    assert math.isclose(zoo.learning_rate(cfg, 9), 1e-3)
    assert math.isclose(zoo.learning_rate(cfg, 100), 1e-4)
    assert all(zoo.learning_rate(cfg, s) >= zoo.learning_rate(cfg, s + 1) for s in range(10, 100))


def test_config_validation():
    with pytest.raises(NeuronLibError):
        zoo.make_config("default", d_model=130, n_head=4)
    with pytest.raises(NeuronLibError):
        zoo.make_config("default", seeds=(1, 1))
    with pytest.raises(NeuronLibError, match="unknown preset"):
        zoo.make_config("huge")
    with pytest.raises(NeuronLibError, match="precision"):
        zoo.make_config("micro", precision="fp16")
    with pytest.raises(NeuronLibError, match="adamw_impl"):
        zoo.make_config("micro", adamw_impl="apex")


def test_training_step_numerics_are_identity_only_when_changed():
    record = zoo._config_record(zoo.make_config("micro"), 1, {})
    assert "precision" not in record["train"] and "adamw_impl" not in record["train"]  # older zoos stay finished
    for field, value in (("precision", "bf16-autocast"), ("adamw_impl", "fused")):
        assert zoo._config_record(zoo.make_config("micro", **{field: value}), 1, {})["train"][field] == value


def test_adamw_kernels_agree_and_bf16_autocast_stays_close():
    """foreach / fused AdamW are the same algorithm as the default kernel (float rounding apart); bf16 autocast
    changes the forward numerics, so its weights move away from fp32 more than a kernel change does."""
    batch = torch.randint(0, 50, (8, 16), generator=torch.Generator().manual_seed(0))

    def trained(**fields):
        cfg = zoo.make_config("micro", max_steps=6, warmup_steps=2, **fields)
        model = zoo.build_model(cfg, 50, 16, seed=3)
        optimizer = zoo._optimizer(model, cfg)
        losses = [zoo.train_step(model, optimizer, batch, cfg, step).item() for step in range(6)]
        return torch.cat([p.detach().flatten() for p in model.parameters()]), losses

    ref, ref_losses = trained()
    assert ref_losses[-1] < ref_losses[0]
    kernel_gap = 0.0
    for impl in ("foreach", "fused"):
        params, _ = trained(adamw_impl=impl)
        kernel_gap = max(kernel_gap, (params - ref).abs().max().item())
    assert kernel_gap < 1e-4
    params, losses = trained(precision="bf16-autocast")
    assert losses[-1] < losses[0] and abs(losses[-1] - ref_losses[-1]) < 0.05
    assert kernel_gap < (params - ref).abs().max().item() < 0.05


def test_micro_zoo_models_differ_only_in_seed(micro_env):
    configs = [json.loads((d / "config.json").read_text()) for d in micro_env.model_dirs]
    for c in configs[1:]:
        assert c == configs[0]
    manifests = [json.loads((d / "manifest.json").read_text()) for d in micro_env.model_dirs]
    assert [m["seed"] for m in manifests] == [21, 49, 81]
    assert (
        len({json.dumps({k: v for k, v in m["record"].items() if k != "seed"}, sort_keys=True) for m in manifests}) == 1
    )
    w = [load_file(str(d / "model.safetensors"))["transformer.h.0.mlp.c_fc.weight"] for d in micro_env.model_dirs]
    assert not torch.equal(w[0], w[1])
    for m, d in zip(manifests, micro_env.model_dirs):
        assert m["held_out_loss"] < math.log(320)  # learned something beyond uniform
        from transformers import AutoTokenizer

        assert len(AutoTokenizer.from_pretrained(d)) == 320  # the model folder carries the zoo's tokenizer
        curve = pd.read_csv(d / "loss_curve.csv")
        assert curve["step"].is_monotonic_increasing and curve["step"].iloc[-1] == micro_env.config.max_steps
        assert curve.filter(like="loss").iloc[-1].min() < curve.filter(like="loss").iloc[0].max()  # it learned
        assert not (d / "checkpoint").exists()


def test_finished_model_is_not_retrained(micro_env):
    before = (micro_env.model_dirs[0] / "model.safetensors").stat().st_mtime_ns
    zoo.train_one(micro_env.config, 0, show_progress=False)
    assert (micro_env.model_dirs[0] / "model.safetensors").stat().st_mtime_ns == before


def test_sigkilled_training_resumes_to_identical_weights(micro_env):
    cfg = micro_env.config
    args = [
        sys.executable,
        "-m",
        "neuron_lib.zoo",
        "train",
        "--preset",
        "micro",
        "--name-prefix",
        "resumed",
        "--seeds",
        "21",
        "--train-dataset",
        str(micro_env.train_dataset),
        "--analysis-dataset",
        str(micro_env.analysis_dataset),
    ]
    env = {**os.environ, "NEURON_LIB_KILL_AFTER_CHECKPOINT": "20"}
    killed = subprocess.run(args, env=env, capture_output=True, text=True)
    assert killed.returncode == -9, killed.stderr[-2000:]
    out = Path(os.environ["MODELS_DIR"]) / "zoo" / "resumed-a"
    assert json.loads((out / "checkpoint" / "progress.json").read_text())["step"] == 20
    assert not (out / "manifest.json").exists()
    env.pop("NEURON_LIB_KILL_AFTER_CHECKPOINT")
    resumed = subprocess.run(args, env=env, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    # same seed and config as micro-a, trained without interruption in the fixture
    a = load_file(str(micro_env.model_dirs[0] / "model.safetensors"))
    b = load_file(str(out / "model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert json.loads((out / "manifest.json").read_text())["steps"] == cfg.max_steps


def test_missing_training_data_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("DATASET_DIR", str(tmp_path))
    with pytest.raises(NeuronLibError, match="neuron_lib.corpus build"):
        zoo.train_zoo(zoo.make_config("micro"))
