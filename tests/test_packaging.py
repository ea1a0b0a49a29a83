"""Packaging: pip and conda pin the same dependencies, the venv runs those pins (torch: the CPU build), the wheel
ships every module of neuron_lib and each command-line module runs from a regular (non-editable) install."""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import subprocess
import sys
import textwrap
import tomllib
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "neuron_lib"
TORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"
PIN = re.compile(r"([A-Za-z0-9][A-Za-z0-9_.\-]*)==([A-Za-z0-9_.+!\-]+)")
MAIN_BLOCK = re.compile(r"""^if __name__ == ["']__main__["']\s*:""", re.MULTILINE)


def _norm(name: str) -> str:
    """PEP 503 name normalisation (``Transformer_Lens`` and ``transformer-lens`` are one package)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def _pins(entries: list[str], where: str) -> dict[str, str]:
    pins: dict[str, str] = {}
    for dep in entries:
        m = PIN.fullmatch(dep.strip())
        assert m, f"{where}: {dep!r} is not an exact pin (name==version)"
        name = _norm(m.group(1))
        assert name not in pins, f"{where}: {name} is pinned twice"
        pins[name] = m.group(2)
    return pins


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _pyproject_pins() -> dict[str, str]:
    project = _pyproject()["project"]
    return _pins(project["dependencies"] + project["optional-dependencies"]["dev"], "pyproject.toml")


def _environment() -> dict:
    return yaml.safe_load((ROOT / "environment.yml").read_text())


def _environment_pip_section() -> list[str]:
    sections = [d["pip"] for d in _environment()["dependencies"] if isinstance(d, dict) and "pip" in d]
    assert len(sections) == 1, "environment.yml must have exactly one pip: section"
    return [str(e).strip() for e in sections[0]]


def _environment_pins() -> dict[str, str]:
    """The pip section's pins; anything there that is neither a pin nor a known option line fails."""
    entries = [e for e in _environment_pip_section() if not e.startswith(("--extra-index-url ", "-e "))]
    return _pins(entries, "environment.yml")


def test_every_pyproject_pin_is_in_environment_yml_and_vice_versa():
    py, env = _pyproject_pins(), _environment_pins()
    only_py = {k: v for k, v in py.items() if k not in env}
    only_env = {k: v for k, v in env.items() if k not in py}
    differ = {k: (py[k], env[k]) for k in py.keys() & env.keys() if py[k] != env[k]}
    assert not only_py, f"pinned in pyproject.toml only: {only_py}"
    assert not only_env, f"pinned in environment.yml only: {only_env}"
    assert not differ, f"pinned differently (pyproject.toml, environment.yml): {differ}"


def test_environment_yml_installs_this_checkout_and_a_supported_python():
    pip = _environment_pip_section()
    assert "-e ." in pip, "environment.yml must install the package itself (-e .)"
    conda = [d for d in _environment()["dependencies"] if isinstance(d, str)]
    python = [d for d in conda if re.fullmatch(r"python[=<>!~].*", d)]
    assert len(python) == 1, f"environment.yml must pin python once, got {python}"
    minor = tuple(int(x) for x in re.search(r"(\d+)\.(\d+)", python[0]).groups())
    required = re.fullmatch(r">=(\d+)\.(\d+)", _pyproject()["project"]["requires-python"])
    assert required, "requires-python should be a plain lower bound (>=X.Y)"
    assert minor >= tuple(int(x) for x in required.groups()), (python[0], _pyproject()["project"]["requires-python"])


def test_torch_comes_from_the_cpu_index_in_both_files():
    pins = _pyproject_pins()
    assert pins["torch"] == "2.13.0", f"torch must stay pinned to the 2.13.0 CPU build on disk, not {pins['torch']}"
    assert "+" not in pins["torch"], "pin the public version; the CPU build comes from the index, not a local label"
    pip = _environment_pip_section()
    index = [e for e in pip if e.startswith("--extra-index-url ")]
    assert index == [f"--extra-index-url {TORCH_CPU_INDEX}"], f"conda's pip must use the CPU wheel index, got {index}"
    assert pip.index(index[0]) < pip.index(f"torch=={pins['torch']}"), "the CPU index must come before the torch pin"


def test_the_test_environment_runs_the_pinned_versions():
    """Every pin (runtime and dev) is what is installed here; torch is a CPU-only build."""
    wrong = {}
    for name, pin in _pyproject_pins().items():
        try:
            installed = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            installed = None
        if installed is None or installed.split("+")[0] != pin:
            wrong[name] = (pin, installed)
    assert not wrong, f"installed versions differ from the pins (pin, installed): {wrong}; reinstall with `make env`"
    import torch

    assert torch.version.cuda is None, f"torch {torch.__version__} is a CUDA build; the pin is the CPU build"


def test_readme_gives_the_two_commands_first():
    lines = [l.strip() for l in (ROOT / "README.md").read_text().splitlines() if l.strip()]
    first = "\n".join(lines[:12])
    assert "make all" in first and "make test" in first
    ci = (ROOT / ".ci" / "run").read_text()
    assert "make test" in ci


# ---------------------------------------------------------------- the package's modules and command lines
def _source_files(root: Path = ROOT) -> list[str]:
    """Every ``.py`` file of the package, relative to ``root`` (subpackages included)."""
    return sorted(
        p.relative_to(root).as_posix() for p in (root / PACKAGE).rglob("*.py") if "__pycache__" not in p.parts
    )


def _module_name(rel: str) -> str:
    parts = rel.removesuffix(".py").split("/")
    return ".".join(parts[:-1] if parts[-1] in ("__init__", "__main__") else parts)


