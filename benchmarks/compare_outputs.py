"""Compare two pipeline output trees (e.g. before and after a refactor) and report what differs.

Files are paired by their path relative to each root, inside the pipeline's top-level output folders.
A file whose bytes match is identical; otherwise it is compared by kind:

- tensors: ``*.safetensors`` (every tensor by name, plus the metadata dict), ``*.npy`` / ``*.npz``;
- tables: ``*.csv`` / ``*.parquet`` (columns, row counts, per-column values);
- json: parsed and compared recursively, ignoring ``VOLATILE_KEYS`` (timings, timestamps, versions);
- rendering: ``*.png`` / ``*.svg`` / ``*.html`` / ``*.ipynb``, byte-compared only, and reported apart,
  since they embed timestamps;
- bytes: everything else (HF ``datasets`` arrow files, tokenizer files...), byte-compared (sha256).

Each tree's own absolute root is replaced by ``<ROOT>`` in JSON strings, text table cells and
safetensors metadata, so that paths inside outputs do not differ between checkouts.

Run: ``python benchmarks/compare_outputs.py /work/before /work/main [--out report.md] [--fail-on-diff]``.
Exit code: 0 (the report is the result), 2 for a wrong argument, 1 with ``--fail-on-diff`` when a data
(non-rendering) difference exists.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from safetensors import safe_open

DEFAULT_FOLDERS = (
    "corpus",
    "token_datasets",
    "models",
    "correlation_results",
    "summary_data",
    "dataframes",
    "cached_activations",
    "figures",
)
# JSON keys expected to change between runs; matched by key name at any depth (the `plan` timings are
# `probe_gflops` and `estimated_seconds`). `--ignore-key` adds names or dotted paths such as `plan.budget_bytes`.
VOLATILE_KEYS = frozenset({"created_unix", "versions", "elapsed_s", "seconds", "probe_gflops", "estimated_seconds"})
KINDS = ("tensors", "tables", "json", "bytes", "rendering")
RENDERING_SUFFIXES = frozenset({".png", ".svg", ".html", ".ipynb"})
MAX_ITEMS = 20  # differences listed per file
MAX_PATHS = 100  # paths listed per "only in ..." section
ROOT_TOKEN = "<ROOT>"


@dataclass
class FileResult:
    path: str  # relative to the roots, POSIX style
    kind: str  # one of KINDS
    diffs: list[str] = field(default_factory=list)

    @property
    def identical(self) -> bool:
        return not self.diffs


@dataclass
class Report:
    old_root: Path
    new_root: Path
    folders: tuple[str, ...]
    rtol: float
    atol: float
    ignore_keys: frozenset[str]
    results: list[FileResult] = field(default_factory=list)
    only_old: list[str] = field(default_factory=list)
    only_new: list[str] = field(default_factory=list)
    folder_notes: list[str] = field(default_factory=list)  # folders present on one side only

    def differing(self, kind: str | None = None) -> list[FileResult]:
        return [r for r in self.results if r.diffs and (kind is None or r.kind == kind)]

    @property
    def has_data_diff(self) -> bool:
        data = [r for r in self.differing() if r.kind != "rendering"]
        return bool(data or self.only_old or self.only_new or self.folder_notes)


@dataclass(frozen=True)
class Context:
    """What every comparator needs: tolerances, ignored JSON keys, and each side's root prefixes."""

    rtol: float
    atol: float
    ignore_keys: frozenset[str]
    old_prefixes: tuple[str, ...]
    new_prefixes: tuple[str, ...]

    @property
    def exact(self) -> bool:
        return self.rtol == 0 and self.atol == 0


# ---------------------------------------------------------------- helpers


