"""The one stage table: the pipeline's order and the Slurm jobs derive from it."""

from __future__ import annotations

import pytest

from neuron_lib import pipeline as P
from neuron_lib import slurm as S
from neuron_lib.common import NeuronLibError


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
        "smollm",
        "smollm_analysis",
        "browser",
    ]
    assert "smollm_analysis" in P.stage("browser").after  # the browser indexes the pretrained subject too


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


def test_every_stage_command_accepts_overwrite(monkeypatch):
    """``make all OVERWRITE=<stage>`` appends ``--overwrite`` to each of the stage's commands: every command of every
    stage must parse with it, by its module's own CLI (run as ``python -m`` runs it, stopped right after parsing)."""
    import argparse
    import runpy
    import sys

    class Parsed(BaseException):  # not an Exception: nothing on the way may swallow it
        pass

    def parse_only(self, args=None, namespace=None):
        _, unknown = self.parse_known_args(args, namespace)
        raise Parsed(unknown)

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse_only)
    checked, by_hand = set(), []
    for name in P.STAGE_NAMES:
        try:
            commands = P.stage_commands(name)
        except NeuronLibError as exc:  # a stage that needs the user's choices (it says so, naming itself)
            assert f"--stages {name}" in str(exc)
            by_hand.append(name)
            continue
        for cmd in commands:
            monkeypatch.setattr(sys, "argv", [cmd[0], *cmd[1:], "--overwrite"])
            with pytest.raises(Parsed) as parsed:
                runpy.run_module(cmd[0], run_name="__main__", alter_sys=True)
            assert parsed.value.args[0] == [], f"stage {name}: {' '.join(cmd)} does not take {parsed.value.args[0]}"
            checked.add(cmd[0])
    assert by_hand == ["activations"]
    assert {"neuron_lib.neuron_df", "neuron_lib.smollm", "neuron_lib.browser", "neuron_lib.notebooks"} <= checked


def test_smollm_analysis_commands():
    """The pretrained subject's stage: weights, summary, neuron_df, report, then the entropy experiment, explain on
    the last layers and the two notebooks (calibrated null), all from the named constants, in that order."""
    from neuron_lib import artifacts, criteria

    cmds = P.stage_commands("smollm_analysis")
    modules = [c[0] for c in cmds]
    assert modules == [
        "neuron_lib.weights",
        "neuron_lib.summary",
        "neuron_lib.neuron_df",
        "neuron_lib.smollm",
        "neuron_lib.entropy_intervention",
        "neuron_lib.explain",
        "neuron_lib.notebooks",
    ]
    dataset = str(artifacts.pretrained_dataset(P.SMOLLM_MODEL, "analysis", P.SMOLLM_CTX))

    def opt(cmd, name):
        for i, a in enumerate(cmd):
            if a == name:
                return cmd[i + 1]
            if a.startswith(name + "="):
                return a.split("=", 1)[1]
        raise AssertionError(f"{name} not in {cmd}")

    ent, exp, nbk = cmds[4], cmds[5], cmds[6]
    for cmd in (ent, exp):
        assert opt(cmd, "--model") == P.SMOLLM_MODEL and opt(cmd, "--token-dataset") == dataset
    assert int(opt(ent, "--max-tokens")) == P.SMOLLM_ENTROPY_TOKENS
    assert int(opt(ent, "--last-layers")) == P.SMOLLM_ENTROPY_LAYERS
    assert int(opt(ent, "--n-candidates")) == P.SMOLLM_ENTROPY_CANDIDATES >= 1
    assert int(opt(ent, "--n-baselines")) == P.SMOLLM_ENTROPY_BASELINES >= 1
    assert opt(ent, "--values") == P.SMOLLM_ENTROPY_VALUES
    # explain: the last layers only, capped
    assert opt(exp, "--neurons") == f"last:{P.SMOLLM_EXPLAIN_LAYERS}"
    assert int(opt(exp, "--max-tokens")) == P.SMOLLM_EXPLAIN_TOKENS
    # the notebooks: both, under the model's own figures root, the prediction one against the calibrated null
    assert opt(nbk, "--model") == P.SMOLLM_MODEL
    assert nbk[nbk.index("--only") + 1 : nbk.index("--only") + 3] == ["prediction_neurons", "entropy_neurons"]
    assert opt(nbk, "--out") == str(artifacts.model_figures_root(P.SMOLLM_MODEL))
    params = [nbk[i + 1] for i, a in enumerate(nbk) if a == "-p"]
    assert f"kurt_threshold={criteria.CALIBRATED}" in params


