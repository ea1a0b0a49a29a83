"""Figure functions on small hand-made dataframes: assert on the data they return, not on pixels."""

from __future__ import annotations

import html

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from helpers import paper_csv, synthetic_neuron_df
from neuron_lib import criteria
from neuron_lib import figures as F
from neuron_lib import stats as St


def universal_only(df: pd.DataFrame) -> pd.DataFrame:
    out = df[df["is_universal"]].reset_index(drop=True)
    out.attrs["only_universal"] = True
    return out


def paper_table() -> pd.DataFrame:
    df = pd.read_csv(paper_csv("universal"))
    df.attrs["only_universal"] = True
    return df


@pytest.fixture(scope="module")
def df():
    return synthetic_neuron_df()


# ---------------------------------------------------------------- universality
def test_universal_share_by_layer_matches_hand_count(df):
    fig, data = F.universal_share_by_layer(df)
    assert fig is not None
    for layer in range(4):
        sub = df[df["layer"] == layer]
        row = data.set_index("layer").loc[layer]
        assert row["n_universal"] == int((sub["mean_corr"] - sub["mean_baseline"] > 0.5).sum())
        assert row["n_neurons"] == len(sub)
        assert row["share_universal"] == pytest.approx(row["n_universal"] / len(sub))
        assert row["n_universal_z"] == int(sub["is_universal_z"].sum())


def test_universal_threshold_is_strict():
    tiny = pd.DataFrame(
        {
            "layer": [0, 0, 0, 1],
            "neuron": [0, 1, 2, 0],
            "mean_corr": [0.75, 0.9, 0.2, 0.9],
            "mean_baseline": [0.25, 0.1, 0.1, np.nan],
        }
    )
    assert criteria.universal_mask(tiny).tolist() == [
        False,
        True,
        False,
        False,
    ]  # 0.5 is not > 0.5; NaN is not universal
    _, data = F.universal_share_by_layer(tiny)
    assert data["n_universal"].tolist() == [1, 0]


def test_universal_only_share_uses_d_mlp_or_counts(df):
    only = universal_only(df)
    res = F.universal_share_by_layer(only)
    assert res.fig is not None and res.note and "only universal" in res.note
    assert res.data["share_universal"].isna().all()
    res = F.universal_share_by_layer(only, d_mlp=48)
    expected = df.groupby("layer")["is_universal"].sum() / 48
    np.testing.assert_allclose(res.data["share_universal"], expected.to_numpy())


def test_correlation_vs_baseline_returns_points(df):
    fig, data = F.correlation_vs_baseline(df)
    assert fig is not None and len(fig.axes) >= 4
    assert len(data) == len(df)
    assert (data["is_universal"] == (data["mean_corr"] - data["mean_baseline"] > 0.5)).all()
    fig2, _ = F.correlation_vs_baseline(df, kind="hist2d")
    assert fig2 is not None


def test_correlation_densities_integrate_to_one(df):
    other = synthetic_neuron_df(seed=1)
    fig, data = F.correlation_densities({"a": df, "b": other}, bins=20)
    assert set(data["column"]) == {"mean_corr", "mean_baseline", "excess_corr"}
    for (_, _), sub in data.groupby(["model", "column"]):
        assert (sub["density"] * (sub["bin_right"] - sub["bin_left"])).sum() == pytest.approx(1.0)


def test_percentiles_equal_scipy(df):
    pct = St.within_layer_percentiles(df, ["kurt", "input_bias"])
    for layer in (0, 3):
        sub = df[df["layer"] == layer]
        for m in ("kurt", "input_bias"):
            expected = [stats.percentileofscore(sub[m], v) for v in sub[m]]
            np.testing.assert_allclose(pct.loc[sub.index, m], expected)


def test_universal_property_percentiles_draws_universal_neurons(df):
    fig, data = F.universal_property_percentiles(df, metrics=("kurt", "sparsity"))
    n_uni = int(df["is_universal"].sum())
    assert len(data) == 2 * n_uni
    pct = St.within_layer_percentiles(df, ["kurt"])
    got = data[data["metric"] == "kurt"].set_index(["layer", "neuron"])["percentile"]
    exp = pct.loc[df["is_universal"], "kurt"].set_axis(
        pd.MultiIndex.from_frame(df.loc[df["is_universal"], ["layer", "neuron"]])
    )
    np.testing.assert_allclose(got.sort_index(), exp.sort_index())
    # universal neurons were made heavy-tailed: their kurtosis percentiles sit high
    assert got.median() > 70


