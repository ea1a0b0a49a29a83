"""Shared plumbing: output locations, atomic writes, provenance manifests, clear errors.

Every artifact directory carries a ``manifest.json`` describing where it came from (model,
dataset, token count, config, library versions). Later stages read the manifest of their
inputs and refuse mismatches instead of silently mixing results.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import platform
import tempfile
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch

from neuron_lib.artifacts import MANIFEST_NAME


class NeuronLibError(RuntimeError):
    """An error with a message that tells the user what to do; the CLI prints it without a traceback."""


class ManifestMismatch(NeuronLibError):
    """An input or output folder holds results of a different configuration."""


# ---------------------------------------------------------------- atomic writes
def _same_bytes(a: str | Path, b: Path) -> bool:
    import filecmp

    return b.is_file() and os.path.getsize(a) == b.stat().st_size and filecmp.cmp(a, b, shallow=False)


def _atomic_replace(path: Path, write_fn, keep_identical: bool = False) -> Path:
    """Write through a temporary file in the same folder, then rename. ``keep_identical``: when the new bytes
    equal the file already there, keep that file (and its mtime, which later stages' input digests read)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write_fn(tmp_name)
        if keep_identical and _same_bytes(tmp_name, path):
            os.unlink(tmp_name)
        else:
            os.replace(tmp_name, path)
    except BaseException:
        if os.path.exists(tmp_name):
            os.unlink(tmp_name)
        raise
    return path


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    return _atomic_replace(Path(path), lambda tmp: Path(tmp).write_bytes(data))


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def _json_default(obj: Any):
    if dataclasses.is_dataclass(obj):
        return dataclasses.asdict(obj)
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, torch.Tensor):
        return obj.tolist()
    if hasattr(obj, "item"):
        return obj.item()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def atomic_write_json(path: str | Path, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n")


def read_json(path: str | Path) -> Any:
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise
    except json.JSONDecodeError as exc:
        raise NeuronLibError(f"{path} is corrupt ({exc}); delete it and re-run the stage that writes it") from exc


def save_tensors_atomic(
    path: str | Path, tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str] | None = None
) -> Path:
    """safetensors file written via temp file + rename (no pickle anywhere)."""
    from safetensors.torch import save_file

    contiguous = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    return _atomic_replace(Path(path), lambda tmp: save_file(contiguous, tmp, metadata=dict(metadata or {})))


