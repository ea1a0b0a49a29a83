"""Tests of neuron_lib.universality: the all-pairs moments against float64 references, the candidate criteria on
planted synthetic worlds (recall and false positives, duplicated neurons included), the exact rotated control
against rotating the activations, and the stage on the micro zoo (layout, skip, kill-and-resume, bad input)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from helpers import build_tiny_model
from neuron_lib import artifacts, criteria, universality
from neuron_lib.common import NeuronLibError, read_json
from neuron_lib.correlations_fast import StreamingCorrelation, prepare_activations, random_rotation
from neuron_lib.universality import UniversalityConfig, WorldMoments


# ============================================================================ float64 references
def world_from_acts(acts: dict[str, np.ndarray], shapes: dict[str, tuple[int, int]]) -> WorldMoments:
    """Two-pass float64 moments of activations [N, T] per model (the independent reference)."""
    names = list(acts)
    xc = {n: acts[n] - acts[n].mean(1, keepdims=True) for n in names}
    blocks = {(a, b): torch.from_numpy(xc[a] @ xc[b].T) for i, a in enumerate(names) for b in names[i:]}
    mean = {n: torch.from_numpy(acts[n].mean(1)) for n in names}
    return WorldMoments(names, shapes, next(iter(acts.values())).shape[1], mean, blocks)


def np_corr(A, B):
    Ac, Bc = A - A.mean(1, keepdims=True), B - B.mean(1, keepdims=True)
    return (Ac @ Bc.T) / np.sqrt((Ac**2).sum(1))[:, None] / np.sqrt((Bc**2).sum(1))[None, :]


def test_merged_halves_equal_one_stream_and_float64():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(12, 900, generator=g, dtype=torch.float64) * 3 + 50  # a large offset
    b = torch.randn(8, 900, generator=g, dtype=torch.float64) + a[:8] * 0.5
    halves = [StreamingCorrelation(12, 8, other_layer_size=4) for _ in range(2)]
    whole = StreamingCorrelation(12, 8, other_layer_size=4)
    for i, t0 in enumerate(range(0, 900, 100)):
        pa, pb = prepare_activations(a[:, t0 : t0 + 100].float()), prepare_activations(b[:, t0 : t0 + 100].float())
        halves[i % 2].update_prepared(pa, pb)
        whole.update_prepared(pa, pb)
    merged = halves[0].merge_(halves[1])
    ac, bc = a - a.mean(1, keepdim=True), b - b.mean(1, keepdim=True)
    assert merged.n == 900
    np.testing.assert_allclose(merged.C.numpy(), (ac @ bc.T).numpy(), rtol=1e-5, atol=1e-3)
    np.testing.assert_allclose(merged.C.numpy(), whole.C.numpy(), rtol=1e-9, atol=1e-6)
    np.testing.assert_allclose(merged.W.numpy(), whole.W.numpy(), rtol=1e-9, atol=1e-6)
    np.testing.assert_allclose(merged.ref_stat.numpy(), (ac**2).sum(1).numpy(), rtol=1e-6)
    np.testing.assert_allclose(merged.oth_mean.numpy(), b.mean(1).numpy(), rtol=1e-7)


def test_multiple_correlation_equals_least_squares_fit():
    rng = np.random.default_rng(1)
    B = rng.normal(size=(10, 500))
    A = np.stack([B[:3].sum(0) + rng.normal(size=500), rng.normal(size=500), B[4] * 2.0])
    w = world_from_acts({"a": A, "b": B}, {"a": (1, 3), "b": (1, 10)})
    r2 = universality.multiple_correlation_sq(w.block("a", "b"), w.blocks["b", "b"], w.var("a"), ridge=0.0)
    X = np.column_stack([np.ones(500), B.T])
    for i in range(3):
        coef, *_ = np.linalg.lstsq(X, A[i], rcond=None)
        resid = A[i] - X @ coef
        ref = 1 - resid.var() / A[i].var()
        assert r2[i].item() == pytest.approx(ref, abs=1e-9)
    assert r2[2].item() == pytest.approx(1.0, abs=1e-9)  # an exact copy of one neuron: R = 1, alignment = 1


def test_rotated_world_equals_rotating_the_activations():
    rng = np.random.default_rng(2)
    acts = {"a": rng.normal(size=(8, 300)) + 1, "b": rng.normal(size=(8, 300))}
    shapes = {"a": (2, 4), "b": (2, 4)}
    w = world_from_acts(acts, shapes)
    rot = universality.rotate_world(w, seed=5)
    brute = {}
    for n, x in acts.items():
        Q = [random_rotation(4, universality.derive_seed(5, "rotated-world", n, l)).numpy() for l in range(2)]
        brute[n] = np.concatenate([Q[l] @ x[4 * l : 4 * (l + 1)] for l in range(2)])
    ref = world_from_acts(brute, shapes)
    for key in w.blocks:
        np.testing.assert_allclose(rot.blocks[key].numpy(), ref.blocks[key].numpy(), rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(rot.mean["a"].numpy(), ref.mean["a"].numpy(), atol=1e-12)


# ============================================================================ planted synthetic worlds
def planted_world(seed: int = 0, T: int = 6000, d: int = 16, n_latent: int = 96, duplicate: bool = True):
    """Three 2-layer models. In each layer the first half of the neurons carry one planted sparse feature each
    (the same features in every model, in a model-specific order); the rest are dense random mixtures of all
    latents (no counterpart anywhere). With ``duplicate``, model a carries feature 0 twice (neurons 0 and 1 of
    layer 0 both code it). Returns (acts, shapes, planted mask of a [2d], duplicate ids of a)."""
    rng = np.random.default_rng(seed)
    Z = np.maximum(rng.normal(size=(n_latent, T)), 0) * rng.uniform(0.5, 2, size=(n_latent, 1))
    half = d // 2
    acts, planted_a = {}, None
    for m in "abc":
        layers, mask = [], []
        for layer in range(2):
            feats = rng.permutation(np.arange(layer * half, (layer + 1) * half))
            planted = Z[feats] + 0.1 * rng.normal(size=(half, T))
            mix = rng.normal(size=(d - half, n_latent)) @ Z / np.sqrt(n_latent) + 0.1 * rng.normal(size=(d - half, T))
            x = np.concatenate([planted, mix])
            order = rng.permutation(d)
            layers.append(x[order])
            mask.append(order < half)
        x = np.concatenate(layers)
        if m == "a":
            planted_a = np.concatenate(mask)
            if duplicate:  # neuron 1 of layer 0 becomes a second copy of neuron 0's planted feature
                i0, i1 = np.flatnonzero(planted_a[:d])[:2]
                x[i1] = x[i0] - 0.1 * rng.normal(size=T) + 0.1 * rng.normal(size=T)
                dup = (int(i0), int(i1))
        acts[m] = x
    return acts, {m: (2, d) for m in "abc"}, planted_a, dup if duplicate else None


def test_alignment_finds_planted_matches_and_keeps_duplicates_that_mutual_matching_loses():
    acts, shapes, planted, dup = planted_world()
    w = world_from_acts(acts, shapes)
    cfg = UniversalityConfig(models=["a", "b", "c"], token_dataset="-").validate()
    df = universality.world_tables(w, ["a"], cfg)["a"]
    aligned = df["is_universal_aligned"].to_numpy()
    recall = aligned[planted].mean()
    false_pos = aligned[~planted].mean()
    assert recall == 1.0, df.loc[planted, "alignment_mean"].describe()
    assert false_pos <= 0.05, df.loc[~planted, "alignment_mean"].describe()
    # the best partner of each planted neuron is its planted counterpart: max_corr matches the brute force
    C = np_corr(acts["a"], acts["b"])
    np.testing.assert_allclose(df["max_corr_b"].to_numpy(), C.max(1), atol=1e-6)
    # both duplicates are aligned; at most one of them can be a mutual best match
    i0, i1 = dup
    assert aligned[i0] and aligned[i1]
    star = df["is_mutual_star"].to_numpy()
    assert star[i0] + star[i1] <= 1
    others = planted.copy()
    others[[i0, i1]] = False
    assert star[others].mean() == 1.0 and df["is_mutual_clique"].to_numpy()[others].mean() == 1.0
    # unmatched neurons can be each other's best match by chance (mixtures of the same latents): measured 6-19 %
    # for the star, 0-6 % for the clique on these worlds; alignment keeps them out
    assert star[~planted].mean() <= 0.25 and df["is_mutual_clique"].to_numpy()[~planted].mean() <= 0.1
    assert not (star & ~planted & aligned).any()


def test_rotated_and_shuffled_controls_select_nothing():
    acts, shapes, planted, _ = planted_world(seed=3, duplicate=False)
    w = world_from_acts(acts, shapes)
    cfg = UniversalityConfig(models=["a", "b", "c"], token_dataset="-").validate()
    rot = universality.world_tables(universality.rotate_world(w, seed=9), ["a"], cfg)["a"]
    assert rot["is_universal_aligned"].mean() == 0.0
    assert rot["alignment_mean"].max() < criteria.ALIGNMENT_THRESHOLD
    assert rot["excess_corr"].abs().mean() < 0.1  # the rotated world's own rotation baseline explains its max-corr
    # a world with no shared features: every model draws its own latents
    rng = np.random.default_rng(4)
    indep = {}
    for m in "abc":
        Z = np.maximum(rng.normal(size=(96, 6000)), 0)
        indep[m] = rng.normal(size=(32, 96)) @ Z / np.sqrt(96) + 0.1 * rng.normal(size=(32, 6000))
    df = universality.world_tables(world_from_acts(indep, shapes), ["a"], cfg)["a"]
    assert df["is_universal_aligned"].sum() == 0 and df["is_mutual_clique"].sum() == 0


def test_controls_table_columns_and_jaccard():
    acts, shapes, planted, _ = planted_world(seed=5, duplicate=False)
    w = world_from_acts(acts, shapes)
    cfg = UniversalityConfig(models=["a", "b", "c"], token_dataset="-").validate()
    half = {k: v[:, ::2] for k, v in acts.items()}
    tables = {
        "trained": universality.world_tables(w, ["a", "b", "c"], cfg),
        "rotated": universality.world_tables(universality.rotate_world(w, 1), ["a"], cfg),
        "half1": universality.world_tables(world_from_acts(half, shapes), ["a"], cfg),
        "half2": universality.world_tables(
            world_from_acts({k: v[:, 1::2] for k, v in acts.items()}, shapes), ["a"], cfg
        ),
    }
    freq = (acts["a"] > 0).mean(1)
    ctl = universality.controls_table(tables, "a", cfg, freq)
    row = ctl[(ctl.layer == "all") & (ctl.candidate.str.startswith("alignment>0.7"))].iloc[0]
    assert row["share"] == pytest.approx(planted.mean())
    assert row["rotated"] == 0.0 and row["jaccard_halves"] == 1.0
    assert set(ctl.layer) == {"all", "0", "1"}
    assert {"share_all_refs", "spearman_act_freq"} <= set(ctl.columns)


# ============================================================================ the stage on the micro zoo
def _cfg(zoo, **kw) -> UniversalityConfig:
    base = dict(
        models=zoo.model_names,
        token_dataset=str(zoo.analysis_dataset),
        batch_size=8,
        control_tokens=400,
        max_memory="2GB",
        progress=False,
    )
    base.update(kw)
    return UniversalityConfig(**base)


@pytest.fixture
def controls(micro_env):
    """Two untrained models of the micro zoo's configuration and a fake 'step 20' snapshot of every model."""
    from neuron_lib import zoo as zoo_mod

    cfg = zoo_mod.make_config(**{**vars(micro_env.config), "untrained_controls": 2})
    untrained = [str(p) for p in zoo_mod.save_untrained_controls(cfg)]
    for name in micro_env.model_names:
        snap = artifacts.zoo_snapshot(name, 20)
        if not snap.exists():
            shutil.copytree(artifacts.zoo_model(name), snap, ignore=shutil.ignore_patterns("snapshots"))
    return untrained


