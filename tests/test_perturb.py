"""Zero ablation of neuron subsets: exactly the chosen neurons, hooks always removed, the perturb stage."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from helpers import build_tiny_model, make_rows, save_dataset


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    import os

    from transformers import AutoTokenizer

    from neuron_lib.coactivation import CoactivationConfig, run_coactivation
    from neuron_lib.corpus import tokenizer_fingerprint
    from neuron_lib.models import load_model
    from neuron_lib.prompts import PromptsConfig, run_prompts

    root = tmp_path_factory.mktemp("perturb")
    model_dir = build_tiny_model(root / "tiny-perturb")
    rows = make_rows(10, seed=1)
    ds = save_dataset(
        root / "data" / "tiny.16", rows, ["a"] * 10, tokenizer_fingerprint(AutoTokenizer.from_pretrained(model_dir))
    )
    csv = root / "p.csv"
    csv.write_text("prompts,number_of_new_tokens,num_samples\nthe quick,4,4\nhello,3,4\n")
    old = os.environ.get("GRAPHS_DIR")
    os.environ["GRAPHS_DIR"] = str(root / "graphs")
    try:
        run_prompts(PromptsConfig(model=str(model_dir), prompts_csv=str(csv), seed=5, device="cpu"))
        run_coactivation(
            CoactivationConfig(
                model=str(model_dir),
                run="p",
                subset_thresholds=(0.0,),
                subset_ratios=(0.05,),
                subset_methods=("degree",),
                n_random=2,
            )
        )
        yield {"model": str(model_dir), "root": root, "dataset": str(ds), "bridge": load_model(str(model_dir))}
    finally:
        if old is None:
            os.environ.pop("GRAPHS_DIR", None)
        else:
            os.environ["GRAPHS_DIR"] = old


def capture(model, tokens, hooks):
    names = [f"blocks.{l}.mlp.hook_post" for l in range(model.cfg.n_layers)]
    seen = {}

    def grab(name):
        def hook(act, hook=None):
            seen[name] = act.detach().clone()

        return hook

    with torch.no_grad(), model.hooks(fwd_hooks=[*hooks, *[(n, grab(n)) for n in names]]):
        model(tokens)
    return [seen[n][0] for n in names]


def test_ablation_zeroes_exactly_the_chosen_neurons(env):
    from neuron_lib.generation import attached_hook_count, zero_ablation_hooks

    model = env["bridge"]
    d = model.cfg.d_mlp
    tokens = torch.tensor(make_rows(10, seed=3)[:1])
    base = capture(model, tokens, [])
    chosen = np.array([3, 17, 40, d + 5, d + 60])  # layer 0: 3, 17, 40; layer 1: 5, 60
    ablated = capture(model, tokens, zero_ablation_hooks(chosen, d))
    assert attached_hook_count(model) == 0
    assert (base[0][:, [3, 17, 40]] != 0).any()  # the test means something
    assert (ablated[0][:, [3, 17, 40]] == 0).all() and (ablated[1][:, [5, 60]] == 0).all()
    others = np.setdiff1d(np.arange(d), [3, 17, 40])
    assert torch.equal(ablated[0][:, others], base[0][:, others])  # layer 0: nothing else changed
    # layer-1-only ablation leaves layer 0 untouched and only the chosen layer-1 neurons are zeroed there
    only1 = capture(model, tokens, zero_ablation_hooks(np.array([d + 5]), d))
    assert torch.equal(only1[0], base[0])
    rest = np.setdiff1d(np.arange(d), [5])
    assert torch.equal(only1[1][:, rest], base[1][:, rest]) and (only1[1][:, 5] == 0).all()


def test_hooks_removed_when_a_forward_fails(env, monkeypatch):
    from neuron_lib import perturb
    from neuron_lib.generation import attached_hook_count, zero_ablation_hooks

    model = env["bridge"]
    tokens = torch.tensor(make_rows(10, seed=0)[:2])
    hooks = zero_ablation_hooks(np.array([1, 2]), model.cfg.d_mlp)

    def broken(act, hook=None):
        raise ValueError("broken ablation")

    with pytest.raises(ValueError, match="broken"):
        perturb.logits_with_hooks(model, tokens, [*hooks, ("blocks.1.mlp.hook_post", broken)])
    assert attached_hook_count(model) == 0
    # inside the loss/KL loop: an ablation hook that fails on a later subset
    from neuron_lib import generation
    from neuron_lib.corpus import load_token_dataset

    dataset, _ = load_token_dataset(env["dataset"])
    real = generation.zero_ablation_hooks
    monkeypatch.setattr(
        generation,
        "zero_ablation_hooks",
        lambda ids, d: real(ids, d) + ([("blocks.0.mlp.hook_post", broken)] if len(ids) == 2 else []),
    )
    with pytest.raises(ValueError, match="broken"):
        perturb.loss_kl(model, dataset, 4, 2, {"fine": np.array([4]), "bad": np.array([1, 2])}, model.cfg.d_mlp)
    assert attached_hook_count(model) == 0


def test_row_loss_kl():
    from neuron_lib.perturb import bootstrap_ci, row_loss_kl

    torch.manual_seed(0)
    logits = torch.randn(3, 5, 7)
    tokens = torch.randint(0, 7, (3, 5))
    loss, kl = row_loss_kl(logits, logits, tokens)
    assert np.allclose(kl, 0, atol=1e-6)
    want = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, 7), tokens[:, 1:].reshape(-1), reduction="none")
    assert np.allclose(loss, want.view(3, 4).mean(1).numpy(), atol=1e-6)
    other = torch.randn(3, 5, 7)
    _, kl2 = row_loss_kl(logits, other, tokens)
    p = torch.softmax(logits[:, :-1], -1)
    ref = (p * (p.log() - torch.log_softmax(other[:, :-1], -1))).sum(-1).mean(1)
    assert np.allclose(kl2, ref.numpy(), atol=1e-5) and (kl2 > 0).all()
    lo, hi = bootstrap_ci(np.arange(100.0), 500, np.random.default_rng(0))
    assert lo < 49.5 < hi


def test_perturb_stage(env, monkeypatch):
    from neuron_lib import artifacts
    from neuron_lib.common import ManifestMismatch
    from neuron_lib.generation import attached_hook_count
    from neuron_lib.perturb import PerturbConfig, run_perturb

    monkeypatch.setenv("GRAPHS_DIR", str(env["root"] / "graphs"))
    cfg = PerturbConfig(
        model=env["model"], run="p", token_dataset=env["dataset"], max_tokens=None, n_bootstrap=200, device="cpu"
    )
    res = run_perturb(cfg)
    assert res.status == "done"
    folder = artifacts.perturbation_results(env["model"], "p")
    index = pd.read_csv(artifacts.coactivation_graph(env["model"], "p") / "subsets" / "subsets.csv")
    names = ["none", *[f[:-4] for f in index["file"]]]
    assert len(names) == 4  # baseline, one degree subset, two controls
    samples = pd.read_csv(artifacts.prompt_activations(env["model"], "p") / "samples.csv", keep_default_na=False)
    for name in names:
        gen = pd.read_csv(folder / "generations" / f"{name}.csv", keep_default_na=False)
        assert list(gen.columns) == ["prompt", "sample_index", "generated_text", "perturbation_subset"]
        assert len(gen) == 8 and (gen["perturbation_subset"] == name).all()
        if name == "none":  # the baseline reproduces the prompt run's samples
            assert gen["generated_text"].tolist() == samples["generated_text"].tolist()
    table = pd.read_csv(folder / "loss_kl.csv").set_index("subset")
    assert table.loc["none", "kl_mean"] == 0 and np.isclose(table.loc["none", "loss_delta"], 0)
    assert (table.drop("none")["kl_mean"] > 0).all()
    assert (table["loss_ci_low"] <= table["loss_mean"]).all() and (table["loss_mean"] <= table["loss_ci_high"]).all()
    comparison = pd.read_csv(folder / "comparison.csv")
    assert len(comparison) == 1 and comparison["n_controls"].iloc[0] == 2
    assert attached_hook_count(env["bridge"]) == 0
    assert run_perturb(cfg).status == "skipped"
    with pytest.raises(ManifestMismatch, match="threshold"):
        run_perturb(PerturbConfig(model=env["model"], run="p", activation_threshold=0.3))