def load_tensors(path: str | Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    path = Path(path)
    if not path.exists():
        raise NeuronLibError(f"missing tensor file {path}")
    try:
        return load_file(str(path))
    except Exception as exc:  # safetensors raises several types on truncated files
        raise NeuronLibError(f"{path} is corrupt or truncated ({exc}); delete it and re-run its stage") from exc


def save_dataframe_atomic(df, stem: str | Path, formats: Iterable[str] = ("csv", "parquet")) -> list[Path]:
    """Write a pandas DataFrame as ``stem.csv`` and/or ``stem.parquet`` atomically; a file whose bytes would not
    change is left as it is (a re-run that rebuilds the same table does not look like new input downstream)."""
    stem = Path(stem)
    written = []
    for fmt in formats:
        target = stem.with_suffix(f".{fmt}")
        if fmt == "csv":
            written.append(_atomic_replace(target, lambda tmp: df.to_csv(tmp, index=False), keep_identical=True))
        elif fmt == "parquet":
            written.append(_atomic_replace(target, lambda tmp: df.to_parquet(tmp, index=False), keep_identical=True))
        else:
            raise ValueError(f"unknown dataframe format {fmt!r}")
    return written


def save_sparse_atomic(path: str | Path, matrix) -> Path:
    """A scipy.sparse matrix as CSR with ``scipy.sparse.save_npz`` (arrays only, no pickle), atomically."""
    import scipy.sparse as sp

    def write(tmp):
        with open(tmp, "wb") as f:
            sp.save_npz(f, sp.csr_matrix(matrix), compressed=True)

    return _atomic_replace(Path(path), write)


def save_array_atomic(path: str | Path, array) -> Path:
    """A numpy array as ``.npy`` (``allow_pickle=False``: numeric arrays only), atomically."""
    import numpy as np

    def write(tmp):
        with open(tmp, "wb") as f:
            np.save(f, np.asarray(array), allow_pickle=False)

    return _atomic_replace(Path(path), write)


# ---------------------------------------------------------------- provenance
def library_versions() -> dict[str, str]:
    import importlib.metadata as md

    versions = {"python": platform.python_version()}
    for dist in (
        "neuron-lib",
        "torch",
        "transformer-lens",
        "transformers",
        "datasets",
        "tokenizers",
        "numpy",
        "pandas",
    ):
        try:
            versions[dist] = md.version(dist)
        except md.PackageNotFoundError:
            pass
    return versions


def make_manifest(stage: str, config: Any, **fields: Any) -> dict[str, Any]:
    """A provenance record: stage name, config, free-form fields (model, dataset, n_tokens...), versions."""
    if dataclasses.is_dataclass(config):
        config = dataclasses.asdict(config)
    return {
        "stage": stage,
        "config": json.loads(json.dumps(config, default=_json_default)),
        "created_unix": time.time(),
        "versions": library_versions(),
        **json.loads(json.dumps(fields, default=_json_default)),
    }


def write_manifest(folder: str | Path, manifest: Mapping[str, Any]) -> Path:
    return atomic_write_json(Path(folder) / MANIFEST_NAME, manifest)


def read_manifest(folder: str | Path, what_makes_it: str | None = None) -> dict[str, Any]:
    """Read ``folder/manifest.json``; a missing one names the command that produces it."""
    path = Path(folder) / MANIFEST_NAME
    if not path.exists():
        hint = f" Run `{what_makes_it}` first." if what_makes_it else ""
        raise NeuronLibError(f"{folder} has no {MANIFEST_NAME}: it is missing or unfinished.{hint}")
    return read_json(path)


def config_identity(config: Any, exclude: Iterable[str] = (), paths: Iterable[str] = ()) -> dict[str, Any]:
    """A runner config's identity: its fields less ``exclude`` (settings that do not change the results, such as
    batch size or device), with the ``paths`` fields resolved to absolute paths."""
    d = dataclasses.asdict(config)
    for k in exclude:
        d.pop(k)
    for k in paths:
        if d.get(k):
            d[k] = str(Path(d[k]).expanduser().resolve())
    return d


def config_fingerprint(config: Any) -> str:
    """Stable short hash of a config (dataclass or dict), used to refuse reusing a folder for another config."""
    if dataclasses.is_dataclass(config):
        config = dataclasses.asdict(config)
    blob = json.dumps(config, sort_keys=True, default=_json_default).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


# ---------------------------------------------------------------- misc
def pick_device(requested: str = "auto") -> torch.device:
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(requested)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise NeuronLibError(f"device {requested!r} requested but CUDA is not available; use --device cpu")
    return device


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def run_cli(main_fn) -> None:
    """Run a CLI entry point; NeuronLibError becomes a one-line message and exit code 2."""
    import sys

    try:
        main_fn()
    except NeuronLibError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


# ---------------------------------------------------------------- runner configs as CLIs (SAELens style)
REQUIRED = dataclasses.MISSING  # config_field(REQUIRED, "...") declares a field the user must give


def config_field(default, help_text: str):
    """A config dataclass field whose help text the CLI shows (mutable defaults become factories).

    The one way every runner config documents its fields: ``config_parser`` refuses a field without help.
    """
    if default is REQUIRED:
        return dataclasses.field(metadata={"help": help_text})
    if isinstance(default, (list, dict, set)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata={"help": help_text})
    return dataclasses.field(default=default, metadata={"help": help_text})


def _unwrap_optional(tp):
    import types
    import typing

    if typing.get_origin(tp) is typing.Union or isinstance(tp, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return args[0], True
    return tp, False


def config_parser(cls, prog: str, description: str):
    """argparse from a config dataclass: ``field_name`` -> ``--field-name`` (see :func:`add_config_arguments`)."""
    import argparse

    parser = argparse.ArgumentParser(prog=prog, description=description)
    add_config_arguments(parser, cls)
    return parser


def add_config_arguments(parser, cls, overrides_only: bool = False) -> None:
    """One option per field of the config dataclass ``cls``, its help from ``config_field``.

    Booleans defaulting to False become ``--flag``, those defaulting to True ``--no-flag``; list/tuple
    fields take values separated by spaces or commas; optional numbers accept ``none``; fields without a
    default are required. With ``overrides_only`` (configs built from presets) an option the user does not
    give is left out of the parsed namespace, so :func:`config_overrides` returns only what was given.
    """
    import argparse
    import typing

    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp, optional = _unwrap_optional(hints[f.name])
        flag = "--" + f.name.replace("_", "-")
        help_text = f.metadata.get("help")
        if not help_text:
            raise TypeError(
                f"{cls.__name__}.{f.name} has no help text: declare it with common.config_field(default, help)"
            )
        has_default = f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
        default = f.default if f.default is not dataclasses.MISSING else (f.default_factory() if has_default else None)
        shown = f" (default: {default}{'; presets may differ' if overrides_only else ''})" if has_default else ""
        given = {"default": argparse.SUPPRESS} if overrides_only else {}
        if tp is bool:
            if default:
                name, action, text = "--no-" + f.name.replace("_", "-"), "store_false", f"turn off: {help_text}"
            else:
                name, action, text = flag, "store_true", help_text
            parser.add_argument(name, dest=f.name, action=action, help=text + shown, **given)
            if not overrides_only:
                parser.set_defaults(**{f.name: bool(default)})
        elif typing.get_origin(tp) in (list, tuple):
            parser.add_argument(
                flag, dest=f.name, nargs="+", type=str, help=help_text + shown, **(given or {"default": default})
            )
        else:

            def convert(text, base=tp, optional=optional):
                return None if optional and text.lower() == "none" else base(text)

            parser.add_argument(
                flag,
                dest=f.name,
                type=convert,
                required=not has_default and not overrides_only,
                help=help_text + (shown if has_default else " (required)"),
                **(given or {"default": default}),
            )


def _field_value(tp, value):
    """A parsed option's value as the field's type: list/tuple values are split on commas and converted."""
    import typing

    tp, _ = _unwrap_optional(tp)
    if typing.get_origin(tp) in (list, tuple) and isinstance(value, list):
        item = (typing.get_args(tp) or (str,))[0]
        parts = [p.strip() for v in value for p in str(v).split(",") if p.strip()]
        return typing.get_origin(tp)(item(p) for p in parts)
    return value


def config_from_args(cls, args):
    """Build ``cls`` from parsed args (every field)."""
    import typing

    hints = typing.get_type_hints(cls)
    return cls(**{f.name: _field_value(hints[f.name], getattr(args, f.name)) for f in dataclasses.fields(cls)})


def config_overrides(cls, args) -> dict[str, Any]:
    """The fields of ``cls`` the user gave (parsed with ``add_config_arguments(..., overrides_only=True)``)."""
    import typing

    hints = typing.get_type_hints(cls)
    return {
        f.name: _field_value(hints[f.name], getattr(args, f.name))
        for f in dataclasses.fields(cls)
        if hasattr(args, f.name)
    }


def parse_memory(text: str | int | float | None) -> int | None:
    """``"4GB"`` -> 4e9, ``"512MiB"`` -> 2**29, ``2e9`` -> 2e9, ``"auto"``/None -> None (the caller decides)."""
    import re

    if text is None or (isinstance(text, str) and text.strip().lower() in ("", "auto")):
        return None
    if isinstance(text, (int, float)):
        return int(text)
    match = re.fullmatch(r"\s*([0-9.eE+]+)\s*([KMGT]?i?B?)\s*", str(text), flags=re.IGNORECASE)
    units = {"": 1, "K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "KI": 2**10, "MI": 2**20, "GI": 2**30, "TI": 2**40}
    unit = match.group(2).upper().rstrip("B") if match else None
    if not match or unit not in units:
        raise NeuronLibError(f"cannot read the memory size {text!r}; write e.g. 4GB, 512MiB, 2e9 or auto")
    try:
        value = float(match.group(1))
    except ValueError:
        raise NeuronLibError(f"cannot read the memory size {text!r}; write e.g. 4GB, 512MiB, 2e9 or auto") from None
    if value <= 0:
        raise NeuronLibError(f"memory size {text!r} must be positive")
    return int(value * units[unit])