def kind_of(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix in RENDERING_SUFFIXES:
        return "rendering"
    if suffix in (".safetensors", ".npy", ".npz"):
        return "tensors"
    if suffix in (".csv", ".parquet"):
        return "tables"
    return "json" if suffix == ".json" else "bytes"


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def root_prefixes(root: Path) -> tuple[str, ...]:
    """The spellings of a root that may appear in its outputs, longest first."""
    return tuple(sorted({str(root.absolute()), str(root.resolve())}, key=len, reverse=True))


def normalise(value: Any, prefixes: tuple[str, ...]) -> Any:
    """Replace the tree's absolute root with ``<ROOT>`` in every string of a (nested) value."""
    if isinstance(value, str):
        for p in prefixes:
            value = value.replace(p, ROOT_TOKEN)
        return value
    if isinstance(value, dict):
        return {k: normalise(v, prefixes) for k, v in value.items()}
    if isinstance(value, list):
        return [normalise(v, prefixes) for v in value]
    return value


def short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def capped(items: list[str], limit: int) -> list[str]:
    return items if len(items) <= limit else items[:limit] + [f"... and {len(items) - limit} more"]


def same_value(x: Any, y: Any) -> bool:
    """Equality for cells and scalars: missing equals missing, NaN equals NaN, arrays element-wise."""
    if x is None or y is None:
        return x is None and y is None
    if isinstance(x, float) and isinstance(y, float) and math.isnan(x) and math.isnan(y):
        return True
    try:
        return bool(x == y)
    except (TypeError, ValueError):
        return bool(np.array_equal(np.asarray(x), np.asarray(y)))


# ---------------------------------------------------------------- arrays (tensors, npy, numeric columns)


def array_stats(a: np.ndarray, b: np.ndarray, ctx: Context) -> tuple[float | None, int]:
    """(max |Δ|, number of differing elements) of two same-shape arrays; NaN == NaN, equal infinities equal.

    max |Δ| is None for non-numeric arrays and inf where NaN or infinity meets a different value."""
    a, b = a.reshape(-1), b.reshape(-1)
    if not (a.dtype.kind in "biufc" and b.dtype.kind in "biufc"):
        return None, int(sum(not same_value(x, y) for x, y in zip(a.tolist(), b.tolist())))
    wide = np.complex128 if "c" in (a.dtype.kind, b.dtype.kind) else np.float64
    max_d, n_diff = 0.0, 0
    for s in range(0, a.size, 1 << 22):  # chunks bound the float64 temporaries of large tensors
        x, y = a[s : s + (1 << 22)], b[s : s + (1 << 22)]
        x64, y64 = x.astype(wide), y.astype(wide)
        with np.errstate(invalid="ignore", over="ignore"):
            d = np.abs(x64 - y64)
        equal = (x == y) | (np.isnan(x64) & np.isnan(y64))
        d = np.where(equal, 0.0, np.where(np.isnan(d), np.inf, d))
        close = equal if ctx.exact else equal | (d <= ctx.atol + ctx.rtol * np.abs(y64))
        max_d, n_diff = max(max_d, float(d.max(initial=0.0))), n_diff + int((~close).sum())
    return max_d, n_diff


def describe_arrays(
    name: str, a: np.ndarray, b: np.ndarray, bit_identical: bool, ctx: Context, dtypes: tuple[str, str] | None = None
) -> str | None:
    """One line saying how two named arrays differ, or None when they are equal.

    ``dtypes`` names the original dtypes where the arrays stand in for others (torch bfloat16...)."""
    da, db = dtypes or (str(a.dtype), str(b.dtype))
    dtype = f"dtype {da} → {db}" if da != db else ""
    if a.shape != b.shape:
        return f"`{name}`: shape {list(a.shape)} → {list(b.shape)}" + (f", {dtype}" if dtype else "")
    if bit_identical:
        return None
    max_d, n_diff = array_stats(a, b, ctx)
    prefix = f"`{name}`: " + (f"{dtype}; " if dtype else "")
    if n_diff:
        delta = f"max |Δ| = {max_d:.6g}, " if max_d is not None else ""
        return f"{prefix}{delta}{n_diff:,} of {a.size:,} elements differ"
    if dtype:
        return f"{prefix}values equal"
    if ctx.exact:
        return f"{prefix}values equal but not bit-identical (signed zeros or NaN payloads)"
    return None


def tensor_to_numpy(t: torch.Tensor) -> np.ndarray:
    if t.dtype == torch.bfloat16 or (t.is_floating_point() and t.element_size() == 1):
        t = t.to(torch.float32)  # bfloat16 / float8 are exact in float32; numpy has no such dtypes
    return t.numpy()


def compare_safetensors(old: Path, new: Path, ctx: Context) -> list[str]:
    diffs = []
    with safe_open(str(old), framework="pt") as fa, safe_open(str(new), framework="pt") as fb:
        meta_a, meta_b = (
            normalise(fa.metadata() or {}, ctx.old_prefixes),
            normalise(fb.metadata() or {}, ctx.new_prefixes),
        )
        diffs += [
            f"metadata `{k}`: {short(meta_a.get(k))} → {short(meta_b.get(k))}"
            for k in sorted(meta_a.keys() | meta_b.keys())
            if meta_a.get(k) != meta_b.get(k)
        ]
        keys_a, keys_b = set(fa.keys()), set(fb.keys())
        diffs += [f"tensor `{k}` only in old" for k in sorted(keys_a - keys_b)]
        diffs += [f"tensor `{k}` only in new" for k in sorted(keys_b - keys_a)]
        for k in sorted(keys_a & keys_b):
            ta, tb = fa.get_tensor(k), fb.get_tensor(k)
            bits = (
                ta.dtype == tb.dtype
                and ta.shape == tb.shape
                and torch.equal(ta.reshape(-1).view(torch.uint8), tb.reshape(-1).view(torch.uint8))
            )
            dtypes = (str(ta.dtype).removeprefix("torch."), str(tb.dtype).removeprefix("torch."))
            line = describe_arrays(k, tensor_to_numpy(ta), tensor_to_numpy(tb), bits, ctx, dtypes)
            diffs += [line] if line else []
    return diffs


def load_numpy(path: Path) -> dict[str, np.ndarray]:
    if path.suffix.lower() == ".npy":
        return {"(array)": np.load(path, allow_pickle=False)}
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def compare_numpy(old: Path, new: Path, ctx: Context) -> list[str]:
    a, b = load_numpy(old), load_numpy(new)
    diffs = [f"array `{k}` only in old" for k in sorted(a.keys() - b.keys())]
    diffs += [f"array `{k}` only in new" for k in sorted(b.keys() - a.keys())]
    for k in sorted(a.keys() & b.keys()):
        x, y = a[k], b[k]
        bits = x.dtype == y.dtype and x.shape == y.shape and x.tobytes() == y.tobytes()
        line = describe_arrays(k, x, y, bits, ctx)
        diffs += [line] if line else []
    return diffs


def compare_tensor_file(old: Path, new: Path, ctx: Context) -> list[str]:
    return (compare_safetensors if old.suffix.lower() == ".safetensors" else compare_numpy)(old, new, ctx)


# ---------------------------------------------------------------- tables


def read_table(path: Path) -> pd.DataFrame:
    return pd.read_parquet(path) if path.suffix.lower() == ".parquet" else pd.read_csv(path, low_memory=False)


def column_array(s: pd.Series) -> np.ndarray:
    if (pd.api.types.is_bool_dtype(s) or pd.api.types.is_integer_dtype(s)) and not s.hasnans:
        return s.to_numpy()
    return s.to_numpy(dtype=np.float64, na_value=np.nan)


def text_cells(s: pd.Series, prefixes: tuple[str, ...]) -> list[Any]:
    return [
        None
        if (v is None or v is pd.NA or v is pd.NaT or (isinstance(v, float) and math.isnan(v)))
        else normalise(v, prefixes)
        for v in s.astype(object).tolist()
    ]


def compare_column(name: str, a: pd.Series, b: pd.Series, ctx: Context) -> str | None:
    dtype = f"dtype {a.dtype} → {b.dtype}; " if str(a.dtype) != str(b.dtype) else ""
    numeric = all(pd.api.types.is_numeric_dtype(s) and not pd.api.types.is_complex_dtype(s) for s in (a, b))
    if numeric:
        max_d, n_diff = array_stats(column_array(a), column_array(b), ctx)
        return (
            f"column `{name}`: {dtype}max |Δ| = {max_d:.6g}, {n_diff:,} values differ"
            if n_diff
            else (f"column `{name}`: {dtype}values equal" if dtype else None)
        )
    xs, ys = text_cells(a, ctx.old_prefixes), text_cells(b, ctx.new_prefixes)
    rows = [i for i, (x, y) in enumerate(zip(xs, ys)) if not same_value(x, y)]
    if not rows:
        return f"column `{name}`: {dtype}values equal" if dtype else None
    i = rows[0]
    return f"column `{name}`: {dtype}{len(rows):,} values differ (first at row {i}: {short(xs[i], 40)} → {short(ys[i], 40)})"


def compare_table(old: Path, new: Path, ctx: Context) -> list[str]:
    a, b = read_table(old), read_table(new)
    diffs = [f"column `{c}` only in old" for c in a.columns if c not in b.columns]
    diffs += [f"column `{c}` only in new" for c in b.columns if c not in a.columns]
    common = [c for c in a.columns if c in b.columns]
    if not diffs and list(a.columns) != list(b.columns):
        diffs.append("column order differs")
    n = min(len(a), len(b))
    if len(a) != len(b):
        diffs.append(f"rows: {len(a):,} → {len(b):,} (values compared over the first {n:,})")
    for c in common:
        line = compare_column(str(c), a[c].iloc[:n].reset_index(drop=True), b[c].iloc[:n].reset_index(drop=True), ctx)
        diffs += [line] if line else []
    return diffs


# ---------------------------------------------------------------- json


def json_close(x: Any, y: Any, ctx: Context) -> bool:
    numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (x, y))
    if not numbers:
        return type(x) is type(y) and x == y
    if x == y or (isinstance(x, float) and isinstance(y, float) and math.isnan(x) and math.isnan(y)):
        return True
    return not ctx.exact and abs(x - y) <= ctx.atol + ctx.rtol * abs(y)


