"""The skeleton every ``python -m neuron_lib.<stage>`` shares, so that run functions keep only their compute core.

A stage run goes:

1. **open inputs** — :func:`open_inputs`: the model's tokenizer and the token dataset, with the one
   tokenizer check (``corpus.load_token_dataset(path, tokenizer)`` refuses a dataset tokenized otherwise);
2. **identity → fingerprint → folder state** — the config's ``identity()`` (the fields that change results)
   hashed by ``common.config_fingerprint``; :func:`folder_state` classifies each output folder as
   ``absent`` (missing, or unfinished: no manifest), ``finished`` (this stage and fingerprint, every listed
   file present), ``other`` (another stage or configuration) or ``corrupt`` (unreadable manifest, or a
   finished manifest whose files are gone); :func:`must_run` applies the one rule: finished → reused, absent →
   computed, other / corrupt → refused unless ``--overwrite``;
3. **the printed plan** — :func:`log` lines prefixed with the stage name (one logging convention: plain
   lines on stdout, progress bars on stderr);
4. **the outputs** — :func:`write_folder`: a fresh folder, every file written atomically, the manifest last
   (a folder without a manifest is unfinished);
5. **one result type** — :class:`StageResult`.
"""

from __future__ import annotations

import dataclasses
import shutil
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, Literal

import torch

from neuron_lib import artifacts
from neuron_lib.common import (
    ManifestMismatch,
    NeuronLibError,
    read_json,
    save_tensors_atomic,
    write_manifest,
)

FolderState = Literal["absent", "finished", "other", "corrupt"]


def log(stage: str, message: str) -> None:
    """The one logging convention: ``<stage>: message`` on stdout, flushed (progress bars go to stderr)."""
    print(f"{stage}: {message}", flush=True)


# ---------------------------------------------------------------- output folders
def folder_state(
    folder: str | Path,
    stage: str,
    fingerprint: str,
    required_files: Iterable[str] | Callable[[dict], Iterable[str]] = (),
) -> FolderState:
    """What an output folder holds, judged by its manifest (see the module docstring for the four states)."""
    path = artifacts.manifest_path(folder)
    if not path.exists():
        return "absent"
    try:
        manifest = read_json(path)
    except NeuronLibError:
        return "corrupt"
    if (
        not isinstance(manifest, dict)
        or manifest.get("stage") != stage
        or manifest.get("config_fingerprint") != fingerprint
    ):
        return "other" if isinstance(manifest, dict) else "corrupt"
    files = required_files(manifest) if callable(required_files) else required_files
    return "finished" if all((Path(folder) / f).exists() for f in files) else "corrupt"


def must_run(folder: str | Path, state: FolderState, overwrite: bool, stage: str) -> bool:
    """The one rule every stage shares: a finished folder (same stage and configuration) is reused — stages are
    deterministic, so recomputing it would give the same files; an absent one is computed; a folder of another
    configuration or a corrupt one is refused unless ``overwrite``, which replaces it."""
    if state == "finished":
        return False
    if state in ("other", "corrupt") and not overwrite:
        what = "results of another configuration" if state == "other" else "a corrupt or incomplete result"
        raise ManifestMismatch(
            f"{folder} holds {what} of stage {stage!r}; pass --overwrite to replace it, or move the "
            "output root elsewhere (its environment variable, docs/DESIGN.md)"
        )
    return True


def write_folder(
    folder: str | Path,
    tensors: Mapping[str, Mapping[str, torch.Tensor]],
    manifest: Mapping[str, Any],
    metadata: Mapping[str, str] | None = None,
    fresh: bool = True,
) -> Path:
    """Write ``{file name: tensors}`` as safetensors into ``folder`` (emptied first when ``fresh``), manifest last."""
    folder = Path(folder)
    nested = [str(name) for name in tensors if Path(name).name != str(name)]
    if nested:
        raise ValueError(f"write_folder takes file names, not paths: {nested}")
    if fresh and folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for name, part in tensors.items():
        save_tensors_atomic(folder / name, part, metadata=metadata)
    write_manifest(folder, manifest)
    return folder


