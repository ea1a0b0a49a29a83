"""neuron_lib.neuron_df: activation-summary helpers against float64 references, table assembly from fake
inputs (weights, two activation subsets, a correlation table), manifest checks, and the paper's CSVs."""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from helpers import paper_csv  # noqa: E402
from neuron_lib import neuron_df as ND  # noqa: E402
from neuron_lib import stats as St  # noqa: E402
from neuron_lib.common import (
    ManifestMismatch,
    NeuronLibError,
    load_tensors,
    make_manifest,
    save_tensors_atomic,
    write_manifest,
)  # noqa: E402

MODEL = "fake-model"
L, N = 2, 5
EDGES = np.linspace(-10, 15, 256, dtype=np.float32)  # the paper's edges (float32)


# ---------------------------------------------------------------- references (plain numpy float64)
def ref_hist(x: np.ndarray) -> np.ndarray:
    """Paper binning: left searchsorted, bins [L, N, 257]."""
    idx = np.searchsorted(EDGES.astype(np.float64), x, side="left")
    return np.stack([[np.bincount(idx[l, n], minlength=257) for n in range(x.shape[1])] for l in range(x.shape[0])])


def ref_binned_moments(counts: np.ndarray):
    e = EDGES.astype(np.float64)
    step = e[1] - e[0]
    centres = np.concatenate([[e[0] - step / 2], (e[:-1] + e[1:]) / 2, [e[-1] + step / 2]])
    f = counts.astype(np.float64)
    F = f.sum(-1)
    mu = (f * centres).sum(-1) / F
    var = (f * (centres - mu[..., None]) ** 2).sum(-1) / F
    skew = (f * (centres - mu[..., None]) ** 3).sum(-1) / F / var**1.5
    kurt = (f * (centres - mu[..., None]) ** 4).sum(-1) / F / var**2
    return mu, var, skew, kurt


def ref_sparsity(counts: np.ndarray) -> np.ndarray:
    # bins 102.. hold values > edges[101] ≈ −0.098 (edge 102 is the first edge ≥ 0)
    return counts[..., 102:].sum(-1) / counts.sum(-1)


def np_moments(x: np.ndarray):
    mean = x.mean(-1)
    d = x - mean[..., None]
    var = (d**2).mean(-1)
    return mean, var, (d**3).mean(-1) / var**1.5, (d**4).mean(-1) / var**2


# ---------------------------------------------------------------- fake inputs
def fake_samples(seed: int, n_tokens: int) -> np.ndarray:
    """Pre-activations [L, N, T] with different shapes per neuron, outliers beyond both ends and values on edges."""
    rng = np.random.default_rng(seed)
    x = np.empty((L, N, n_tokens))
    for l in range(L):
        for n in range(N):
            kind = (l * N + n) % 4
            if kind == 0:
                x[l, n] = rng.normal(-1.0, 0.7, n_tokens)
            elif kind == 1:
                x[l, n] = rng.gamma(1.5, 1.0, n_tokens) - 2.5
            elif kind == 2:
                x[l, n] = rng.standard_t(3, n_tokens) * 2 - 0.5
            else:
                x[l, n] = rng.uniform(-12, 17, n_tokens)  # beyond [−10, 15] on both sides
    x[:, :, :4] = [0.0, float(EDGES[101]), float(EDGES[0]), float(EDGES[-1])]  # exactly on edges
    return x