def _activations(name: str, dataset: Path) -> np.ndarray:
    from neuron_lib.corpus import load_token_dataset
    from neuron_lib.models import load_model, load_tokenizer
    from neuron_lib.streaming import TokenFilter, iter_mlp_activations

    ds, _ = load_token_dataset(dataset)
    drop = TokenFilter().drop_ids(load_tokenizer(name))
    parts = [b.post.reshape(-1, b.post.shape[-1]) for b in iter_mlp_activations(load_model(name), ds, 8, drop_ids=drop)]
    return torch.cat(parts, 1).double().numpy()


def test_stage_matches_float64_writes_every_table_and_skips(micro_env, controls, capsys):
    cfg = _cfg(micro_env, untrained=controls, snapshot_steps=[20, 7])  # no snapshot at step 7: left out, said
    res = universality.run_universality(cfg)
    assert res.status == "done"
    acts = {n: _activations(n, micro_env.analysis_dataset) for n in micro_env.model_names}
    shapes = {n: (2, acts[n].shape[0] // 2) for n in acts}
    ref = universality.world_tables(world_from_acts(acts, shapes), micro_env.model_names, cfg)
    for m in micro_env.model_names:  # every model gets its table, matching the float64 two-pass reference
        df = pd.read_parquet(
            artifacts.correlation_table_file(artifacts.correlation_table_dir(m, cfg.token_dataset), "parquet")
        )
        for o in micro_env.model_names:
            if o != m:
                np.testing.assert_allclose(df[f"max_corr_{o}"], ref[m][f"max_corr_{o}"], atol=2e-5)
                np.testing.assert_allclose(df[f"alignment_{o}"], ref[m][f"alignment_{o}"], atol=1e-4)
        np.testing.assert_allclose(df["excess_corr"], ref[m]["excess_corr"], atol=2e-5)
        man = read_json(artifacts.manifest_path(artifacts.correlation_table_dir(m, cfg.token_dataset)))
        assert man["stage"] == universality.TABLE_STAGE and man["models"] == micro_env.model_names
    run_dir = artifacts.universality_run(cfg.key, cfg.token_dataset)
    ctl = pd.read_csv(run_dir / f"{artifacts.UNIVERSALITY_CONTROLS_STEM}.csv")
    for col in ("share", "rotated", "untrained", "half1", "half2", "step20", "final_at_cap"):
        assert col in ctl.columns and ctl[col].notna().all(), col
    assert "jaccard_halves" in ctl  # NaN where neither half selects anything
    assert (ctl[ctl.candidate == "paper_excess>0.5"]["rotated"] <= 0.05).all()
    printed = capsys.readouterr().out
    assert "candidates (reference, all layers)" in printed and "no snapshots at step 7" in printed
    assert "step7" not in ctl.columns
    assert universality.run_universality(cfg).status == "skipped"


def test_killed_run_resumes_to_identical_tables(micro_env, controls, tmp_path, monkeypatch):
    kw = dict(untrained=controls, checkpoint_every=1, control_tokens=200)
    monkeypatch.setenv("RESULTS_DIR", str(tmp_path / "whole"))
    monkeypatch.setenv("DATAFRAMES_DIR", str(tmp_path / "whole_df"))
    universality.run_universality(_cfg(micro_env, **kw))
    whole = pd.read_parquet(
        artifacts.correlation_table_file(
            artifacts.correlation_table_dir(micro_env.model_names[0], micro_env.analysis_dataset), "parquet"
        )
    )

    monkeypatch.setenv("RESULTS_DIR", str(tmp_path / "killed"))
    monkeypatch.setenv("DATAFRAMES_DIR", str(tmp_path / "killed_df"))
    calls = {"n": 0}
    original = universality.WorldAccumulator.update

    def flaky(self, *a, **k):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt
        return original(self, *a, **k)

    monkeypatch.setattr(universality.WorldAccumulator, "update", flaky)
    with pytest.raises(KeyboardInterrupt):
        universality.run_universality(_cfg(micro_env, **kw))
    monkeypatch.setattr(universality.WorldAccumulator, "update", original)
    ckpt = artifacts.universality_checkpoint(_cfg(micro_env).key, micro_env.analysis_dataset)
    assert (ckpt / "state.json").exists()
    universality.run_universality(_cfg(micro_env, **kw))
    resumed = pd.read_parquet(
        artifacts.correlation_table_file(
            artifacts.correlation_table_dir(micro_env.model_names[0], micro_env.analysis_dataset), "parquet"
        )
    )
    pd.testing.assert_frame_equal(whole, resumed)
    assert not ckpt.exists()


def test_bad_input_refused_before_work(micro_env, tmp_path):
    with pytest.raises(NeuronLibError, match="min-models"):
        _cfg(micro_env, min_models=5).validate()
    with pytest.raises(NeuronLibError, match="at least two"):
        _cfg(micro_env, models=micro_env.model_names[:1]).validate()
    other_tok = build_tiny_model(tmp_path / "other-tokenizer", seed=3)
    with pytest.raises(NeuronLibError, match="tokenizer"):
        universality.run_universality(_cfg(micro_env, models=[micro_env.model_names[0], str(other_tok)]))
    # a folder of a previous reference-only run: refused, with the command to rerun
    table = artifacts.correlation_table_dir(micro_env.model_names[1], micro_env.analysis_dataset)
    saved = tmp_path / "saved"
    if table.exists():
        shutil.copytree(table, saved)
        shutil.rmtree(table)
    table.mkdir(parents=True)
    (table / "manifest.json").write_text('{"stage": "correlations.table", "config_fingerprint": "x"}')
    try:
        with pytest.raises(NeuronLibError, match="reference-only"):
            universality.run_universality(_cfg(micro_env, max_tokens=64, overwrite=False))
    finally:
        shutil.rmtree(table)
        if saved.exists():
            shutil.copytree(saved, table)