def test_smollm_analysis_commands_parse():
    """Every added command parses with its module's own CLI (a negative --values is one token), and --overwrite
    (``make all OVERWRITE=smollm_analysis``) is accepted by each of them."""
    from neuron_lib import entropy_intervention, explain
    from neuron_lib.common import config_from_args, config_parser

    cmds = {c[0]: c[1:] for c in P.stage_commands("smollm_analysis")}
    for module, cls in (
        (entropy_intervention, entropy_intervention.EntropyInterventionConfig),
        (explain, explain.ExplainConfig),
    ):
        parser = config_parser(cls, "x", "y")
        cfg = config_from_args(cls, parser.parse_args([*cmds[module.__name__], "--overwrite"]))
        assert cfg.overwrite
        cfg.validate()
    ent = config_from_args(
        entropy_intervention.EntropyInterventionConfig,
        config_parser(entropy_intervention.EntropyInterventionConfig, "x", "y").parse_args(
            cmds["neuron_lib.entropy_intervention"]
        ),
    )
    assert entropy_intervention.parse_values(ent.values) == [float(v) for v in P.SMOLLM_ENTROPY_VALUES.split(",")]


def test_smollm_notebooks_command_runs_both_with_the_calibrated_null(monkeypatch):
    """The notebooks command parses into the two notebooks, the model's figures root and the calibrated null;
    ``--overwrite`` (what ``make all OVERWRITE=smollm_analysis`` appends) re-runs them."""
    from neuron_lib import artifacts, criteria, notebooks

    cmd = {c[0]: c[1:] for c in P.stage_commands("smollm_analysis")}["neuron_lib.notebooks"]
    got = {}

    def fake(model, *args, **kw):
        got.update(kw, model=model)
        return [], []

    monkeypatch.setattr(notebooks, "run_notebooks", fake)
    notebooks.main(cmd)
    assert got["model"] == P.SMOLLM_MODEL and list(got["only"]) == list(P.SMOLLM_NOTEBOOKS)
    assert got["out"] == str(artifacts.model_figures_root(P.SMOLLM_MODEL)) and not got["force"]
    assert got["extra"] == {"kurt_threshold": criteria.CALIBRATED, "next_token_rows": P.SMOLLM_NEXT_TOKEN_ROWS}
    notebooks.main([*cmd, "--overwrite"])
    assert got["force"]


def test_a_stage_runs_its_commands_in_one_child_and_a_failure_names_the_command(monkeypatch, capfd):
    """run_stage starts one interpreter per stage (``_run_batch``: each command as ``python -m`` would run it);
    the commands before a failing one finish, and the failure says which command and with what exit code."""
    from neuron_lib.common import NeuronLibError

    cmds = [["json.tool", "--help"], ["json.tool", "/nonexistent/x.json"], ["json.tool", "--help"]]
    monkeypatch.setattr(P, "stage_commands", lambda name, **kw: cmds)
    with pytest.raises(NeuronLibError, match=r"stage 'corpus' failed \(exit 2\)"):
        P.run_stage("corpus")
    out = capfd.readouterr().out
    assert out.count("==> [corpus] -m json.tool") == 2  # the third never started
    assert "<== [corpus] done in" in out and "FAILED (exit 2): json.tool /nonexistent/x.json" in out