def write_activation_subset(
    root: Path,
    subset: str,
    x: np.ndarray,
    shift: np.ndarray | float,
    count_scalar: bool,
    model: str = MODEL,
    dropped: np.ndarray | None = None,
) -> Path:
    """A summary folder of kept pre-activations ``x`` [L, N, T]; ``dropped`` [L, N, D] are the positions the filter
    dropped (BOS/EOS), which only the all-positions histogram (the paper's convention) counts."""
    folder = root / MODEL / "activations" / subset
    counts = ref_hist(x)
    everything = x if dropped is None else np.concatenate([x, dropped], -1)
    s = np.broadcast_to(np.asarray(shift, dtype=np.float64), x.shape[:2])
    d = x - s[..., None]
    T = x.shape[-1]
    save_tensors_atomic(
        folder / "histogram.safetensors",
        {
            "pre_bin_counts": torch.tensor(counts, dtype=torch.int64),
            "pre_bin_counts_all_positions": torch.tensor(ref_hist(everything), dtype=torch.int64),
            "pre_bin_edges": St.pre_bin_edges(),
        },
    )
    save_tensors_atomic(
        folder / "moments.safetensors",
        {
            "pre_sum": torch.tensor(d.sum(-1)),
            "pre_sum_sq": torch.tensor((d**2).sum(-1)),
            "pre_sum_cube": torch.tensor((d**3).sum(-1)),
            "pre_sum_quad": torch.tensor((d**4).sum(-1)),
            "pre_shift": torch.tensor(np.ascontiguousarray(s)),
            "pre_count": torch.tensor(T, dtype=torch.int64)
            if count_scalar
            else torch.full((L, N), T, dtype=torch.int64),
            "pre_n_positive": torch.tensor((x > 0).sum(-1), dtype=torch.int64),
        },
    )
    write_manifest(
        folder, make_manifest("summary", {"model": model}, model=model, dataset=f"fake.{subset}", n_tokens=T)
    )
    return folder