# ---------------------------------------------------------------- inputs
@dataclasses.dataclass
class StageInputs:
    """A model's tokenizer and the token dataset a stage streams over."""

    tokenizer: Any
    dataset: Any  # HF Dataset with a torch-formatted ``tokens`` column
    dataset_manifest: dict
    dataset_path: str  # resolved folder
    dataset_name: str  # its path component (artifacts.dataset_name)
    ctx: int
    n_rows: int  # rows to read (the first ceil(max_tokens / ctx), or all)

    @property
    def tokenizer_fingerprint(self) -> str:
        return self.dataset_manifest["tokenizer_fingerprint"]

    @property
    def dataset_identity(self) -> dict[str, Any]:
        return dataset_identity(self.dataset_manifest, self.dataset_path)

    def manifest_fields(self, model) -> dict[str, Any]:
        """What a streaming stage's manifest records about its inputs (the loaded ``model`` and this dataset)."""
        from neuron_lib.models import model_info

        info = model_info(model)
        return {
            "model": info["model"],
            "model_info": info,
            "dataset": self.dataset_name,
            "dataset_path": self.dataset_path,
            "tokenizer_fingerprint": self.tokenizer_fingerprint,
        }


DATASET_IDENTITY_FIELDS = ("tokenizer_fingerprint", "ctx_len", "n_rows", "n_tokens", "split", "split_seed")


def dataset_identity(manifest: Mapping[str, Any], path: str | Path) -> dict[str, Any]:
    """A token dataset as a run's identity sees it: its folder name and the content fields of its manifest, never
    its absolute path, so a moved checkout (or a cluster's other mount point) still finds its finished outputs."""
    return {"name": artifacts.dataset_name(path), **{k: manifest.get(k) for k in DATASET_IDENTITY_FIELDS}}


def open_inputs(model: str, token_dataset: str, max_tokens: int | None = None) -> StageInputs:
    """The model's tokenizer and its token dataset, refusing a dataset made with another tokenizer."""
    from neuron_lib.corpus import load_token_dataset
    from neuron_lib.models import load_tokenizer
    from neuron_lib.streaming import n_rows_for_tokens

    tokenizer = load_tokenizer(model)
    ds, manifest = load_token_dataset(token_dataset, tokenizer)
    if len(ds) == 0:
        raise NeuronLibError(f"token dataset {token_dataset} is empty")
    ctx = int(manifest.get("ctx_len") or len(ds[0]["tokens"]))
    path = str(Path(token_dataset).expanduser().resolve())
    return StageInputs(
        tokenizer, ds, manifest, path, artifacts.dataset_name(token_dataset), ctx, n_rows_for_tokens(ds, max_tokens)
    )


# ---------------------------------------------------------------- results
@dataclasses.dataclass
class StageResult:
    """What every ``run_*`` returns."""

    stage: str
    status: Literal["done", "skipped"]
    outputs: dict[str, str]  # what was (or already had been) written: name → path
    n_tokens: int | None = None
    seconds: float | None = None
    details: dict[str, Any] = dataclasses.field(default_factory=dict)  # stage-specific facts (plan, counts, ...)

    @property
    def skipped(self) -> bool:
        return self.status == "skipped"


def cli(config_cls, run_fn, prog: str, description: str):
    """The ``main(argv)`` of a stage: its config's CLI (``common.config_parser``) → ``run_fn(config)``."""
    from neuron_lib.common import config_from_args, config_parser

    def main(argv: list[str] | None = None) -> StageResult:
        parser = config_parser(config_cls, prog, description)
        return run_fn(config_from_args(config_cls, parser.parse_args(argv)))

    main.__doc__ = f"``{prog}``: {description}"
    return main