def json_diffs(x: Any, y: Any, path: str, ctx: Context) -> Iterable[str]:
    """Paths (``config.token_dataset``, ``files[2]``) where two parsed JSON values differ."""
    if isinstance(x, dict) and isinstance(y, dict):
        for k in sorted(x.keys() | y.keys(), key=str):
            sub = f"{path}.{k}" if path else str(k)
            if k in ctx.ignore_keys or sub in ctx.ignore_keys:
                continue
            if k not in y:
                yield f"`{sub}` only in old: {short(x[k])}"
            elif k not in x:
                yield f"`{sub}` only in new: {short(y[k])}"
            else:
                yield from json_diffs(x[k], y[k], sub, ctx)
    elif isinstance(x, list) and isinstance(y, list):
        if len(x) != len(y):
            yield f"`{path or '$'}`: length {len(x)} → {len(y)}"
        for i, (u, v) in enumerate(zip(x, y)):
            yield from json_diffs(u, v, f"{path}[{i}]", ctx)
    elif not json_close(x, y, ctx):
        yield f"`{path or '$'}`: {short(x)} → {short(y)}"


def compare_json(old: Path, new: Path, ctx: Context) -> list[str]:
    a = normalise(json.loads(old.read_text()), ctx.old_prefixes)
    b = normalise(json.loads(new.read_text()), ctx.new_prefixes)
    return list(json_diffs(a, b, "", ctx))