def write_weights(root: Path, model: str = MODEL, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    folder = root / MODEL / "weights"
    folder.mkdir(parents=True, exist_ok=True)
    st = pd.DataFrame({"layer": np.repeat(np.arange(L), N), "neuron": np.tile(np.arange(N), L)})
    for c in [
        "w_in_norm",
        "input_bias",
        "w_out_norm",
        "in_out_sim",
        "vocab_mean",
        "vocab_var",
        "vocab_skew",
        "vocab_kurt",
    ]:
        st[c] = rng.normal(size=L * N)
    st["l2_penalty"] = st.w_in_norm**2 + st.w_out_norm**2
    st.to_csv(folder / "neuron_stats.csv", index=False)
    write_manifest(folder, make_manifest("weights", {"model": model}, model=model, n_layers=L, d_mlp=N))
    return st


def write_correlations(root: Path, dataset: str = "fake.analysis", model: str = MODEL, seed: int = 1) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = [(l, n) for l in range(L) for n in range(N) if (l, n) != (1, 2)]  # one neuron missing
    corr = pd.DataFrame(rows, columns=["layer", "neuron"])
    corr["max_corr"] = rng.uniform(0.5, 1, len(corr))
    corr["mean_corr"] = corr.max_corr - 0.05
    corr["min_corr"] = corr.max_corr - 0.1
    corr["mean_baseline"] = rng.uniform(0.05, 0.4, len(corr))
    corr["max_baseline"] = corr.mean_baseline + 0.02
    corr["min_baseline"] = corr.mean_baseline - 0.02
    corr.loc[0, "mean_corr"], corr.loc[0, "mean_baseline"] = 0.9, 0.1  # surely universal
    corr["excess_corr"] = corr.mean_corr - corr.mean_baseline
    corr["rotation_z"] = rng.normal(size=len(corr))
    corr["is_universal"] = corr.excess_corr > 0.5
    corr["is_universal_z"] = corr.rotation_z > 0
    corr = corr.sample(frac=1.0, random_state=3).reset_index(drop=True)  # shuffled rows
    folder = root / "correlations" / model / dataset
    folder.mkdir(parents=True, exist_ok=True)
    corr.to_csv(folder / "neuron_correlations.csv", index=False)
    write_manifest(folder, make_manifest("correlations", {}, model=model, reference_model=model, dataset=dataset))
    return corr


@pytest.fixture
def roots(tmp_path, monkeypatch):
    summary, frames = tmp_path / "summary", tmp_path / "frames"
    monkeypatch.setenv("SUMMARY_DIR", str(summary))
    monkeypatch.setenv("DATAFRAMES_DIR", str(frames))
    return summary, frames


@pytest.fixture
def fake_inputs(roots):
    summary, frames = roots
    xa, xb = fake_samples(0, 3000), fake_samples(1, 1700)
    bos_a, bos_b = fake_samples(8, 40) - 4.0, fake_samples(9, 25) + 3.0  # the dropped positions differ from the rest
    write_activation_subset(summary, "sub_a", xa, shift=np.round(xa.mean(-1), 1), count_scalar=True, dropped=bos_a)
    write_activation_subset(summary, "sub_b", xb, shift=2.5, count_scalar=False, dropped=bos_b)
    st = write_weights(summary)
    corr = write_correlations(frames)
    return {
        "x": np.concatenate([xa, xb], -1),
        "all_positions": np.concatenate([xa, bos_a, xb, bos_b], -1),
        "xa": xa,
        "xb": xb,
        "weights": st,
        "corr": corr,
        "summary": summary,
        "frames": frames,
    }


# ---------------------------------------------------------------- helpers vs references
def test_padded_centres_and_first_nonnegative_edge():
    c = St.padded_bin_centres(St.pre_bin_edges())
    assert c.shape == (257,)
    step = 25 / 255
    assert c[0].item() == pytest.approx(-10 - step / 2, abs=1e-6) and c[-1].item() == pytest.approx(
        15 + step / 2, abs=1e-6
    )
    for edges in (St.pre_bin_edges(), torch.linspace(-10, 15, 256, dtype=torch.float64), torch.tensor(EDGES)):
        assert St.first_nonnegative_edge(edges) == 102


def test_binned_moments_and_sparsity_against_reference():
    x = fake_samples(7, 2500)
    counts = ref_hist(x)
    got = St.binned_moments(torch.tensor(counts))
    for key, want in zip(("mean", "var", "skew", "kurt"), ref_binned_moments(counts)):
        np.testing.assert_allclose(got[key].numpy(), want, rtol=1e-6, err_msg=key)
    np.testing.assert_allclose(St.binned_sparsity(torch.tensor(counts)).numpy(), ref_sparsity(counts), rtol=1e-12)
    # the one-bin bias: a value in (edges[101], 0] counts as "active"; exactly edges[101] does not
    c = ref_hist(np.array([[[-0.05, float(EDGES[101]), -1.0, 1.0]]]))
    assert St.binned_sparsity(torch.tensor(c)).item() == pytest.approx(0.5)
    # the Gaussian-ish neuron's binned moments are close to the exact ones (bin width ≈ 0.098)
    assert abs(got["mean"][0, 0].item() - x[0, 0].mean()) < 0.01


def test_exact_moments_and_shift_against_numpy():
    x = fake_samples(3, 1000)
    s = 1.7
    d = x - s
    sums = {0: torch.full((L, N), float(x.shape[-1]), dtype=torch.float64)}
    sums.update({k: torch.tensor((d**k).sum(-1)) for k in (1, 2, 3, 4)})
    got = St.moments_from_power_sums(sums, s)
    for key, want in zip(("mean", "var", "skew", "kurt"), np_moments(x)):
        np.testing.assert_allclose(got[key].numpy(), want, rtol=1e-9, err_msg=key)
    moved = St.shift_power_sums(sums, s, -0.3)
    for k in range(1, 5):
        np.testing.assert_allclose(moved[k].numpy(), ((x + 0.3) ** k).sum(-1), rtol=1e-9)


# ---------------------------------------------------------------- table assembly
def test_neuron_df_from_fake_inputs(fake_inputs):
    x, st, corr = fake_inputs["x"], fake_inputs["weights"], fake_inputs["corr"]
    stem = Path(ND.run_neuron_df(ND.NeuronDfConfig(model=MODEL)).outputs["table"])
    df = pd.read_csv(stem.with_suffix(".csv"))
    pq = pd.read_parquet(stem.with_suffix(".parquet"))
    assert len(df) == len(pq) == L * N
    assert list(df.columns[:23]) == ND.PAPER_COLUMNS
    for c in ND.EXACT_COLUMNS + ["is_universal", "is_sparse", "rotation_z", "is_universal_z"]:
        assert c in df.columns
    # flat row order
    np.testing.assert_array_equal(df.layer * N + df.neuron, np.arange(L * N))
    # correlations joined on (layer, neuron) despite shuffled rows; the missing neuron is NaN
    merged = df.merge(corr, on=["layer", "neuron"], suffixes=("", "_c"))
    for c in ND.CORR_COLUMNS + ["excess_corr", "rotation_z"]:
        np.testing.assert_allclose(merged[c], merged[f"{c}_c"], err_msg=c)
    missing = df[(df.layer == 1) & (df.neuron == 2)].iloc[0]
    assert np.isnan(missing.max_corr) and not missing.is_universal
    # weights
    for c in ND.WEIGHT_COLUMNS + ND.VOCAB_COLUMNS:
        np.testing.assert_allclose(df[c], st[c], err_msg=c)
    # activations: the paper's binned columns from every position (dropped BOS/EOS included, as the paper counted),
    # the exact columns from the filtered samples only
    counts = ref_hist(fake_inputs["all_positions"])
    assert not np.allclose(ref_binned_moments(counts)[2], ref_binned_moments(ref_hist(x))[2])  # the test can tell
    for c, want in zip(ND.ACTIVATION_COLUMNS, ref_binned_moments(counts)):
        np.testing.assert_allclose(df[c], want.reshape(-1), rtol=1e-6, err_msg=c)
    np.testing.assert_allclose(df.sparsity, ref_sparsity(counts).reshape(-1), rtol=1e-12)
    for c, want in zip(["mean_exact", "var_exact", "skew_exact", "kurt_exact"], np_moments(x)):
        np.testing.assert_allclose(df[c], want.reshape(-1), rtol=1e-8, err_msg=c)
    np.testing.assert_allclose(df.act_freq_exact, (x > 0).mean(-1).reshape(-1), rtol=1e-12)
    np.testing.assert_array_equal(df.is_sparse, df.sparsity < 0.02)
    # universal.csv: the paper's schema, universal rows only
    uni = pd.read_csv(fake_inputs["frames"] / "interpretable_neurons" / MODEL / "universal.csv")
    assert list(uni.columns) == ND.PAPER_COLUMNS
    assert len(uni) == int(corr.is_universal.sum()) >= 1
    # manifest lists the inputs
    manifest = json.loads((fake_inputs["frames"] / "neuron_dfs" / f"{MODEL}.manifest.json").read_text())
    assert manifest["model"] == MODEL and manifest["n_rows"] == L * N
    assert set(manifest["inputs"]["activations"]) == {"sub_a", "sub_b"}
    assert manifest["inputs"]["activations"]["sub_a"]["n_tokens"] == 3000
    assert manifest["inputs"]["correlations"]["model"] == MODEL and "weights" in manifest["inputs"]
    assert manifest["n_tokens"] == 4700
    # loader for notebooks: by name, with computed columns and attrs
    loaded = ND.load_neuron_df(MODEL)
    assert loaded.attrs["only_universal"] is False and loaded.attrs["table"] == MODEL
    assert loaded.is_universal.dtype == bool and loaded.is_universal.sum() == len(uni)


def test_subset_selection_and_activation_loader(fake_inputs):
    acts = ND.load_activation_summaries(MODEL)
    assert set(acts) == {"sub_a", "sub_b"}
    assert acts["sub_a"]["pre_bin_counts"].shape == (L, N, 257) and acts["sub_a"]["manifest"]["model"] == MODEL
    df, _ = ND.make_neuron_df(MODEL, subsets=["sub_b"])
    np.testing.assert_allclose(df.mean_exact, fake_inputs["xb"].mean(-1).reshape(-1), rtol=1e-9)
    with pytest.raises(NeuronLibError, match="missing"):
        ND.make_neuron_df(MODEL, subsets=["nope"])


def test_missing_inputs_give_nan_columns_not_a_crash(roots):
    summary, frames = roots
    write_weights(summary)
    with pytest.warns(ND.MissingInputWarning):
        stem = Path(ND.run_neuron_df(ND.NeuronDfConfig(model=MODEL, dataset="not-computed")).outputs["table"])
    df = pd.read_csv(stem.with_suffix(".csv"))
    assert len(df) == L * N
    for c in ND.CORR_COLUMNS + ["excess_corr"] + ND.ACTIVATION_COLUMNS + ["sparsity"] + ND.EXACT_COLUMNS:
        assert df[c].isna().all(), c
    assert df.w_in_norm.notna().all() and not df.is_universal.any()
    assert not (frames / "interpretable_neurons" / MODEL / "universal.csv").exists()


def test_no_input_at_all_is_a_clear_error(roots):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ND.MissingInputWarning)
        with pytest.raises(NeuronLibError, match="no input"):
            ND.make_neuron_df("nothing-here")