def test_universal_only_tables_do_not_crash(df):
    only = universal_only(df)
    res = F.universal_property_percentiles(only)
    assert res.fig is None and res.data is None and "only universal" in res.note
    for res in (
        F.universal_property_distributions(only),
        F.properties_by_layer(only),
        F.correlation_densities(only),
        F.correlation_vs_baseline(only),
        F.vocab_percentiles_by_layer(only),
        F.prediction_suppression_by_layer(only),
    ):
        assert res.fig is not None
        assert res.note
    assert "universal" in F.universal_summary_table(only).columns


def test_properties_by_layer_summary(df):
    fig, data = F.properties_by_layer(df, metrics=("kurt",))
    row = data[(data["layer"] == 2) & (data["group"] == "universal")].iloc[0]
    sub = df[(df["layer"] == 2) & df["is_universal"]]["kurt"]
    assert row["n"] == len(sub) and row["median"] == pytest.approx(sub.median())


def test_paper_table_properties():
    paper = paper_table()
    assert len(paper) == 1533 and F.is_only_universal(paper)
    res = F.universal_share_by_layer(paper, d_mlp=3072)
    assert res.data["n_universal"].tolist() == [222, 244, 101, 110, 71, 72, 56, 112, 101, 142, 125, 177]  # spec §13
    assert res.data["share_universal"].iloc[0] == pytest.approx(0.0723, abs=1e-4)
    res = F.prediction_suppression_by_layer(paper)
    assert res.data["group"].unique().tolist() == ["universal neurons"]
    high = res.data["n_high_kurtosis"].tolist()
    assert high == [0, 0, 0, 0, 0, 1, 0, 4, 5, 37, 53, 113]  # spec §13 vocab_kurt > 10 per layer
    assert (res.data["n_prediction"] + res.data["n_suppression"]).tolist() == high
    assert F.universal_property_percentiles(paper).fig is None
    table = F.universal_summary_table(paper)
    assert table.loc["median excess_corr", "universal"] == pytest.approx(0.5719, abs=1e-4)


# ---------------------------------------------------------------- prediction / suppression
def test_prediction_suppression_counts():
    tiny = pd.DataFrame(
        {
            "layer": [0, 0, 0, 1, 1, 1, 1],
            "neuron": [0, 1, 2, 0, 1, 2, 3],
            "vocab_kurt": [11, 50, 9, 12, 12, 10, 30],
            "vocab_skew": [0.5, -1, 2, -0.1, -3, 1, 0.0],
            "excess_corr": [0.6, 0.1, 0.7, 0.9, 0.2, 0.1, 0.55],
        }
    )
    assert F.classify_vocab_neurons(tiny).tolist() == [
        "prediction",
        "suppression",
        "other",
        "suppression",
        "suppression",
        "other",
        "other",
    ]
    _, data = F.prediction_suppression_by_layer(tiny)
    alln = data[data["group"] == "all neurons"].set_index("layer")
    assert alln["n_prediction"].tolist() == [1, 0]
    assert alln["n_suppression"].tolist() == [1, 2]
    assert alln["n_high_kurtosis"].tolist() == [2, 3]
    assert alln["share_suppression"].tolist() == [pytest.approx(1 / 3), pytest.approx(2 / 4)]
    uni = data[data["group"] == "universal neurons"].set_index("layer")
    assert uni["n_prediction"].tolist() == [1, 0] and uni["n_suppression"].tolist() == [0, 1]


def test_counts_of_a_single_model_have_no_universal_group():
    """A single model's table (no other seeds: every excess correlation NaN) is counted among all neurons only, and
    says why; the same table with one measured score gets its universal group back."""
    single = pd.DataFrame(
        {
            "layer": [0, 0, 1, 1],
            "neuron": [0, 1, 0, 1],
            "vocab_kurt": [12.0, 3.0, 20.0, 15.0],
            "vocab_skew": [1.0, 1.0, -1.0, 1.0],
            "excess_corr": [np.nan] * 4,
            "is_universal": [False] * 4,
        }
    )
    res = F.prediction_suppression_by_layer(single)
    assert res.data["group"].unique().tolist() == ["all neurons"] and "single model" in res.note
    assert res.data["n_prediction"].tolist() == [1, 1] and res.data["n_suppression"].tolist() == [0, 1]
    measured = single.assign(excess_corr=[0.6, np.nan, np.nan, np.nan])
    res = F.prediction_suppression_by_layer(measured)
    assert res.data["group"].unique().tolist() == ["all neurons", "universal neurons"] and res.note is None
    uni = res.data[res.data["group"] == "universal neurons"]
    assert uni["n_prediction"].tolist() == [1, 0]