# ---------------------------------------------------------------- files and trees

COMPARATORS: dict[str, Callable[[Path, Path, Context], list[str]]] = {
    "tensors": compare_tensor_file,
    "tables": compare_table,
    "json": compare_json,
}


def compare_file(rel: str, old: Path, new: Path, ctx: Context) -> FileResult:
    kind = kind_of(old)
    if sha256(old) == sha256(new):
        return FileResult(rel, kind)
    bytes_line = f"bytes differ ({old.stat().st_size:,} → {new.stat().st_size:,} bytes)"
    comparator = COMPARATORS.get(kind)
    if comparator is None:
        return FileResult(rel, kind, [bytes_line])
    try:
        return FileResult(rel, kind, comparator(old, new, ctx))
    except Exception as e:  # unreadable as its kind: say so, and fall back to the bytes
        return FileResult(
            rel, kind, [f"could not compare as {kind} ({type(e).__name__}: {short(str(e), 120)}); {bytes_line}"]
        )


def list_files(folder: Path, root: Path) -> dict[str, Path]:
    return {p.relative_to(root).as_posix(): p for p in sorted(folder.rglob("*")) if p.is_file()}


def compare_trees(
    old: Path,
    new: Path,
    folders: Iterable[str] = DEFAULT_FOLDERS,
    rtol: float = 0.0,
    atol: float = 0.0,
    ignore_keys: Iterable[str] = (),
) -> Report:
    old, new, folders = Path(old), Path(new), tuple(folders)
    ignore = VOLATILE_KEYS | frozenset(ignore_keys)
    ctx = Context(rtol, atol, ignore, root_prefixes(old), root_prefixes(new))
    report = Report(old, new, folders, rtol, atol, ignore)
    for name in folders:
        a, b = old / name, new / name
        if not a.is_dir() and not b.is_dir():
            continue
        files_a = list_files(a, old) if a.is_dir() else {}
        files_b = list_files(b, new) if b.is_dir() else {}
        if not (a.is_dir() and b.is_dir()):
            side, n = ("old", len(files_a)) if a.is_dir() else ("new", len(files_b))
            report.folder_notes.append(f"`{name}/` exists only in {side} ({n:,} file(s))")
        report.only_old += sorted(files_a.keys() - files_b.keys())
        report.only_new += sorted(files_b.keys() - files_a.keys())
        report.results += [
            compare_file(rel, files_a[rel], files_b[rel], ctx) for rel in sorted(files_a.keys() & files_b.keys())
        ]
    return report


