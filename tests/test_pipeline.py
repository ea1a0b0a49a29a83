"""The one stage table: the pipeline's order and the Slurm jobs derive from it."""

from __future__ import annotations

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
        "correlations",
        "weights",
        "summary",
        "neuron_df",
        "prompts",
        "coactivation",
        "perturb",
        "figures",
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