def test_calibrated_threshold_counts_and_null_comparison():
    """A per-layer null threshold: each neuron is judged against its own layer's q99, and the comparison table
    counts both rules per layer."""
    tiny = pd.DataFrame(
        {
            "layer": [0, 0, 0, 1, 1, 1],
            "neuron": [0, 1, 2, 0, 1, 2],
            "vocab_kurt": [5.0, 5.0, 12.0, 5.0, 12.0, 12.0],
            "vocab_skew": [1.0, -1.0, 1.0, 1.0, -1.0, 1.0],
            criteria.NULL_QUANTILE_COLUMN: [4.0, 4.0, 4.0, 11.0, 11.0, 11.0],
            "excess_corr": [0.6, 0.1, 0.1, 0.1, 0.1, 0.1],
        }
    )
    kinds = F.classify_vocab_neurons(tiny, criteria.CALIBRATED).tolist()
    assert kinds == ["prediction", "suppression", "prediction", "other", "suppression", "prediction"]
    _, data = F.prediction_suppression_by_layer(tiny, criteria.CALIBRATED)
    alln = data[data["group"] == "all neurons"].set_index("layer")
    assert alln["n_high_kurtosis"].tolist() == [3, 2] and alln["n_prediction"].tolist() == [2, 1]
    res = F.vocab_kurtosis_null_by_layer(tiny)
    t = res.data.set_index("layer")
    assert t["prediction_paper"].tolist() == [1, 1] and t["prediction_calibrated"].tolist() == [2, 1]
    assert t["suppression_paper"].tolist() == [0, 1] and t["suppression_calibrated"].tolist() == [1, 1]
    assert t["null_q99"].tolist() == [4.0, 11.0]
    assert F.vocab_kurtosis_null_by_layer(tiny.drop(columns=criteria.NULL_QUANTILE_COLUMN)).data is None


def test_max_min_correlation_and_depth_specialisation_planted():
    """Planted: 2 layers x 4 neurons, partners in two other models. Layer 0's neurons all have their best partner in
    layer 0 of model b and half of them in layer 0 of model c; layer 1 all in layer 1."""
    tiny = pd.DataFrame(
        {
            "layer": [0, 0, 0, 0, 1, 1, 1, 1],
            "neuron": [0, 1, 2, 3, 0, 1, 2, 3],
            "max_corr": [0.9, 0.8, 0.5, 0.4, 0.95, 0.3, 0.3, 0.2],
            "min_corr": [0.85, 0.2, 0.4, 0.1, 0.9, 0.1, 0.2, 0.1],
            "excess_corr": [0.6, 0.1, 0.1, 0.1, 0.7, 0.0, 0.0, 0.0],
            "max_corr_layer_b": [0, 0, 0, 0, 1, 1, 1, 1],
            "max_corr_layer_c": [0, 0, 1, 1, 1, 1, 1, 1],
        }
    )
    assert F.partner_models(tiny) == ["b", "c"]
    res = F.max_min_correlation({"a": tiny}, threshold=0.5)
    np.testing.assert_allclose(res.data["spread"], tiny["max_corr"] - tiny["min_corr"])
    assert res.data["is_universal"].tolist() == [True, False, False, False, True, False, False, False]
    spread = tiny["max_corr"] - tiny["min_corr"]
    assert f"{spread.mean():.4f} all" in res.note and f"{spread[[0, 4]].mean():.4f} universal" in res.note
    d = F.depth_specialisation({"a": tiny}).data.set_index(["layer", "partner_layer"])
    # layer 0: b puts all 4 in layer 0, c puts 2 of 4 -> mean 0.75 / 0.25; layer 1: always layer 1
    assert d.loc[(0, 0), "share"] == pytest.approx(0.75) and d.loc[(0, 1), "share"] == pytest.approx(0.25)
    assert d.loc[(0, 0), "share_min"] == pytest.approx(0.5) and d.loc[(0, 0), "share_max"] == pytest.approx(1.0)
    assert d.loc[(1, 1), "share"] == pytest.approx(1.0) and d.loc[(1, 0), "share"] == 0
    assert F.depth_specialisation({"a": tiny.drop(columns=["max_corr_layer_b", "max_corr_layer_c"])}).data is None


def test_vocab_percentiles_match_numpy(df):
    _, data = F.vocab_percentiles_by_layer(df, percentiles=(5, 50, 95))
    v = df.loc[df["layer"] == 1, "vocab_kurt"].to_numpy()
    got = data[(data["column"] == "vocab_kurt") & (data["layer"] == 1)].set_index("statistic")["value"]
    np.testing.assert_allclose(got[["p5", "p50", "p95"]], np.percentile(v, [5, 50, 95]))
    assert got["mean"] == pytest.approx(v.mean())
    _, multi = F.vocab_percentiles_by_layer({"a": df, "b": synthetic_neuron_df(seed=2)})
    assert set(multi["model"]) == {"a", "b"}