# ---------------------------------------------------------------- report


def summary_table(report: Report) -> list[str]:
    rows = [("files compared", len(report.results)), ("identical", sum(r.identical for r in report.results))]
    rows += [(f"differing: {k}", len(report.differing(k))) for k in KINDS]
    rows += [("only in old", len(report.only_old)), ("only in new", len(report.only_new))]
    return ["| | files |", "|---|---:|"] + [f"| {label} | {n:,} |" for label, n in rows]


def render_markdown(report: Report) -> str:
    tol = "exact" if report.rtol == 0 and report.atol == 0 else f"rtol={report.rtol:g}, atol={report.atol:g}"
    lines = [
        "# Output comparison",
        "",
        f"- old: `{report.old_root}`",
        f"- new: `{report.new_root}`",
        f"- folders: {', '.join(report.folders)}",
        f"- tolerance: {tol}",
        f"- ignored JSON keys: {', '.join(sorted(report.ignore_keys))}",
        "",
        "## Summary",
        "",
    ]
    lines += summary_table(report)
    verdict = "data differences found" if report.has_data_diff else "no data differences"
    lines += ["", f"**Result: {verdict}.**"]
    if report.folder_notes:
        lines += ["", "## Folders on one side only", ""] + [f"- {n}" for n in report.folder_notes]
    data = [r for r in report.differing() if r.kind != "rendering"]
    if data:
        lines += ["", "## Data differences"]
        for r in data:
            lines += ["", f"### `{r.path}` ({r.kind})", ""] + [f"- {d}" for d in capped(r.diffs, MAX_ITEMS)]
    rendering = report.differing("rendering")
    if rendering:
        lines += ["", "## Rendering differences", "", "Images, pages and notebooks embed timestamps; bytes only.", ""]
        lines += [f"- `{r.path}`: {r.diffs[0]}" for r in rendering]
    for title, paths in (("Only in old", report.only_old), ("Only in new", report.only_new)):
        if paths:
            lines += ["", f"## {title}", ""] + [
                f"- `{p}`" if not p.startswith("...") else f"- {p}" for p in capped(paths, MAX_PATHS)
            ]
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("old_root", type=Path)
    parser.add_argument("new_root", type=Path)
    parser.add_argument("--folders", default=",".join(DEFAULT_FOLDERS), help="comma-separated top-level folders")
    parser.add_argument("--rtol", type=float, default=0.0)
    parser.add_argument("--atol", type=float, default=0.0)
    parser.add_argument("--out", type=Path, help="also write the Markdown report here")
    parser.add_argument(
        "--ignore-key",
        action="append",
        default=[],
        metavar="KEY",
        help="extra JSON key name or dotted path to ignore (repeatable)",
    )
    parser.add_argument("--fail-on-diff", action="store_true", help="exit 1 when a data difference exists")
    args = parser.parse_args(argv)
    args.folders = [f.strip() for f in args.folders.split(",") if f.strip()]
    for root in (args.old_root, args.new_root):
        if not root.is_dir():
            parser.error(f"{root} is not a directory")
    if not args.folders:
        parser.error("--folders is empty")
    if args.rtol < 0 or args.atol < 0:
        parser.error("--rtol and --atol must be >= 0")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    report = compare_trees(args.old_root, args.new_root, args.folders, args.rtol, args.atol, args.ignore_key)
    text = render_markdown(report)
    print(text, end="")
    if args.out:
        args.out.write_text(text)
    return 1 if args.fail_on_diff and report.has_data_diff else 0


if __name__ == "__main__":
    sys.exit(main())