def _cli_modules(root: Path = ROOT) -> list[str]:
    """Modules run as ``python -m``: those with an ``if __name__ == "__main__"`` block, and packages with a
    ``__main__.py``."""
    out = set()
    for rel in _source_files(root):
        if rel.endswith("/__main__.py") or MAIN_BLOCK.search((root / rel).read_text()):
            out.add(_module_name(rel))
    return sorted(out)


def test_every_documented_python_m_command_names_a_command_line_module():
    """``python -m neuron_lib.X`` in the README, Makefile, docs, Slurm scripts and the package's own messages."""
    cli = set(_cli_modules())
    assert "neuron_lib.pipeline" in cli  # what `make all` runs
    places = [ROOT / "README.md", ROOT / "Makefile"]
    for folder in ("docs", "slurm", PACKAGE, "benchmarks"):
        places += [
            p
            for p in (ROOT / folder).rglob("*")
            if p.is_file() and p.suffix in (".md", ".py", ".sh", ".sbatch", "") and "__pycache__" not in p.parts
        ]
    unknown = {}
    for path in places:
        for mod in re.findall(r"-m (neuron_lib(?:\.[A-Za-z_]\w*)+)", path.read_text(errors="replace")):
            if mod not in cli:
                unknown.setdefault(mod, []).append(path.relative_to(ROOT).as_posix())
    assert not unknown, f"commands name modules without a main block: {unknown}"


def _build_wheel(root: Path, tmp: Path) -> Path:
    """``pip wheel`` of ``root`` as it is; setuptools' build and egg-info folders go to ``tmp`` (never stale
    leftovers in the checkout, which would otherwise be packed into the wheel)."""
    extra = tmp / "build-setup.cfg"
    extra.write_text(f"[build]\nbuild_base = {tmp / 'build'}\n[egg_info]\negg_base = {tmp}\n")
    dist = tmp / "dist"
    env = {**os.environ, "DIST_EXTRA_CONFIG": str(extra), "PIP_NO_INPUT": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", str(dist), "."],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, f"pip wheel failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    wheels = list(dist.glob("*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]


def _missing_from_wheel(root: Path, wheel: Path) -> list[str]:
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
    return [f for f in _source_files(root) if f not in names]


def test_wheel_check_catches_an_excluded_subpackage(tmp_path):
    """The check below can fail: a project that lists only the top package leaves its subpackage out."""
    proj = tmp_path / "proj"
    (proj / PACKAGE / "sub").mkdir(parents=True)
    (proj / "pyproject.toml").write_text(
        textwrap.dedent(f"""\
        [build-system]
        requires = ["setuptools>=64"]
        build-backend = "setuptools.build_meta"
        [project]
        name = "packaging-probe"
        version = "0"
        [tool.setuptools]
        packages = ["{PACKAGE}"]
        """)
    )
    (proj / PACKAGE / "__init__.py").write_text("")
    (proj / PACKAGE / "sub" / "__init__.py").write_text("")
    (proj / PACKAGE / "sub" / "tool.py").write_text('if __name__ == "__main__":\n    pass\n')
    (tmp_path / "out").mkdir()
    wheel = _build_wheel(proj, tmp_path / "out")
    assert _missing_from_wheel(proj, wheel) == [f"{PACKAGE}/sub/__init__.py", f"{PACKAGE}/sub/tool.py"]
    assert _cli_modules(proj) == [f"{PACKAGE}.sub.tool"]


_IMPORT_ALL = """
import importlib, json, sys
print(json.dumps({m: importlib.import_module(m).__file__ for m in sys.argv[1:]}))
"""


@pytest.mark.slow
def test_wheel_ships_every_module_and_each_command_runs_from_it(tmp_path):
    wheel = _build_wheel(ROOT, tmp_path)
    missing = _missing_from_wheel(ROOT, wheel)
    assert not missing, f"the wheel leaves out {missing}: check [tool.setuptools.packages.find] in pyproject.toml"

    site, work = tmp_path / "site", tmp_path / "work"
    work.mkdir()
    with zipfile.ZipFile(wheel) as zf:
        zf.extractall(site)
    # cwd and PYTHONPATH keep the checkout off sys.path; an editable install of it may still be in the venv
    # (make env installs one), so every module's file is checked to come from the unzipped wheel.
    env = {**os.environ, "PYTHONPATH": str(site), "HF_HUB_OFFLINE": "1"}

    def run(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, *args], cwd=work, env=env, capture_output=True, text=True, timeout=timeout
        )

    modules = sorted({_module_name(f) for f in _source_files() if not f.endswith("/__main__.py")})
    proc = run("-c", _IMPORT_ALL, *modules)
    assert proc.returncode == 0, f"importing the installed modules failed:\n{proc.stderr[-4000:]}"
    files = json.loads(proc.stdout.strip().splitlines()[-1])
    assert sorted(files) == modules
    assert Path(files[PACKAGE]).resolve().is_relative_to(site.resolve()), files[PACKAGE]
    outside = {m: f for m, f in files.items() if not Path(f).resolve().is_relative_to(site.resolve())}
    assert not outside, f"imported from outside the unzipped wheel (so missing from it?): {outside}"

    cli = _cli_modules()
    assert PACKAGE + ".pipeline" in cli, cli
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = dict(zip(cli, pool.map(lambda m: run("-m", m, "--help"), cli)))
    failed = {}
    for mod, proc in results.items():
        usage = proc.stdout.strip()
        if proc.returncode != 0 or not usage or "usage:" not in usage.lower():
            failed[mod] = f"exit {proc.returncode}\nstdout: {proc.stdout[-1500:]}\nstderr: {proc.stderr[-1500:]}"
    report = "\n\n".join(f"{m}: {e}" for m, e in failed.items())
    assert not failed, f"`python -m MODULE --help` from the wheel:\n{report}"