def test_manifest_of_another_model_is_refused(roots):
    summary, frames = roots
    write_weights(summary)
    write_activation_subset(summary, "sub_a", fake_samples(0, 200), 0.0, True, model="some-other-model")
    with pytest.raises(ManifestMismatch, match="some-other-model"):
        ND.make_neuron_df(MODEL)


def test_correlations_of_another_model_are_refused(roots):
    summary, frames = roots
    write_weights(summary)
    write_correlations(frames)
    folder = frames / "correlations" / MODEL / "fake.analysis"
    write_manifest(folder, make_manifest("correlations", {}, model="stanford-gpt2-small-b"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ND.MissingInputWarning)
        with pytest.raises(ManifestMismatch):
            ND.make_neuron_df(MODEL)


@pytest.mark.filterwarnings("ignore::neuron_lib.neuron_df.MissingInputWarning")
def test_weights_of_another_shape_are_refused(roots):
    summary, frames = roots
    write_weights(summary)
    write_activation_subset(summary, "sub_a", fake_samples(0, 200)[:, :3], 0.0, True)  # 3 neurons, not 5
    with pytest.raises(ManifestMismatch, match="another model"):
        ND.make_neuron_df(MODEL)


@pytest.mark.filterwarnings("ignore::neuron_lib.neuron_df.MissingInputWarning")
def test_several_correlation_datasets_need_a_choice(roots):
    summary, frames = roots
    write_weights(summary)
    write_correlations(frames, "ds1")
    write_correlations(frames, "ds2", seed=5)
    with pytest.raises(NeuronLibError, match="--dataset"):
        ND.make_neuron_df(MODEL)
    df, inputs = ND.make_neuron_df(MODEL, dataset="ds2")
    assert inputs["correlations"]["path"].endswith("ds2")


def test_summary_without_the_all_positions_histogram_is_refused(fake_inputs):
    folder = fake_inputs["summary"] / MODEL / "activations" / "sub_a"
    hist = load_tensors(folder / "histogram.safetensors")
    del hist["pre_bin_counts_all_positions"]  # as an older summary wrote it
    save_tensors_atomic(folder / "histogram.safetensors", hist)
    with pytest.raises(NeuronLibError, match="re-run it with --overwrite"):
        ND.run_neuron_df(ND.NeuronDfConfig(model=MODEL))


def test_cli(fake_inputs, capsys):
    ND.main(["--model", MODEL, "--formats", "csv"])
    csv = fake_inputs["frames"] / "neuron_dfs" / f"{MODEL}.csv"
    df = pd.read_csv(csv)
    assert list(df.columns[:23]) == ND.PAPER_COLUMNS and len(df) == L * N
    np.testing.assert_allclose(df["w_in_norm"], fake_inputs["weights"]["w_in_norm"])  # the weights joined in flat order
    manifest = json.loads((csv.parent / f"{MODEL}.manifest.json").read_text())
    assert manifest["files"] == [csv.name] and manifest["n_rows"] == L * N and manifest["model"] == MODEL
    assert not (fake_inputs["frames"] / "neuron_dfs" / f"{MODEL}.parquet").exists()
    assert f"neuron_df: wrote {csv.with_suffix('')}" in capsys.readouterr().out
    with pytest.raises(NeuronLibError):
        ND.main(["--model", MODEL, "--formats", "xlsx"])


def test_weights_summary_loader(roots):
    summary, _ = roots
    write_weights(summary)
    w = ND.load_weights_summary(MODEL)
    assert len(w["neuron_stats"]) == L * N and w["manifest"]["model"] == MODEL
    with pytest.raises(NeuronLibError, match="neuron_lib.weights"):
        ND.load_weights_summary("other")


# ---------------------------------------------------------------- analysis helpers
def synthetic_table(seed=0):
    rng = np.random.default_rng(seed)
    n_layers, d = 3, 200
    df = pd.DataFrame({"layer": np.repeat(np.arange(n_layers), d), "neuron": np.tile(np.arange(d), n_layers)})
    uni = rng.random(len(df)) < 0.1
    df["is_universal"] = uni
    df["kurt"] = 3 + rng.gamma(1, 1, len(df)) + 5 * uni
    df["skew"] = rng.normal(size=len(df)) + 1.0 * uni
    df["input_bias"] = rng.normal(size=len(df)) - 1.0 * uni
    df["sparsity"] = rng.uniform(0.01, 0.3, len(df)) * np.where(uni, 0.2, 1)
    df["l2_penalty"] = rng.uniform(0.3, 1, len(df)) + 0.5 * uni + 0.2 * df.layer
    df["vocab_kurt"] = 3 + rng.gamma(1, 1, len(df)) + 3 * uni
    return df


def test_layer_medians():
    df = synthetic_table()
    med = ND.layer_medians(df, ["kurt", "l2_penalty"])
    assert list(med.index) == [0, 1, 2]
    np.testing.assert_allclose(med.loc[1, "kurt"], df[df.layer == 1]["kurt"].median())
    split = ND.layer_medians(df, ["kurt"], split_universal=True)
    np.testing.assert_allclose(split.loc[(2, True), "kurt"], df[(df.layer == 2) & df.is_universal]["kurt"].median())


def test_compare_universal():
    df = synthetic_table()
    cmp = ND.compare_universal(df)
    assert set(cmp.index) == {"kurt", "skew", "input_bias", "sparsity", "l2_penalty", "vocab_kurt"}
    assert cmp.agrees_with_paper.all()
    # reference for one property: scipy's within-layer percentile (0-100, as Fig. 3), median over universal neurons
    import scipy.stats

    pct = df.groupby("layer")["kurt"].transform(lambda v: [scipy.stats.percentileofscore(v, x, kind="rank") for x in v])
    assert cmp.loc["kurt", "universal_percentile"] == pytest.approx(pct[df.is_universal].median())
    assert cmp.loc["kurt", "n_universal"] == df.is_universal.sum()


# ---------------------------------------------------------------- the paper's CSVs
def test_paper_universal_csv():
    df = ND.load_neuron_df(paper_csv("universal"))
    assert len(df) == 1533 and list(df.columns[:23]) == ND.PAPER_COLUMNS
    assert df.attrs["only_universal"] and df.attrs["model"] == "stanford-gpt2-small-a"
    assert df.is_universal.all() and df.excess_corr.min() > 0.5
    np.testing.assert_allclose(df.excess_corr, df.mean_corr - df.mean_baseline, atol=1e-12)
    np.testing.assert_allclose(df.l2_penalty, df.w_in_norm**2 + df.w_out_norm**2, rtol=1e-6)
    assert df["kurt"].median() == pytest.approx(5.5620, abs=1e-3)  # spec §13
    assert df.sparsity.median() == pytest.approx(0.0254, abs=1e-4)
    np.testing.assert_array_equal(df.is_sparse, df.sparsity < 0.02)
    assert df.groupby("layer").size().tolist() == [222, 244, 101, 110, 71, 72, 56, 112, 101, 142, 125, 177]
    with pytest.raises(NeuronLibError, match="full neuron table"):
        ND.compare_universal(df)


def test_paper_sub_gaussian_csv():
    df = ND.load_neuron_df(paper_csv("sub_gaussian_activation_kurtosis"))
    assert len(df) == 194 and not df.attrs["only_universal"]
    assert "excess_corr" in df.columns  # computed: the file has no excess_corr column
    np.testing.assert_allclose(df.excess_corr, df.mean_corr - df.mean_baseline)
    assert df["kurt"].max() < 2
    # its own correlation values (another run than universal.csv) give 30 universal neurons
    assert df.is_universal.sum() == (df.mean_corr - df.mean_baseline > 0.5).sum() == 30


def test_paper_high_excess_csv_old_names():
    path = paper_csv("high_excess_correlation")
    df = ND.load_neuron_df(path)
    assert len(df) == 497 and df.attrs["only_universal"]
    for old in ("input_weight_norm", "output_weight_norm", "weight_norm_penalty", "Unnamed: 0"):
        assert old not in df.columns
    for new in ("w_in_norm", "w_out_norm", "l2_penalty", "layer", "neuron"):
        assert new in df.columns
    assert set(df.attrs["renamed_old_columns"]) == {"input_weight_norm", "output_weight_norm", "weight_norm_penalty"}
    np.testing.assert_allclose(df.l2_penalty, df.w_in_norm**2 + df.w_out_norm**2, rtol=1e-6)
    assert df.is_universal.all() and "old" in df.attrs["excess_corr_definition"]
    # the dropped unnamed index was the flat index
    raw = pd.read_csv(path, index_col=0)
    np.testing.assert_array_equal(raw.index, df.layer * 3072 + df.neuron)


def test_load_neuron_df_missing_is_a_clear_error(roots):
    with pytest.raises(NeuronLibError, match="neuron_lib.neuron_df"):
        ND.load_neuron_df("no-such-model")


@pytest.mark.filterwarnings("ignore::neuron_lib.neuron_df.MissingInputWarning")
def test_real_weight_summary_joins(roots, tmp_path):
    """neuron_lib.weights output of a tiny model (built as in test_weights) lands in the table unchanged."""
    from helpers import make_tiny_model
    from neuron_lib.weights import WeightsConfig, run_weights

    folder = make_tiny_model(tmp_path / "tiny-join")
    run_weights(WeightsConfig(model=str(folder), neurons=False, heads=False, progress=False))
    stats = ND.load_weights_summary("tiny-join")["neuron_stats"]
    stem = Path(ND.run_neuron_df(ND.NeuronDfConfig(model="tiny-join", formats="parquet")).outputs["table"])
    df = ND.load_neuron_df(stem.with_suffix(".parquet"))
    assert len(df) == 2 * 64 and df.attrs["table"] == "tiny-join"
    for c in ND.WEIGHT_COLUMNS + ND.VOCAB_COLUMNS:
        np.testing.assert_allclose(df[c], stats[c], err_msg=c)
    assert df["max_corr"].isna().all() and df["kurt"].isna().all()
    # the calibrated vocab-kurtosis flags: the layer's null q99 broadcast to its neurons, then the rule of criteria
    null = pd.read_csv(ND.load_weights_summary("tiny-join")["path"] / "vocab_kurt_null.csv")
    np.testing.assert_allclose(df["vocab_kurt_null_q99"], null["null_q99"].to_numpy()[df["layer"]])
    high = df["vocab_kurt"] > df["vocab_kurt_null_q99"]
    np.testing.assert_array_equal(df["is_prediction_calibrated"], high & (df["vocab_skew"] > 0))
    np.testing.assert_array_equal(df["is_suppression_calibrated"], high & (df["vocab_skew"] < 0))
    np.testing.assert_array_equal(df["is_prediction"], (df["vocab_kurt"] > 10) & (df["vocab_skew"] > 0))
