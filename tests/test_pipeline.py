"""The one stage table: the pipeline's order and the Slurm jobs derive from it."""

from __future__ import annotations

import pytest

from neuron_lib import pipeline as P
from neuron_lib import slurm as S


def test_table_is_a_dag_in_order():
    seen: set[str] = set()
    for st in P.STAGES:
        assert set(st.after) <= seen, f"{st.name} runs before its inputs {set(st.after) - seen}"
        seen.add(st.name)
    assert P.STAGE_ORDER == [
        "corpus",
        "zoo",
        "weights",
        "summary",
        "universality",
        "neuron_df",
        "explain",
        "prompts",
        "coactivation",
        "perturb",
        "intervention",
        "entropy_intervention",
        "attention_deactivation",
        "figures",
        "browser",
        "smollm",
        "smollm_analysis",
    ]


def test_slurm_stages_are_the_table_rows_with_scripts():
    stages = S.cluster_stages()
    assert list(stages) == [s.name for s in P.STAGES if s.sbatch]
    for st in P.STAGES:
        if not st.sbatch:
            continue
        cluster = stages[st.name]
        assert cluster.script.name == st.sbatch and S.script_stage_name(cluster.script) == st.name
        assert cluster.items == st.items and cluster.default == st.default
        assert set(cluster.after) == {a for a in st.after if P.stage(a).sbatch}


def test_every_default_stage_has_commands_and_each_command_a_module():
    import importlib

    for name in P.STAGE_ORDER:
        commands = P.stage_commands(name)
        assert commands, name
        for cmd in commands:
            module = importlib.import_module(cmd[0])
            assert hasattr(module, "main"), cmd[0]


def test_every_stage_option_is_documented_with_its_default():
    """One mechanism (common.config_field) documents every config field; --help lists each with its meaning."""
    import argparse
    import dataclasses

    import pytest

    from neuron_lib import activations, common, corpus, correlations_fast, neuron_df, summary, weights, zoo

    configs = [
        activations.ActivationsConfig,
        correlations_fast.CorrelationConfig,
        neuron_df.NeuronDfConfig,
        summary.SummaryConfig,
        weights.WeightsConfig,
        zoo.ZooConfig,
        corpus.CorpusConfig,
    ]
    for cls in configs:
        parser = argparse.ArgumentParser(prog="x")
        common.add_config_arguments(parser, cls, overrides_only=cls in (zoo.ZooConfig, corpus.CorpusConfig))
        text = " ".join(parser.format_help().split())
        for f in dataclasses.fields(cls):
            help_text = " ".join(f.metadata["help"].split())
            assert help_text[:30] in text, (cls.__name__, f.name)
            assert f.name.replace("_", "-") in text, (cls.__name__, f.name)

    @dataclasses.dataclass
    class Undocumented:
        x: int = 1

    with pytest.raises(TypeError, match="no help text"):
        common.config_parser(Undocumented, "x", "y")


def test_preset_configs_take_only_the_given_overrides():
    import argparse

    from neuron_lib import common, zoo

    parser = argparse.ArgumentParser()
    common.add_config_arguments(parser, zoo.ZooConfig, overrides_only=True)
    got = common.config_overrides(zoo.ZooConfig, parser.parse_args(["--seeds", "1,2", "--lr", "0.01"]))
    assert got == {"seeds": (1, 2), "lr": 0.01}
    micro = zoo.make_config("micro", **got)
    assert micro.d_model == zoo.PRESETS["micro"]["d_model"] and micro.seeds == (1, 2)


def test_overwrite_is_passed_to_the_named_stages_only(capsys):
    P.main(["all", "--dry-run", "--overwrite", "weights,neuron_df"])
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("==> [")]
    for ln in lines:
        stage = ln.split("]")[0][5:]
        assert ln.endswith("--overwrite") == (stage in ("weights", "neuron_df")), ln
    assert any(ln.startswith("==> [weights]") for ln in lines)
    with pytest.raises(SystemExit):
        P.main(["all", "--dry-run", "--overwrite", "weigths"])