def test_prediction_skew_density(df):
    res = F.prediction_skew_density(df, kurt_threshold=5)
    assert res.fig is not None
    assert sorted(res.data["layer"].unique()) == [0, 1, 2, 3]
    few = F.prediction_skew_density(df.assign(vocab_kurt=3.0))
    assert few.note and (few.data["density"] == 0).all()


# ---------------------------------------------------------------- dataset summary
def test_activation_histograms_density():
    edges = np.linspace(-10, 15, 256)
    rng = np.random.default_rng(0)
    counts = {s: rng.integers(0, 5, size=(2, 3, 257)) for s in ("a", "b")}
    fig, data = F.neuron_activation_histograms(counts, edges, [(0, 1), (1, 2)])
    assert fig is not None
    sub = data[(data["subset"] == "b") & (data["layer"] == 1) & (data["neuron"] == 2)]
    np.testing.assert_array_equal(sub["count"], counts["b"][1, 2])
    assert (sub["density"] * (sub["bin_right"] - sub["bin_left"])).sum() == pytest.approx(1.0)
    assert sub["bin_left"].iloc[1] == pytest.approx(-10.0)  # bin 0 holds values <= edges[0]


def test_top_example_windows():
    tokens = np.arange(40).reshape(4, 10)  # 4 rows x ctx 10
    values = np.array([3.0, 5.0, 1.0, 0.0])
    flat = np.array([12, 25, 13, 0])  # (1,2), (2,5), (1,3), unfilled slot
    ex = F.top_example_windows(values, flat, tokens, before=3, after=1, layer=0, neuron=7, subsets=list("wxyz"))
    assert ex["value"].tolist() == [5.0, 3.0, 1.0]
    first = ex.iloc[0]
    assert (first["row"], first["pos"], first["subset"]) == (2, 5, "y")
    assert first["token_ids"] == [22, 23, 24, 25, 26] and first["target"] == 3
    second = ex.iloc[1]
    assert second["token_ids"] == [10, 11, 12, 13]  # window clipped at the row start
    assert second["context_values"][2] == 3.0 and second["context_values"][3] == 1.0  # known from top-k
    assert np.isnan(second["context_values"][0])


def test_highlight_html_escapes_and_colours():
    toks = ["<b>", " x & y", "\n", "end"]
    out = F.highlight_tokens_html(toks, [0.0, 2.0, np.nan, 4.0], target=3)
    assert "<b>" not in out  # the token text never becomes markup
    assert "&lt;b&gt;" in out and "x &amp; y" in out and "↵" in out
    assert out.count("background-color") == 2  # 0 and NaN stay uncoloured
    assert "font-weight:bold" in out
    assert html.unescape(out).count("end") == 1
    page = F.top_examples_html(
        pd.DataFrame(
            [
                {
                    "layer": 1,
                    "neuron": 2,
                    "rank": 0,
                    "value": 4.0,
                    "subset": "<s>",
                    "tokens": toks,
                    "context_values": [0.0, 2.0, np.nan, 4.0],
                    "target": 3,
                }
            ]
        )
    )
    assert "L1.2" in page and "&lt;s&gt;" in page and page.startswith("<!DOCTYPE html>")


def test_plot_highlighted_examples():
    ex = pd.DataFrame(
        [
            {
                "layer": 0,
                "neuron": n,
                "rank": r,
                "value": 1.0 + r,
                "subset": "a",
                "tokens": [f"tok{i} " for i in range(30)],
                "context_values": list(np.linspace(0, 2, 30)),
                "target": 20,
            }
            for n in (1, 2)
            for r in range(3)
        ]
    )
    fig, data = F.plot_highlighted_examples(ex, max_examples=2)
    assert fig is not None and len(data) == 4
    assert F.plot_highlighted_examples(ex.iloc[:0]).fig is None


def test_figure_writer(tmp_path, df):
    w = F.FigureWriter(tmp_path, "nb", source={"path": "x.csv"})
    result = F.universal_share_by_layer(df)
    saved = w.save(result, "share", "caption A")
    assert (tmp_path / "share.png").read_bytes().startswith(b"\x89PNG") and "<svg" in (
        tmp_path / "share.svg"
    ).read_text()
    written = pd.read_csv(tmp_path / "share.csv")
    pd.testing.assert_frame_equal(written, result.data.reset_index(drop=True), check_dtype=False)
    assert saved._repr_png_().startswith(b"\x89PNG")
    none = w.save(F.universal_property_percentiles(universal_only(df)), "pct", "caption B")
    assert none.files == {} and "not drawn" in none._repr_markdown_()
    rec = F.read_figures_json(tmp_path)
    assert [f["name"] for f in rec["figures"]] == ["share", "pct"] and rec["source"] == {"path": "x.csv"}
