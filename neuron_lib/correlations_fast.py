"""Cross-seed streaming neuron correlations with baselines (paper §2; rebuild of ``correlations_fast.py``).

One pass over a token dataset correlates every MLP neuron (all layers, flat index ``l*d_mlp + n``) of a
reference model with every neuron of each other model, plus the requested baselines:

- ``none`` (always computed): the real correlation;
- ``rotation``: the other model's neuron basis rotated per layer by a seeded Haar-random orthogonal
  matrix (QR of a Gaussian with the sign fix). By default (``rotation_method="covariance"``) it costs no
  extra per-token matmul against the reference: the co-moment with rotated neurons is ``C R^T`` and
  their variances are ``diag(R W R^T)`` with ``W`` the other model's within-layer covariance, which the
  pass accumulates. ``--n-rotations K`` draws K rotations, giving each reference neuron a null
  distribution of baseline max-correlations (``rotation_z``, ``rotation_p`` in the table);
- ``gaussian``: the other model's activations replaced by gelu(N(0,1)) noise (seeded per batch);
- ``permutation``: the other model's tokens shuffled within each batch (seeded per batch).

Numerics: per batch, activations are centred on their batch mean, the centred cross-product is one fp32
GEMM, and the result is merged into float64 co-moments with Chan et al.'s parallel update (plus the exact
correction for the fp32 rounding of the subtracted mean). Zero-variance neurons get correlation 0 and a
``dead`` flag, never NaN.

Layout and file formats: docs/correlations.md. CLI: ``python -m neuron_lib.correlations_fast --help``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from neuron_lib import artifacts, criteria, stage
from neuron_lib.common import (
    NeuronLibError,
    atomic_write_json,
    config_field,
    config_fingerprint,
    config_from_args,
    config_parser,
    human_bytes,
    load_tensors,
    make_manifest,
    parse_memory,
    pick_device,
    read_json,
    run_cli,
    save_dataframe_atomic,
    save_tensors_atomic,
    write_manifest,
)
from neuron_lib.models import model_output_name
from neuron_lib.stats import N_COSINE_EDGES, cosine_edges, histogram_counts, moments_from_power_sums

STAGE = "correlations"
SIMILARITIES = ("pearson", "cosine", "jaccard")
BASELINES = ("none", "gaussian", "permutation", "rotation")
ROTATION_METHODS = ("auto", "covariance", "activations")
N_TAIL = 50  # top-/bottom-k kept per row (paper: 50)
REL_DEAD_TOL = 2e-7  # a neuron is dead if std <= REL_DEAD_TOL*|mean| + ABS_DEAD_TOL (fp32 resolution)
ABS_DEAD_TOL = 1e-12
_CHUNK_ELEMS = 1 << 21  # elements per chunk in finalisation / summaries (bounds temporaries)
_GEMM_BUF_ELEMS = 1 << 25  # the per-batch GEMM result is produced in column chunks of at most this many elements
_MIN_COL_CHUNK = 256  # ... but at least this many columns (GEMM efficiency)
_TEMP_BYTES_PER_ELEM = 48  # temporaries per chunk element (f64 copies, int64 bins...)
_SUMMARY_ROW_BYTES = 2 * N_TAIL * (4 + 8) + (N_COSINE_EDGES + 1) * 8 + 80  # one row of a SummaryAccumulator


# =============================================================================== configuration
@dataclass
class CorrelationConfig:
    """Everything that defines a correlation run. ``validate()`` checks it and fills derived defaults."""

    reference_model: str = config_field("", "reference model (name, zoo name or local folder)")
    other_models: list[str] = config_field([], "comma-separated other models (other seeds)")
    token_dataset: str = config_field("", "token dataset folder (neuron_lib.corpus layout)")
    baseline: list[str] = config_field(
        ["rotation"], "comma-separated baselines from none,gaussian,permutation,rotation (none is always computed)"
    )
    similarity: str = config_field("pearson", "pearson | cosine | jaccard")
    jaccard_threshold: float = config_field(0.0, "jaccard: a neuron is active when activation > this")
    n_rotations: int = config_field(1, "independent seeded rotations per other model (null distribution)")
    rotation_method: str = config_field(
        "auto",
        "covariance (exact, no per-token cost per rotation) | activations "
        "(rotate activations each batch) | auto (covariance, activations for "
        "jaccard)",
    )
    batch_size: int = config_field(24, "dataset rows per forward pass")
    max_tokens: int | None = config_field(None, "use the first ceil(max_tokens/ctx) rows (default: all)")
    device: str = config_field("auto", "auto | cpu | cuda[:i]")
    max_memory: str = config_field("auto", "budget for accumulators, e.g. 4GB, 512MiB; auto: half the free memory")
    checkpoint_every: int = config_field(200, "batches between checkpoints (0: never)")
    seed: int = config_field(0, "seed of every baseline's randomness")
    universal_threshold: float = config_field(
        criteria.UNIVERSAL_THRESHOLD, "universal iff excess_corr > this (paper 0.5)"
    )
    min_models: int | None = config_field(
        None, "also require max_corr-baseline > threshold in this many models (default 1 = paper)"
    )
    z_threshold: float = config_field(
        criteria.Z_THRESHOLD, "is_universal_z iff mean rotation z > this (and min_models models with z > this)"
    )
    matmul_dtype: str = config_field("float32", "dtype of the per-batch GEMM: float32 | float64")
    save_full_matrix: bool = config_field(False, "also save the full correlation matrix")
    save_precision: int = config_field(16, "full matrix precision: 32 | 16 | 8 (uint8 on [-1, 1])")
    block_rows: int | None = config_field(None, "advanced: reference rows per pass (default: from --max-memory)")
    overwrite: bool = config_field(False, "replace outputs of another configuration (or corrupt ones)")
    keep_checkpoint: bool = config_field(False, "keep the checkpoint folder after success")
    progress: bool = config_field(True, "show a progress bar (--no-progress to hide)")

    def __post_init__(self):
        for name in ("other_models", "baseline"):
            value = getattr(self, name)
            if isinstance(value, str):
                setattr(self, name, [v.strip() for v in value.split(",") if v.strip()])
            else:
                setattr(self, name, list(value))

    def validate(self) -> CorrelationConfig:
        if not self.reference_model:
            raise NeuronLibError("--reference-model is required")
        if not self.other_models:
            raise NeuronLibError("--other-models is required (comma-separated, e.g. b,c,d,e)")
        if self.reference_model in self.other_models:
            raise NeuronLibError("the reference model cannot also be one of --other-models")
        if len(set(self.other_models)) != len(self.other_models):
            raise NeuronLibError(f"--other-models lists a model twice: {self.other_models}")
        if not self.token_dataset:
            raise NeuronLibError("--token-dataset is required")
        if self.similarity not in SIMILARITIES:
            raise NeuronLibError(f"--similarity {self.similarity!r}: choose from {SIMILARITIES}")
        bad = [b for b in self.baseline if b not in BASELINES]
        if bad:
            raise NeuronLibError(f"unknown baseline(s) {bad}: choose from {BASELINES}")
        self.baseline = [b for b in BASELINES if b in self.baseline and b != "none"]  # canonical order
        if self.n_rotations < 1:
            raise NeuronLibError("--n-rotations must be >= 1")
        if self.rotation_method not in ROTATION_METHODS:
            raise NeuronLibError(f"--rotation-method {self.rotation_method!r}: choose from {ROTATION_METHODS}")
        if self.similarity == "jaccard" and self.rotation_method == "covariance":
            raise NeuronLibError(
                "jaccard is not bilinear: the rotation baseline needs --rotation-method activations (or auto)"
            )
        if self.batch_size < 1:
            raise NeuronLibError("--batch-size must be >= 1")
        if self.max_tokens is not None and self.max_tokens < 1:
            raise NeuronLibError("--max-tokens must be >= 1")
        if self.checkpoint_every < 0:
            raise NeuronLibError("--checkpoint-every must be >= 0")
        if self.save_precision not in (8, 16, 32):
            raise NeuronLibError("--save-precision must be 8, 16 or 32")
        if self.matmul_dtype not in ("float32", "float64"):
            raise NeuronLibError("--matmul-dtype must be float32 or float64")
        if self.block_rows is not None and self.block_rows < 1:
            raise NeuronLibError("--block-rows must be >= 1")
        if self.min_models is None:
            self.min_models = 1  # mean excess > t implies one model with excess > t: 1 is the paper's criterion
        if not 0 <= self.min_models <= len(self.other_models):
            raise NeuronLibError(f"--min-models must be in [0, {len(self.other_models)}]")
        parse_memory(self.max_memory)  # raises on a malformed budget
        return self

    @property
    def resolved_rotation_method(self) -> str:
        if self.rotation_method == "auto":
            return "activations" if self.similarity == "jaccard" else "covariance"
        return self.rotation_method

    @property
    def simtype(self) -> str:
        """Folder prefix: ``pearson``, ``cosine`` or ``jaccard-{threshold:.2f}`` (as the original)."""
        return f"jaccard-{self.jaccard_threshold:.2f}" if self.similarity == "jaccard" else self.similarity


def derive_seed(*parts: Any) -> int:
    """A 63-bit seed from any parts (stable across runs, processes and machines)."""
    digest = hashlib.sha256("/".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def random_rotation(
    d: int, seed: int, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float64
) -> torch.Tensor:
    """Haar-random orthogonal [d, d]: QR of a seeded Gaussian (drawn on the CPU), columns sign-fixed by diag(R)."""
    gen = torch.Generator(device="cpu").manual_seed(int(seed))
    g = torch.randn(d, d, generator=gen, dtype=torch.float64).to(device)
    if g.device.type == "cpu" and d <= 2048:
        # LAPACK's blocked QR synchronises its threads many times; for moderate d one thread is as fast when the
        # machine is idle and 5-20x faster when other processes load the cores (measured: d=512, 36 ms vs 760 ms)
        n_threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            q, r = torch.linalg.qr(g)
        finally:
            torch.set_num_threads(n_threads)
    else:
        q, r = torch.linalg.qr(g)
    sign = torch.sign(torch.diagonal(r))
    sign[sign == 0] = 1
    return (q * sign[None, :]).to(dtype)


def rotation_seed(seed: int, other: str, k: int, layer: int) -> int:
    return derive_seed(seed, "rotation", other, k, layer)


@dataclass
class Prepared:
    """One batch of one model's activations, ready for the cross-moment GEMM."""

    T: int
    x: torch.Tensor  # [N, T] GEMM operand: centred (pearson), raw (cosine) or 0/1 (jaccard)
    mean: torch.Tensor | None  # f64 [N] exact batch mean (pearson)
    err: torch.Tensor | None  # f64 [N] batch mean of x (= exact mean - the shift subtracted; pearson)
    stat: torch.Tensor  # f64 [N]: M2 about the batch mean (pearson), sum x^2 (cosine), active count (jaccard)

    def permuted(self, perm: torch.Tensor) -> Prepared:
        return Prepared(self.T, self.x[:, perm], self.mean, self.err, self.stat)


def prepare_activations(
    x: torch.Tensor,
    similarity: str = "pearson",
    jaccard_threshold: float = 0.0,
    matmul_dtype: torch.dtype = torch.float32,
    out: torch.Tensor | None = None,
) -> Prepared:
    """Per-batch statistics of ``x`` [N, T] and the GEMM operand (see ``Prepared``).

    The GEMM operand is written to ``out`` (same shape; may be ``x`` itself to centre in place) or a new tensor.
    Row reductions run in the GEMM dtype with torch's cascade summation (relative error ~1e-7 in fp32) and are
    then promoted: the shift only has to be close to the mean, and what the shift misses is measured exactly
    enough by ``err`` and corrected in the co-moment update.
    """
    x = x.to(matmul_dtype)
    T = int(x.shape[1])
    if out is None:
        out = torch.empty_like(x)
    if similarity == "pearson":
        shift = x.sum(1) / max(T, 1)
        torch.sub(x, shift[:, None], out=out)
        s1 = out.sum(1).double()
        err = s1 / max(T, 1)
        m2 = (torch.linalg.vector_norm(out, dim=1).double().square() - s1 * err).clamp_min_(0)
        return Prepared(T, out, shift.double() + err, err, m2)
    if similarity == "cosine":
        if out is not x:
            out.copy_(x)
        return Prepared(T, out, None, None, torch.linalg.vector_norm(x, dim=1).double().square())
    if similarity == "jaccard":
        out.copy_(x > jaccard_threshold)
        return Prepared(T, out, None, None, out.sum(1, dtype=torch.float64))
    raise ValueError(f"unknown similarity {similarity!r}")


def dead_mask(similarity: str, n: int, mean: torch.Tensor, stat: torch.Tensor) -> torch.Tensor:
    if n == 0:
        return torch.ones_like(stat, dtype=torch.bool)
    if similarity == "pearson":
        std = (stat / n).clamp_min(0).sqrt()
        return std <= REL_DEAD_TOL * mean.abs() + ABS_DEAD_TOL
    if similarity == "cosine":
        return (stat / n).clamp_min(0).sqrt() <= ABS_DEAD_TOL
    return stat <= 0  # jaccard: never active


def symmetric_blocks(d: int) -> list[tuple[slice, slice]]:
    """Blocks of a symmetric [d, d] product to compute: all of it for narrow layers; for wide ones only the
    upper blocks 11, 12, 22 (the caller mirrors 12), which is 3/4 of the GEMM work."""
    if d < 256:
        return [(slice(0, d), slice(0, d))]
    h = d // 2
    return [(slice(0, h), slice(0, h)), (slice(0, h), slice(h, d)), (slice(h, d), slice(h, d))]


def covariance_buffers(n_layers: int, d: int, dtype: torch.dtype, device) -> list[torch.Tensor]:
    return [
        torch.empty(n_layers, rs.stop - rs.start, cs.stop - cs.start, dtype=dtype, device=device)
        for rs, cs in symmetric_blocks(d)
    ]


class StreamingCorrelation:
    """Streaming similarity between rows of ``a_ref`` [N1, T] and ``a_other`` [N2, T], batch after batch.

    ``rows=(r0, r1)`` keeps the cross-moment only for reference rows [r0, r1) (row blocking); reference and
    other per-neuron moments are always kept in full. ``other_layer_size=d`` also accumulates the other
    model's within-layer covariance ``W [N2/d, d, d]`` so that ``finalize_rotated`` gives the exact
    correlation against per-layer rotated other neurons without any per-token cost.

    State is float64: ``n``, per-neuron ``mean`` and ``stat`` (Chan M2 / sum of squares / active count),
    the cross-moment ``C`` and ``W``.
    """

    def __init__(
        self,
        n_ref: int,
        n_other: int,
        *,
        similarity: str = "pearson",
        jaccard_threshold: float = 0.0,
        rows: tuple[int, int] | None = None,
        other_layer_size: int | None = None,
        device: str | torch.device = "cpu",
        matmul_dtype: torch.dtype = torch.float32,
    ):
        if similarity not in SIMILARITIES:
            raise ValueError(f"unknown similarity {similarity!r}")
        self.similarity, self.jaccard_threshold = similarity, float(jaccard_threshold)
        self.n_ref, self.n_other = int(n_ref), int(n_other)
        self.rows = (0, self.n_ref) if rows is None else (int(rows[0]), int(rows[1]))
        if not 0 <= self.rows[0] < self.rows[1] <= self.n_ref:
            raise ValueError(f"rows {self.rows} outside [0, {self.n_ref})")
        self.device, self.matmul_dtype = torch.device(device), matmul_dtype
        f64 = dict(dtype=torch.float64, device=self.device)
        self.n = 0
        self.ref_mean, self.ref_stat = torch.zeros(self.n_ref, **f64), torch.zeros(self.n_ref, **f64)
        self.oth_mean, self.oth_stat = torch.zeros(self.n_other, **f64), torch.zeros(self.n_other, **f64)
        self.C = torch.zeros(self.rows[1] - self.rows[0], self.n_other, **f64)
        self.layer_size = other_layer_size
        self.W = None
        if other_layer_size:
            if self.n_other % other_layer_size:
                raise ValueError(f"n_other={n_other} is not a multiple of other_layer_size={other_layer_size}")
            L = self.n_other // other_layer_size
            self.W = torch.zeros(L, other_layer_size, other_layer_size, **f64)
        self._buf: torch.Tensor | None = None  # flat fp32 GEMM buffer, may be shared between instances
        self._wbuf: list[torch.Tensor] | None = None
        r = self.rows[1] - self.rows[0]
        self.col_chunk = (
            self.n_other if r * self.n_other <= _GEMM_BUF_ELEMS else max(_MIN_COL_CHUNK, _GEMM_BUF_ELEMS // r)
        )

    @classmethod
    def from_moments(
        cls,
        n: int,
        ref: tuple[torch.Tensor, torch.Tensor],
        oth: tuple[torch.Tensor, torch.Tensor],
        C: torch.Tensor,
        W: torch.Tensor | None = None,
    ) -> StreamingCorrelation:
        """A pearson accumulator over finished moments — ``ref`` / ``oth`` = (mean, M2), ``C`` the co-moment,
        ``W`` [L, d, d] the other's within-layer co-moments — so ``finalize`` / ``finalize_rotated`` apply to
        moments gathered elsewhere (the all-pairs run) without allocating new ones."""
        sc = cls.__new__(cls)
        sc.similarity, sc.jaccard_threshold = "pearson", 0.0
        sc.n_ref, sc.n_other = int(C.shape[0]), int(C.shape[1])
        sc.rows, sc.device, sc.matmul_dtype = (0, sc.n_ref), C.device, torch.float32
        sc.n, sc.C, sc.W = int(n), C, W
        sc.ref_mean, sc.ref_stat = ref
        sc.oth_mean, sc.oth_stat = oth
        sc.layer_size = None if W is None else int(W.shape[1])
        sc._buf, sc._wbuf, sc.col_chunk = None, None, sc.n_other
        return sc

    # ------------------------------------------------------------------ updates
    def prepare(self, x: torch.Tensor, out: torch.Tensor | None = None) -> Prepared:
        return prepare_activations(
            x.to(self.device), self.similarity, self.jaccard_threshold, self.matmul_dtype, out=out
        )

    def update(self, a_ref: torch.Tensor, a_other: torch.Tensor) -> None:
        """Add one batch: ``a_ref`` [N1, T], ``a_other`` [N2, T] (same tokens, same order)."""
        if a_ref.shape[0] != self.n_ref or a_other.shape[0] != self.n_other or a_ref.shape[1] != a_other.shape[1]:
            raise ValueError(
                f"shapes {tuple(a_ref.shape)} / {tuple(a_other.shape)} do not match "
                f"[{self.n_ref}, T] / [{self.n_other}, T]"
            )
        self.update_prepared(self.prepare(a_ref), self.prepare(a_other))

    def update_prepared(self, ref: Prepared, oth: Prepared) -> None:
        T = ref.T
        if oth.T != T:
            raise ValueError("reference and other batches have different token counts")
        if T == 0:
            return
        r0, r1 = self.rows
        n_old = self.n
        n_new = n_old + T
        coef = n_old * T / n_new
        r, w = r1 - r0, self.col_chunk
        if self._buf is None or self._buf.numel() < r * min(w, self.n_other):
            self._buf = torch.empty(r * min(w, self.n_other), dtype=self.matmul_dtype, device=self.device)
        pearson = self.similarity == "pearson"
        if pearson:
            # Chan merge: C += C_batch + n_old*T/n_new * da db^T; C_batch about the exact batch means
            # = xc_a xc_b^T - T * err_a err_b^T (the shift subtracted was the fp32-rounded mean).
            da = ref.mean[r0:r1] - self.ref_mean[r0:r1]
            db = oth.mean - self.oth_mean
            U, V = torch.stack([da * coef, ref.err[r0:r1] * (-T)], 1), torch.stack([db, oth.err], 0)
        xa = ref.x[r0:r1]
        for c0 in range(0, self.n_other, w):
            c1 = min(c0 + w, self.n_other)
            buf = self._buf[: r * (c1 - c0)].view(r, c1 - c0)
            torch.mm(xa, oth.x[c0:c1].T, out=buf)
            block = self.C if (c0 == 0 and c1 == self.n_other) else self.C[:, c0:c1]
            block.add_(buf)
            if pearson:
                block.addmm_(U, V[:, c0:c1])
        if self.W is not None:
            L, d = self.W.shape[0], self.W.shape[1]
            xl = oth.x.view(L, d, T)
            parts = symmetric_blocks(d)
            if self._wbuf is None:
                self._wbuf = covariance_buffers(L, d, self.matmul_dtype, self.device)
            for (rs, cs), buf in zip(parts, self._wbuf):
                torch.bmm(xl[:, rs], xl[:, cs].transpose(1, 2), out=buf)
                self.W[:, rs, cs].add_(buf)
                if rs != cs:
                    self.W[:, cs, rs].add_(buf.transpose(1, 2))
            if pearson:
                u = torch.stack([db * coef, oth.err * (-T)], 1).view(L, d, 2)
                v = torch.stack([db, oth.err], 0).view(2, L, d).transpose(0, 1)
                self.W.baddbmm_(u, v)
        self._merge_moments(self.ref_mean, self.ref_stat, ref, n_old)
        self._merge_moments(self.oth_mean, self.oth_stat, oth, n_old)
        self.n = n_new

    def _merge_moments(self, mean: torch.Tensor, stat: torch.Tensor, prep: Prepared, n_old: int) -> None:
        if self.similarity == "pearson":
            n_new = n_old + prep.T
            delta = prep.mean - mean
            stat.add_(prep.stat + delta * delta * (n_old * prep.T / n_new))
            mean.add_(delta * (prep.T / n_new))
        else:
            stat.add_(prep.stat)

    def merge_(self, other: StreamingCorrelation) -> StreamingCorrelation:
        """Add an accumulator of the same shape over disjoint tokens, in place (Chan et al.'s pairwise merge:
        ``C = C1 + C2 + n1 n2 / n · δa δbᵀ``, the same for ``W`` and the moments); split-half runs merge their
        halves with it."""
        if (self.rows, self.n_other, self.similarity) != (other.rows, other.n_other, other.similarity):
            raise ValueError("merge_ needs accumulators of the same rows, columns and similarity")
        n1, n2 = self.n, other.n
        n = n1 + n2
        if n2 == 0:
            return self
        if self.similarity == "pearson" and n1 > 0:
            r0, r1 = self.rows
            coef = n1 * n2 / n
            da, db = other.ref_mean - self.ref_mean, other.oth_mean - self.oth_mean
            self.C.add_(other.C).addr_(da[r0:r1], db, alpha=coef)
            if self.W is not None:
                L, d = self.W.shape[0], self.W.shape[1]
                dbl = db.view(L, d)
                self.W.add_(other.W).add_(coef * dbl[:, :, None] * dbl[:, None, :])
            for mean, stat, ostat, delta in (
                (self.ref_mean, self.ref_stat, other.ref_stat, da),
                (self.oth_mean, self.oth_stat, other.oth_stat, db),
            ):
                stat.add_(ostat + delta * delta * coef)
                mean.add_(delta * (n2 / n))
        else:
            for key in ("C", "W", "ref_stat", "oth_stat"):
                mine, theirs = getattr(self, key), getattr(other, key)
                if mine is not None:
                    mine.add_(theirs)
            if self.similarity == "pearson":  # n1 == 0: take the other's means
                self.ref_mean.copy_(other.ref_mean)
                self.oth_mean.copy_(other.oth_mean)
        self.n = n
        return self

    # ------------------------------------------------------------------ results
    @property
    def dead_ref(self) -> torch.Tensor:
        return dead_mask(self.similarity, self.n, self.ref_mean, self.ref_stat)

    @property
    def dead_other(self) -> torch.Tensor:
        return dead_mask(self.similarity, self.n, self.oth_mean, self.oth_stat)

    def _inv_scale(self, stat: torch.Tensor, dead: torch.Tensor) -> torch.Tensor:
        return torch.where(dead, torch.zeros_like(stat), stat.clamp_min(1e-300).rsqrt())

    def _normalise(
        self, c: torch.Tensor, rows: slice, cols: slice, oth_stat: torch.Tensor, oth_dead: torch.Tensor
    ) -> torch.Tensor:
        """f64 co-moment chunk -> similarity (f64, dead -> 0, clamped)."""
        if self.similarity == "jaccard":
            union = self.ref_stat[rows][:, None] + oth_stat[cols][None, :] - c
            out = torch.where(union > 0, c / union.clamp_min(1), torch.zeros_like(c))
        else:
            ia = self._inv_scale(self.ref_stat[rows], self.dead_ref[rows])
            ib = self._inv_scale(oth_stat[cols], oth_dead[cols])
            out = torch.mul(c, ia[:, None]).mul_(ib[None, :])
        return out.clamp_(-1.0, 1.0)

    def finalize(self, out: torch.Tensor | None = None) -> torch.Tensor:
        """Similarity of reference rows ``rows`` vs all other neurons: float32 [r1-r0, N2]."""
        r0, r1 = self.rows
        out = torch.empty(r1 - r0, self.n_other, dtype=torch.float32, device=self.device) if out is None else out
        dead_b = self.dead_other
        step = max(1, _CHUNK_ELEMS // max(1, self.n_other))
        for i in range(0, r1 - r0, step):
            j = min(i + step, r1 - r0)
            out[i:j] = self._normalise(self.C[i:j], slice(r0 + i, r0 + j), slice(None), self.oth_stat, dead_b)
        return out

    def rotated_other_stats(self, layer: int, R: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(stat, mean) of the rotated neurons R @ b_l of one layer (R: [d, d] float64)."""
        if self.W is None:
            raise RuntimeError("construct with other_layer_size to use rotations")
        d = self.layer_size
        sl = slice(layer * d, (layer + 1) * d)
        stat = ((R @ self.W[layer]) * R).sum(1)
        if self.similarity == "pearson":
            stat = stat.clamp_min(0)
        mean = R @ self.oth_mean[sl]
        return stat, mean

    def finalize_rotated(
        self, rotation: Callable[[int], torch.Tensor] | torch.Tensor, out: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Exact similarity against the other model's neurons rotated per layer: ``b'_l = R_l b_l``.

        ``rotation``: a [L, d, d] tensor or a function layer -> R_l [d, d] (float64). Returns
        (float32 [r1-r0, N2], dead mask of the rotated other neurons [N2]). Not available for jaccard.
        """
        if self.similarity == "jaccard":
            raise RuntimeError("jaccard is not bilinear: rotate the activations instead")
        if self.W is None:
            raise RuntimeError("construct with other_layer_size to use rotations")
        get = (lambda l: rotation[l]) if isinstance(rotation, torch.Tensor) else rotation
        r0, r1 = self.rows
        L, d = self.W.shape[0], self.W.shape[1]
        out = torch.empty(r1 - r0, self.n_other, dtype=torch.float32, device=self.device) if out is None else out
        dead_all = torch.zeros(self.n_other, dtype=torch.bool, device=self.device)
        step = max(1, _CHUNK_ELEMS // max(1, d))
        for layer in range(L):
            R = get(layer).to(device=self.device, dtype=torch.float64)
            stat, mean = self.rotated_other_stats(layer, R)
            dead = dead_mask(self.similarity, self.n, mean, stat)
            sl = slice(layer * d, (layer + 1) * d)
            dead_all[sl] = dead
            for i in range(0, r1 - r0, step):
                j = min(i + step, r1 - r0)
                c = self.C[i:j, sl] @ R.T
                out[i:j, sl] = self._normalise(c, slice(r0 + i, r0 + j), slice(None), stat, dead)
        return out, dead_all

    # ------------------------------------------------------------------ checkpoint state
    def state_dict(self) -> dict[str, torch.Tensor]:
        state = {
            "n": torch.tensor([self.n], dtype=torch.int64),
            "ref_mean": self.ref_mean,
            "ref_stat": self.ref_stat,
            "oth_mean": self.oth_mean,
            "oth_stat": self.oth_stat,
            "C": self.C,
        }
        if self.W is not None:
            state["W"] = self.W
        return state

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        self.n = int(state["n"][0])
        for key in ("ref_mean", "ref_stat", "oth_mean", "oth_stat", "C") + (("W",) if self.W is not None else ()):
            target = getattr(self, key)
            if tuple(state[key].shape) != tuple(target.shape):
                raise NeuronLibError(
                    f"checkpoint tensor {key} has shape {tuple(state[key].shape)}, expected {tuple(target.shape)}"
                )
            target.copy_(state[key])


# =============================================================================== summaries (spec §2.4)
class SummaryAccumulator:
    """Summary of a [R, K] correlation matrix fed in pieces ``add(part, row_start, col_start)``.

    Per row: max/argmax, min/argmin, top-/bottom-k values and (flat column) indices (ties in unspecified
    order), a 101-bin histogram on edges linspace(-1, 1, 100) with the paper's left-searchsorted rule,
    population mean/var/skew and (non-excess) kurtosis from shifted power sums (fp32 cascade sums per
    piece, float64 across pieces); plus C[i, i] and C[i, i+1].
    Columns of one row may arrive in several pieces (in increasing column order).
    """

    FIELDS = (
        "max_val",
        "max_ix",
        "min_val",
        "min_ix",
        "top_val",
        "top_ix",
        "bot_val",
        "bot_ix",
        "bins",
        "shift",
        "count",
        "p1",
        "p2",
        "p3",
        "p4",
        "diag",
        "obo",
    )

    def __init__(self, n_rows: int, n_cols: int, k: int = N_TAIL, device: str | torch.device = "cpu"):
        self.n_rows, self.n_cols, self.k = int(n_rows), int(n_cols), int(min(k, n_cols))
        dev = torch.device(device)
        self.device = dev
        f32, i64, f64 = (
            dict(dtype=torch.float32, device=dev),
            dict(dtype=torch.int64, device=dev),
            dict(dtype=torch.float64, device=dev),
        )
        self.edges = cosine_edges(torch.float32).to(dev)  # correctly rounded edges
        self.max_val = torch.full((n_rows,), -math.inf, **f32)
        self.max_ix = torch.zeros(n_rows, **i64)
        self.min_val = torch.full((n_rows,), math.inf, **f32)
        self.min_ix = torch.zeros(n_rows, **i64)
        self.top_val = torch.full((n_rows, self.k), -math.inf, **f32)
        self.top_ix = torch.zeros(n_rows, self.k, **i64)
        self.bot_val = torch.full((n_rows, self.k), math.inf, **f32)
        self.bot_ix = torch.zeros(n_rows, self.k, **i64)
        self.bins = torch.zeros(n_rows, N_COSINE_EDGES + 1, **i64)
        self.shift = torch.zeros(n_rows, **f64)
        self.count = torch.zeros(n_rows, **i64)
        self.p1, self.p2, self.p3, self.p4 = (torch.zeros(n_rows, **f64) for _ in range(4))
        self.diag = torch.zeros(min(n_rows, n_cols), **f32)
        self.obo = torch.zeros(max(0, min(n_rows, n_cols - 1)), **f32)

    def add(self, part: torch.Tensor, row_start: int = 0, col_start: int = 0) -> None:
        r, w = part.shape
        if w == 0 or r == 0:
            return
        step = max(1, _CHUNK_ELEMS // w)
        for i in range(0, r, step):
            self._add_chunk(part[i : i + step].to(self.device, torch.float32).contiguous(), row_start + i, col_start)

    def _add_chunk(self, x: torch.Tensor, g0: int, c0: int) -> None:
        r, w = x.shape
        rows = slice(g0, g0 + r)
        fresh = bool((self.count[rows] == 0).all())  # the usual case: the rows' first (often only) piece
        # tails; the extremes are their first entries (ties come in unspecified order)
        kk = min(self.k, w)
        for largest, vals, ixs, ext_v, ext_i in (
            (True, self.top_val, self.top_ix, self.max_val, self.max_ix),
            (False, self.bot_val, self.bot_ix, self.min_val, self.min_ix),
        ):
            tv, ti = x.topk(kk, dim=1, largest=largest, sorted=True)
            ti += c0
            if fresh and kk == self.k:
                vals[rows], ixs[rows] = tv, ti
            else:
                cat_v = torch.cat([vals[rows], tv], 1)
                nv2, order = cat_v.topk(self.k, dim=1, largest=largest, sorted=True)
                vals[rows] = nv2
                ixs[rows] = torch.cat([ixs[rows], ti], 1).gather(1, order)
            ext_v[rows], ext_i[rows] = vals[rows][:, 0], ixs[rows][:, 0]
        # histogram with the paper's rule (stats.bin_index): bin i holds edges[i-1] < v <= edges[i]
        self.bins[rows] += histogram_counts(x, self.edges)
        # shifted power sums (shift = mean of the row's first piece): per piece in fp32 with cascade summation
        # (|x - shift| <= 2, relative error ~1e-7), accumulated across pieces in float64; two temporaries
        if fresh:
            self.shift[rows] = x.mean(1).double()
        else:
            first = self.count[rows] == 0
            self.shift[rows] = torch.where(first, x.mean(1).double(), self.shift[rows])
        xd = x - self.shift[rows].float()[:, None]
        self.p1[rows] += xd.sum(1).double()
        x2 = xd.square()
        self.p2[rows] += x2.sum(1).double()
        self.p3[rows] += xd.mul_(x2).sum(1).double()
        self.p4[rows] += x2.square_().sum(1).double()
        del xd, x2
        self.count[rows] += w
        # diagonal and off-by-one
        gi = torch.arange(g0, g0 + r, device=self.device)
        for target, off in ((self.diag, 0), (self.obo, 1)):
            col = gi + off
            m = (col >= c0) & (col < c0 + w) & (gi < target.shape[0])
            if m.any():
                target[gi[m]] = x[(gi - g0)[m], (col - c0)[m]]

    def finalize(self) -> dict[str, torch.Tensor]:
        if not bool((self.count == self.n_cols).all()):
            raise RuntimeError("summary finalised before every column of every row was added")
        mom = moments_from_power_sums({0: self.count, 1: self.p1, 2: self.p2, 3: self.p3, 4: self.p4}, self.shift)
        var = mom["var"]
        ok = var > 1e-30  # a constant row (a dead neuron's zeros) gets skew = kurt = 0, not NaN
        skew = torch.where(ok, mom["skew"], torch.zeros_like(var))
        kurt = torch.where(ok, mom["kurt"], torch.zeros_like(var))
        i32 = torch.int32
        return {
            "diag_corr": self.diag.clone(),
            "obo_corr": self.obo.clone(),
            "bin_counts": self.bins.to(i32),
            "max_corr": self.max_val.clone(),
            "max_corr_ix": self.max_ix.to(i32),
            "min_corr": self.min_val.clone(),
            "min_corr_ix": self.min_ix.to(i32),
            "max_tail_corr": self.top_val.clone(),
            "max_tail_corr_ix": self.top_ix.to(i32),
            "min_tail_corr": self.bot_val.clone(),
            "min_tail_corr_ix": self.bot_ix.to(i32),
            "corr_mean": mom["mean"].float(),
            "corr_var": var.float(),
            "corr_skew": skew.float(),
            "corr_kurt": kurt.float(),
        }

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {f: getattr(self, f) for f in self.FIELDS}

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        for f in self.FIELDS:
            getattr(self, f).copy_(state[f])


def summarize_correlation_matrix(C: torch.Tensor, k: int = N_TAIL) -> dict[str, torch.Tensor]:
    """The paper's summary (spec §2.4) of a [R, K] matrix, rows = neurons of the row model. Values fp32."""
    C = torch.as_tensor(C)
    acc = SummaryAccumulator(C.shape[0], C.shape[1], k=k, device=C.device)
    acc.add(C.float(), 0, 0)
    return acc.finalize()


# =============================================================================== full-matrix I/O
def _quantise(block: torch.Tensor, bits: int) -> tuple[torch.Tensor, dict[str, str]]:
    if bits == 32:
        return block.float(), {"precision": "32"}
    if bits == 16:
        return block.half(), {"precision": "16"}
    q = torch.round((block.float().clamp(-1, 1) + 1) * 127.5).to(torch.uint8)
    return q, {"precision": "8", "dequantise": "x = q / 127.5 - 1"}


# =============================================================================== universal-neuron table
def build_universal_table(
    per_model: Mapping[str, Mapping[str, Any]],
    n_layers: int,
    d_mlp: int,
    *,
    dead: Any = None,
    universal_threshold: float = criteria.UNIVERSAL_THRESHOLD,
    min_models: int = 1,
    z_threshold: float = criteria.Z_THRESHOLD,
):
    """Per-reference-neuron table across other models (paper §2.5, plus rotation z-scores).

    ``per_model[m]``: ``max_corr`` [N], ``max_corr_ix`` [N] (flat index into model m), ``baseline`` [N]
    (baseline max-corr), optional ``null_max`` [N, K] (max-corr against K independent rotations) and
    ``d_mlp`` (model m's width, default ``d_mlp``). Returns a pandas DataFrame (columns: docs/correlations.md).
    """
    import pandas as pd

    N = n_layers * d_mlp
    arr = lambda v: np.asarray(v.detach().cpu() if isinstance(v, torch.Tensor) else v)  # noqa: E731
    names = list(per_model)
    if not names:
        raise NeuronLibError("build_universal_table needs at least one other model")
    cols: dict[str, np.ndarray] = {
        "layer": np.repeat(np.arange(n_layers), d_mlp),
        "neuron": np.tile(np.arange(d_mlp), n_layers),
    }
    maxc, base, zs, nulls = [], [], [], []
    for m in names:
        rec = per_model[m]
        mc = arr(rec["max_corr"]).astype(np.float64).reshape(N)
        ix = arr(rec["max_corr_ix"]).astype(np.int64).reshape(N)
        bl = arr(rec["baseline"]).astype(np.float64).reshape(N)
        dm = int(rec.get("d_mlp", d_mlp))
        cols[f"max_corr_{m}"] = mc
        cols[f"max_corr_layer_{m}"] = ix // dm
        cols[f"max_corr_neuron_{m}"] = ix % dm
        cols[f"baseline_{m}"] = bl
        null = rec.get("null_max")
        if null is not None:
            null = arr(null).astype(np.float64).reshape(N, -1)
            if null.shape[1] >= 2:
                mu, sd = null.mean(1), null.std(1, ddof=1)
                diff = mc - mu
                z = np.where(sd > 0, diff / np.where(sd > 0, sd, 1.0), np.where(diff == 0, 0.0, np.sign(diff) * 1e12))
            else:
                z = np.full(N, np.nan)
            cols[f"rotation_z_{m}"] = z
            zs.append(z)
            nulls.append(null)
        maxc.append(mc)
        base.append(bl)
    maxc_a, base_a = np.stack(maxc, 1), np.stack(base, 1)
    cols["max_corr"], cols["mean_corr"], cols["min_corr"] = maxc_a.max(1), maxc_a.mean(1), maxc_a.min(1)
    cols["max_baseline"], cols["min_baseline"], cols["mean_baseline"] = base_a.max(1), base_a.min(1), base_a.mean(1)
    cols["excess_corr"] = cols["mean_corr"] - cols["mean_baseline"]
    have_null = len(nulls) == len(names)
    if have_null:
        z_a = np.stack(zs, 1)
        cols["rotation_z"] = z_a.mean(1)
        ks = {n.shape[1] for n in nulls}
        if len(ks) == 1:
            null_stat = np.stack(nulls, 0).mean(0)  # [N, K]: mean over models of each rotation's max-corr
            cols["rotation_p"] = (1 + (null_stat >= cols["mean_corr"][:, None]).sum(1)) / (null_stat.shape[1] + 1)
        else:
            cols["rotation_p"] = np.full(N, np.nan)
        n_agree_z = criteria.n_models_above(np.nan_to_num(z_a, nan=-np.inf), np.zeros_like(z_a), z_threshold)
    else:
        cols["rotation_z"] = np.full(N, np.nan)
        cols["rotation_p"] = np.full(N, np.nan)
        n_agree_z = np.zeros(N, dtype=np.int64)
    dead_a = np.zeros(N, dtype=bool) if dead is None else arr(dead).astype(bool).reshape(N)
    cols["n_models_agree"] = criteria.n_models_above(maxc_a, base_a, universal_threshold)
    cols["n_models_agree_z"] = n_agree_z
    cols["is_universal"] = criteria.universal(
        cols["excess_corr"], cols["n_models_agree"], dead_a, universal_threshold, min_models
    )
    cols["is_universal_z"] = criteria.universal_z(cols["rotation_z"], n_agree_z, dead_a, z_threshold, min_models)
    cols["dead"] = dead_a
    return pd.DataFrame(cols)


def universal_share_by_layer(df) -> Any:
    """Share of universal neurons per layer, both criteria (a pandas DataFrame)."""
    return df.groupby("layer")[["is_universal", "is_universal_z"]].mean()


# =============================================================================== planning
@dataclass
class Plan:
    n_ref: int
    others: list[tuple[str, int, int]]  # (name, n_layers, d_mlp)
    streams_per_pair: int
    folders_per_pair: int
    n_rotations: int
    rotation_method: str | None
    batch_tokens: int
    n_tokens_max: int
    budget_bytes: int
    block_rows: int
    fixed_bytes: int
    per_row_bytes: int
    probe_gflops: float = 0.0

    @property
    def n_blocks(self) -> int:
        return -(-self.n_ref // self.block_rows)

    def bytes_for_rows(self, r: int) -> int:
        return _bytes_for_rows(r, self.fixed_bytes, self.per_row_bytes, max(n * d for _, n, d in self.others))

    def flops(self) -> dict[str, float]:
        T, B = self.n_tokens_max, self.n_blocks
        cross = sum(2.0 * self.n_ref * L * d * T * self.streams_per_pair for _, L, d in self.others)
        cov = (
            sum(
                2.0 * L * T * B * sum((rs.stop - rs.start) * (cs.stop - cs.start) for rs, cs in symmetric_blocks(d))
                for _, L, d in self.others
            )
            if self.rotation_method == "covariance"
            else 0.0
        )
        rot_act = (
            sum(2.0 * L * d * d * T * B * self.n_rotations for _, L, d in self.others)
            if self.rotation_method == "activations"
            else 0.0
        )
        rot_fin = (
            sum(self.n_rotations * (2.0 * self.n_ref * L * d * d + B * 6.0 * L * d**3) for _, L, d in self.others)
            if self.rotation_method == "covariance"
            else 0.0
        )
        return {
            "cross_moment": cross,
            "within_layer_cov": cov,
            "rotate_activations": rot_act,
            "rotation_finalize": rot_fin,
            "total": cross + cov + rot_act + rot_fin,
        }

    def describe(self, model_shapes: Mapping[str, tuple[int, int]]) -> str:
        fl = self.flops()
        est = fl["total"] / max(self.probe_gflops, 1e-9) / 1e9 if self.probe_gflops else float("nan")
        lines = ["correlation plan:"]
        for name, (L, d) in model_shapes.items():
            lines.append(f"  {name}: {L} layers x {d} = {L * d:,} neurons")
        lines += [
            f"  tokens: up to {self.n_tokens_max:,} (before the token filter), {self.batch_tokens:,} per batch",
            f"  pairs: {len(self.others)} x {self.streams_per_pair} cross-moment stream(s) per pair, "
            f"{self.folders_per_pair} output folder(s) per pair, rotations: {self.n_rotations} ({self.rotation_method})",
            f"  memory: budget {human_bytes(self.budget_bytes)}, accumulators {human_bytes(self.bytes_for_rows(self.block_rows))} "
            f"-> {self.n_blocks} block(s) of {self.block_rows:,} reference rows (one data pass per block)",
            f"  FLOPs: cross-moment {fl['cross_moment']:.3g}, within-layer cov {fl['within_layer_cov']:.3g}, "
            f"rotations {fl['rotate_activations'] + fl['rotation_finalize']:.3g} (+ forward passes)",
            f"  matmul probe {self.probe_gflops:.1f} GFLOP/s -> estimated {est:.1f} s of matmul time",
        ]
        return "\n".join(lines)

    def as_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d.update(n_blocks=self.n_blocks, flops=self.flops(), accumulator_bytes=self.bytes_for_rows(self.block_rows))
        fl = d["flops"]["total"]
        d["estimated_seconds"] = fl / self.probe_gflops / 1e9 if self.probe_gflops else None
        return d


def _bytes_for_rows(r: int, fixed: int, per_row: int, n_other_max: int) -> int:
    """Bytes of one pass for ``r`` reference rows: fixed part, accumulators, GEMM buffer, chunk temporaries."""
    return (
        fixed
        + r * per_row
        + 8 * min(_GEMM_BUF_ELEMS, r * n_other_max)
        + _TEMP_BYTES_PER_ELEM * min(_CHUNK_ELEMS, r * n_other_max)
    )


def memory_model(
    n_ref: int,
    others: Sequence[tuple[int, int]],
    *,
    streams_per_pair: int,
    folders_per_pair: int,
    cov_rotation: bool,
    literal_rotations: int,
    n_rotations: int,
    batch_tokens: int,
    matmul_bytes: int = 4,
) -> tuple[int, int]:
    """(fixed bytes, bytes per reference row) of one pass: accumulators, buffers, summaries, activations."""
    n_other = [L * d for L, d in others]
    fixed = 0
    for (L, d), N2 in zip(others, n_other):
        fixed += streams_per_pair * 4 * N2 * 8  # other moments
        if cov_rotation:
            fixed += L * d * d * (8 + matmul_bytes) + 4 * d * d * 8  # W, its batch buffer, finalisation temporaries
        fixed += literal_rotations * L * d * d * 4  # fp32 rotation matrices
        fixed += folders_per_pair * N2 * _SUMMARY_ROW_BYTES + N2 * 8  # column summaries, stats
    fixed += len(others) * folders_per_pair * n_ref * _SUMMARY_ROW_BYTES  # row summaries
    fixed += len(others) * n_ref * n_rotations * 4 + 4 * n_ref * 8  # null maxima, reference moments
    fixed += (n_ref + sum(n_other)) * batch_tokens * 4 * 3  # activations, centred copies, noise
    per_row = sum(streams_per_pair * N2 * 8 for N2 in n_other) + max(n_other) * 4  # co-moments, finalised block
    return int(fixed), int(per_row)


def _matmul_probe(device: torch.device, dtype: torch.dtype = torch.float32) -> float:
    """GFLOP/s of a [256, 2048] x [2048, 256] matmul on ``device`` (a few ms)."""
    m, k = 256, 2048
    a = torch.randn(m, k, device=device, dtype=dtype)
    b = torch.randn(m, k, device=device, dtype=dtype)
    out = torch.mm(a, b.T)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sync()
    reps, t0 = 3, time.perf_counter()
    for _ in range(reps):
        torch.mm(a, b.T, out=out)
    sync()
    return 2 * m * m * k * reps / max(time.perf_counter() - t0, 1e-9) / 1e9


def auto_memory_budget(device: torch.device) -> int:
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free * 0.8)
    try:
        import psutil

        return int(psutil.virtual_memory().available * 0.5)
    except Exception:  # pragma: no cover
        return 4 * 10**9


# =============================================================================== data and model access
# =============================================================================== the run
@dataclass
class _Pair:
    index: int
    name: str
    n_layers: int
    d_mlp: int
    streams: dict[str, StreamingCorrelation]

    @property
    def n(self) -> int:
        return self.n_layers * self.d_mlp


class _Engine:
    """All pairs and streams of one block of reference rows, plus the run-wide summary accumulators."""

    def __init__(self, cfg: CorrelationConfig, n_ref: int, others: list[tuple[str, int, int]], device: torch.device):
        self.cfg, self.n_ref, self.others, self.device = cfg, n_ref, others, device
        self.method = cfg.resolved_rotation_method if "rotation" in cfg.baseline else None
        self.matmul_dtype = getattr(torch, cfg.matmul_dtype)
        self.folders = ["none"] + list(cfg.baseline)
        self.pairs: list[_Pair] = []
        self.rot32: dict[tuple[int, int], torch.Tensor] = {}
        self.row_acc: dict[tuple[int, str], SummaryAccumulator] = {}
        self.col_acc: dict[tuple[int, str], SummaryAccumulator] = {}
        self.null_max: dict[int, torch.Tensor] = {}
        self.folder_stats: dict[tuple[int, str], dict[str, torch.Tensor]] = {}
        self._bufs: dict[str, torch.Tensor] = {}
        for i, (name, L, d) in enumerate(others):
            for folder in self.folders:
                self.row_acc[i, folder] = SummaryAccumulator(n_ref, L * d, device=device)
                self.col_acc[i, folder] = SummaryAccumulator(L * d, n_ref, device=device)
            if self.method is not None:
                self.null_max[i] = torch.zeros(n_ref, cfg.n_rotations, dtype=torch.float32, device=device)
            if self.method == "activations":
                for k in range(cfg.n_rotations):
                    self.rot32[i, k] = torch.stack(
                        [random_rotation(d, rotation_seed(cfg.seed, name, k, l), device) for l in range(L)]
                    ).float()

    def stream_names(self) -> list[str]:
        names = ["none"] + [b for b in ("gaussian", "permutation") if b in self.cfg.baseline]
        if self.method == "activations":
            names += [f"rotation.{k}" for k in range(self.cfg.n_rotations)]
        return names

    def start_block(self, rows: tuple[int, int]) -> None:
        self.rows = rows
        self.pairs = []
        sim, thr = self.cfg.similarity, self.cfg.jaccard_threshold
        for i, (name, L, d) in enumerate(self.others):
            streams = {}
            for s in self.stream_names():
                layer = d if (s == "none" and self.method == "covariance") else None
                streams[s] = StreamingCorrelation(
                    self.n_ref,
                    L * d,
                    similarity=sim,
                    jaccard_threshold=thr,
                    rows=rows,
                    other_layer_size=layer,
                    device=self.device,
                    matmul_dtype=self.matmul_dtype,
                )
            self.pairs.append(_Pair(i, name, L, d, streams))
        # one GEMM buffer for every stream of every pair (they run one after the other), one W buffer per shape
        need = max(sc.col_chunk * (rows[1] - rows[0]) for p in self.pairs for sc in p.streams.values())
        shared = torch.empty(need, dtype=self.matmul_dtype, device=self.device)
        wbufs: dict[tuple[int, int], list[torch.Tensor]] = {}
        for p in self.pairs:
            for sc in p.streams.values():
                sc._buf = shared
                if sc.W is not None:
                    key = (p.n_layers, p.d_mlp)
                    if key not in wbufs:
                        wbufs[key] = covariance_buffers(p.n_layers, p.d_mlp, self.matmul_dtype, self.device)
                    sc._wbuf = wbufs[key]

    def _gen(self, *parts) -> torch.Generator:
        return torch.Generator(device=self.device).manual_seed(derive_seed(self.cfg.seed, *parts))

    def _buffer(self, role: str, n: int, T: int, dtype: torch.dtype) -> torch.Tensor:
        """A reusable [n, T] work tensor (allocating fresh ones every batch costs more than centring itself)."""
        buf = self._bufs.get(role)
        if buf is None or buf.numel() < n * T or buf.dtype != dtype:
            buf = self._bufs[role] = torch.empty(n * T, dtype=dtype, device=self.device)
        return buf[: n * T].view(n, T)

    def update(self, a: torch.Tensor, others: Sequence[torch.Tensor], batch_key: int) -> None:
        """One batch: reference activations ``a`` [N1, T] and each other model's [N2, T] (inputs are not modified)."""
        if a.shape[1] == 0:
            return
        first = self.pairs[0].streams["none"]
        T = a.shape[1]
        gemm_dtype = self.matmul_dtype
        ref = first.prepare(a, out=self._buffer("ref", a.shape[0], T, gemm_dtype))
        for pair, b in zip(self.pairs, others):
            b = b.to(self.device)
            oth = first.prepare(b, out=self._buffer("other", pair.n, T, gemm_dtype))
            for s, sc in pair.streams.items():
                if s == "none":
                    sc.update_prepared(ref, oth)
                elif s == "gaussian":
                    g = self._gen("gaussian", pair.name, batch_key)
                    noise = torch.randn(b.shape, generator=g, device=self.device, dtype=torch.float32)
                    noise = torch.nn.functional.gelu(noise, approximate="tanh")
                    sc.update_prepared(ref, sc.prepare(noise, out=noise if gemm_dtype == torch.float32 else None))
                elif s == "permutation":
                    g = self._gen("permutation", pair.name, batch_key)
                    sc.update_prepared(ref, oth.permuted(torch.randperm(T, generator=g, device=self.device)))
                else:  # rotation.k, rotating the activations
                    k = int(s.split(".")[1])
                    rotated = self._buffer("rotated", pair.n, T, torch.float32)
                    torch.bmm(
                        self.rot32[pair.index, k],
                        b.to(torch.float32).reshape(pair.n_layers, pair.d_mlp, T),
                        out=rotated.view(pair.n_layers, pair.d_mlp, T),
                    )
                    sc.update_prepared(ref, sc.prepare(rotated, out=rotated if gemm_dtype == torch.float32 else None))

    def finish_block(self, save_full: Callable[[int, str, tuple[int, int], torch.Tensor], None] | None) -> None:
        r0, r1 = self.rows
        for pair in self.pairs:
            real = pair.streams["none"]
            dead_ref = real.dead_ref
            for folder in ["none", "gaussian", "permutation"]:
                if folder not in self.folders:
                    continue
                sc = pair.streams[folder]
                corr = sc.finalize()
                self._summarise(pair.index, folder, corr, save_full)
                self.folder_stats[pair.index, folder] = self._stats(sc.dead_ref, sc.dead_other, sc)
                del corr
            if self.method is None:
                continue
            for k in range(self.cfg.n_rotations):
                if self.method == "covariance":

                    def rot(l, k=k, p=pair):
                        return random_rotation(p.d_mlp, rotation_seed(self.cfg.seed, p.name, k, l), self.device)

                    corr, dead_other = real.finalize_rotated(rot)
                    sc = real
                else:
                    sc = pair.streams[f"rotation.{k}"]
                    corr, dead_other = sc.finalize(), sc.dead_other
                self.null_max[pair.index][r0:r1, k] = corr.max(1).values
                if k == 0:
                    self._summarise(pair.index, "rotation", corr, save_full)
                    self.folder_stats[pair.index, "rotation"] = self._stats(dead_ref, dead_other, sc)
                del corr

    def _stats(self, dead_ref, dead_other, sc: StreamingCorrelation) -> dict[str, torch.Tensor]:
        return {
            "dead_ref": dead_ref.clone(),
            "dead_other": dead_other.clone(),
            "n_tokens": torch.tensor([sc.n], dtype=torch.int64),
        }

    def _summarise(self, i: int, folder: str, corr: torch.Tensor, save_full) -> None:
        r0, _ = self.rows
        self.row_acc[i, folder].add(corr, r0, 0)
        self.col_acc[i, folder].add(corr.T, 0, r0)
        if save_full is not None:
            save_full(i, folder, self.rows, corr)

    # checkpoint state: every tensor the run needs, flat
    def state_dict(self, in_block: bool) -> dict[str, torch.Tensor]:
        state: dict[str, torch.Tensor] = {}
        if in_block:
            for pair in self.pairs:
                for s, sc in pair.streams.items():
                    state.update({f"stream.{pair.index}.{s}.{k}": v for k, v in sc.state_dict().items()})
        for (i, folder), acc in self.row_acc.items():
            state.update({f"row_acc.{i}.{folder}.{k}": v for k, v in acc.state_dict().items()})
        for (i, folder), acc in self.col_acc.items():
            state.update({f"col_acc.{i}.{folder}.{k}": v for k, v in acc.state_dict().items()})
        for i, t in self.null_max.items():
            state[f"null_max.{i}"] = t
        for (i, folder), st in self.folder_stats.items():
            state.update({f"folder_stats.{i}.{folder}.{k}": v for k, v in st.items()})
        return state

    def load_state_dict(self, state: Mapping[str, torch.Tensor], in_block: bool) -> None:
        def sub(prefix: str) -> dict[str, torch.Tensor]:
            return {k[len(prefix) :]: v.to(self.device) for k, v in state.items() if k.startswith(prefix)}

        if in_block:
            for pair in self.pairs:
                for s, sc in pair.streams.items():
                    sc.load_state_dict(sub(f"stream.{pair.index}.{s}."))
        for (i, folder), acc in self.row_acc.items():
            acc.load_state_dict(sub(f"row_acc.{i}.{folder}."))
        for (i, folder), acc in self.col_acc.items():
            acc.load_state_dict(sub(f"col_acc.{i}.{folder}."))
        for i, t in self.null_max.items():
            t.copy_(state[f"null_max.{i}"])
        for i in range(len(self.others)):
            for folder in self.folders:
                st = sub(f"folder_stats.{i}.{folder}.")
                if st:
                    self.folder_stats[i, folder] = st


def _folder_config(
    cfg: CorrelationConfig, ref: str, other: str, folder: str, dataset: dict, drop_ids: list[int]
) -> dict:
    """What determines the contents of one output folder (its manifest's config and fingerprint)."""
    conf = {
        "stage": STAGE,
        "reference_model": ref,
        "other_model": other,
        "dataset": dataset,
        "drop_ids": drop_ids,
        "similarity": cfg.similarity,
        "batch_size": cfg.batch_size,
        "max_tokens": cfg.max_tokens,
        "matmul_dtype": cfg.matmul_dtype,
        "baseline": folder,
        "save_full_matrix": cfg.save_full_matrix,
        "save_precision": cfg.save_precision if cfg.save_full_matrix else None,
    }
    if cfg.similarity == "jaccard":
        conf["jaccard_threshold"] = cfg.jaccard_threshold
    if folder in ("gaussian", "permutation", "rotation"):
        conf["seed"] = cfg.seed
    if folder == "rotation":
        conf.update(n_rotations=cfg.n_rotations, rotation_method=cfg.resolved_rotation_method)
    return conf


def _table_config(cfg: CorrelationConfig, ref: str, others: list[str], dataset: dict, fps: dict) -> dict:
    used = {"none", _table_baseline(cfg)}
    fps = {k: v for k, v in fps.items() if k.rsplit("/", 1)[1] in used}  # adding another baseline keeps the table valid
    return {
        "stage": f"{STAGE}.table",
        "reference_model": ref,
        "other_models": others,
        "dataset": dataset,
        "universal_threshold": cfg.universal_threshold,
        "min_models": cfg.min_models,
        "z_threshold": cfg.z_threshold,
        "table_baseline": _table_baseline(cfg),
        "pair_fingerprints": fps,
    }


def _table_baseline(cfg: CorrelationConfig) -> str | None:
    for b in ("rotation", "gaussian", "permutation"):
        if b in cfg.baseline:
            return b
    return None


def _ckpt_paths(ckpt_dir: Path) -> Path:
    return ckpt_dir / "state.json"


def _save_checkpoint(ckpt_dir: Path, engine: _Engine, position: dict, in_block: bool) -> None:
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    seq = int(position["seq"])
    name = f"state-{seq:08d}.safetensors"
    save_tensors_atomic(ckpt_dir / name, engine.state_dict(in_block))
    atomic_write_json(_ckpt_paths(ckpt_dir), {**position, "tensors": name, "in_block": in_block})
    for old in ckpt_dir.glob("state-*.safetensors"):
        if old.name != name:
            old.unlink(missing_ok=True)


@dataclass
class _Run:
    """What the parts of one run share: names, data, and the identity of every output folder."""

    cfg: CorrelationConfig
    ref_name: str
    other_names: list[str]
    dataset: Any
    dataset_desc: dict
    drop_ids: list[int]
    n_rows: int
    ctx: int
    out_dirs: dict[tuple[str, str], Path]  # (other, baseline kind) -> pair folder
    fps: dict[str, str]  # "other/kind" -> fingerprint
    table_dir: Path
    table_conf: dict
    table_fp: str

    @property
    def kinds(self) -> list[str]:
        return ["none"] + self.cfg.baseline


def _open_run(cfg: CorrelationConfig) -> _Run:
    """Dataset, tokenizers (the models must share one; the dataset must be tokenized with it) and the identity of
    every output folder: cheap, before any model is loaded."""
    from neuron_lib.corpus import load_token_dataset, tokenizer_fingerprint
    from neuron_lib.models import load_tokenizer
    from neuron_lib.streaming import TokenFilter, n_rows_for_tokens

    ref_name = model_output_name(cfg.reference_model)
    other_names = [model_output_name(m) for m in cfg.other_models]
    if len({ref_name, *other_names}) != 1 + len(other_names):
        raise NeuronLibError(f"models resolve to clashing output names {[ref_name] + other_names}; rename the folders")
    tok_ref = load_tokenizer(cfg.reference_model)
    fp_ref = tokenizer_fingerprint(tok_ref)
    for spec, name in zip(cfg.other_models, other_names):
        fp = tokenizer_fingerprint(load_tokenizer(spec))
        if fp != fp_ref:
            raise NeuronLibError(
                f"{name} does not share {ref_name}'s tokenizer (vocabulary fingerprints {fp} vs {fp_ref}): correlations "
                "over the same tokens need models with the same vocabulary"
            )
    dataset, ds_manifest = load_token_dataset(cfg.token_dataset, tok_ref)
    dataset_name = artifacts.dataset_name(cfg.token_dataset)
    drop_ids = TokenFilter().drop_ids(tok_ref)
    n_rows = n_rows_for_tokens(dataset, cfg.max_tokens)
    ctx = len(dataset[0]["tokens"])
    # the dataset's content identity (stage.dataset_identity), never its absolute path: outputs survive a move
    dataset_desc = {**stage.dataset_identity(ds_manifest, cfg.token_dataset), "n_rows_used": n_rows}
    out_dirs, fps = {}, {}
    for other in other_names:
        for kind in ["none"] + cfg.baseline:
            out_dirs[other, kind] = artifacts.correlation_run(ref_name, other, dataset_name, cfg.simtype, kind)
            fps[f"{other}/{kind}"] = config_fingerprint(
                _folder_config(cfg, ref_name, other, kind, dataset_desc, drop_ids)
            )
    table_conf = _table_config(cfg, ref_name, other_names, dataset_desc, fps)
    return _Run(
        cfg,
        ref_name,
        other_names,
        dataset,
        dataset_desc,
        drop_ids,
        n_rows,
        ctx,
        out_dirs,
        fps,
        artifacts.correlation_table_dir(ref_name, dataset_name),
        table_conf,
        config_fingerprint(table_conf),
    )


_PAIR_FILES = (
    artifacts.CORRELATION_SUMMARY_FILE,
    artifacts.CORRELATION_SUMMARY_T_FILE,
    artifacts.CORRELATION_STATS_FILE,
)
_TABLE_FILES = tuple(f"{artifacts.CORRELATION_TABLE_STEM}.{fmt}" for fmt in ("csv", "parquet"))


def _plan(
    cfg: CorrelationConfig,
    run: _Run,
    n_ref: int,
    others: list[tuple[str, int, int]],
    device: torch.device,
    ckpt: dict | None,
) -> Plan:
    """Memory model → reference rows per pass (an interrupted run keeps its blocking), FLOPs, matmul probe."""
    method = cfg.resolved_rotation_method if "rotation" in cfg.baseline else None
    streams = (
        1
        + sum(b in cfg.baseline for b in ("gaussian", "permutation"))
        + (cfg.n_rotations if method == "activations" else 0)
    )
    batch_tokens = cfg.batch_size * run.ctx
    fixed, per_row = memory_model(
        n_ref,
        [(L, d) for _, L, d in others],
        streams_per_pair=streams,
        folders_per_pair=len(run.kinds),
        cov_rotation=method == "covariance",
        literal_rotations=cfg.n_rotations if method == "activations" else 0,
        n_rotations=cfg.n_rotations if method else 0,
        batch_tokens=batch_tokens,
        matmul_bytes=4 if cfg.matmul_dtype == "float32" else 8,
    )
    budget = parse_memory(cfg.max_memory) or auto_memory_budget(device)
    n2max = max(L * d for _, L, d in others)
    if ckpt is not None and ckpt.get("n_ref") == n_ref:
        block_rows = int(ckpt["block_rows"])  # keep the interrupted run's blocking: results stay bit-identical
    elif cfg.block_rows:
        block_rows = min(cfg.block_rows, n_ref)
    else:
        if _bytes_for_rows(1, fixed, per_row, n2max) > budget:
            raise NeuronLibError(
                f"--max-memory {human_bytes(budget)} is too small: one reference row needs "
                f"{human_bytes(_bytes_for_rows(1, fixed, per_row, n2max))} (fixed {human_bytes(fixed)}); raise it or "
                "lower --batch-size"
            )
        lo, hi = 1, n_ref
        while lo < hi:  # largest r that fits
            mid = (lo + hi + 1) // 2
            lo, hi = (mid, hi) if _bytes_for_rows(mid, fixed, per_row, n2max) <= budget else (lo, mid - 1)
        block_rows = lo
    return Plan(
        n_ref,
        others,
        streams,
        len(run.kinds),
        cfg.n_rotations,
        method,
        batch_tokens,
        run.n_rows * run.ctx,
        budget,
        block_rows,
        fixed,
        per_row,
        probe_gflops=_matmul_probe(device, getattr(torch, cfg.matmul_dtype)),
    )


def _full_matrix_writer(run: _Run, others: list[tuple[str, int, int]]):
    """The ``--save-full-matrix`` callback: one safetensors file per block of reference rows and pair folder."""
    if not run.cfg.save_full_matrix:
        return None

    def save_full(i: int, kind: str, rows: tuple[int, int], corr: torch.Tensor) -> None:
        q, meta = _quantise(corr, run.cfg.save_precision)
        meta.update(rows=f"{rows[0]}-{rows[1]}")
        name = artifacts.CORRELATION_FULL_GLOB.replace("*", f"{rows[0]:09d}-{rows[1]:09d}")
        save_tensors_atomic(run.out_dirs[others[i][0], kind] / name, {"correlation": q}, meta)

    return save_full


@dataclass
class _Position:
    """Where a run is: block, next dataset row, checkpoint sequence number, batches done (checkpointed)."""

    block: int = 0
    next_row: int = 0
    seq: int = 0
    batches_done: int = 0

    def record(self, run: _Run, n_ref: int, block_rows: int) -> dict:
        return {
            "config": run.fps,
            "n_ref": n_ref,
            "block_rows": block_rows,
            "block": self.block,
            "next_row": self.next_row,
            "seq": self.seq,
            "batches_done": self.batches_done,
            "n_rows": run.n_rows,
            "rng": {
                "scheme": "per-batch generators seeded by derive_seed(seed, kind, other, batch start row); "
                "rotations by derive_seed(seed, 'rotation', other, k, layer)",
                "seed": run.cfg.seed,
            },
        }


def _passes(
    run: _Run,
    engine: _Engine,
    all_models: list,
    blocks: list[tuple[int, int]],
    pos: _Position,
    ckpt_dir: Path,
    save_full,
) -> None:
    """One data pass per block of reference rows, every model forwarded once per batch; checkpoints as it goes."""
    from tqdm.auto import tqdm

    from neuron_lib.streaming import iter_mlp_activations

    cfg, ctx, n_ref = run.cfg, run.ctx, engine.n_ref
    block_rows = blocks[0][1] - blocks[0][0]
    total_raw = run.n_rows * ctx * len(blocks)
    bar = tqdm(
        total=total_raw,
        initial=min((pos.block * run.n_rows + pos.next_row) * ctx, total_raw),
        unit="tok",
        unit_scale=True,
        desc=f"correlations {run.ref_name}",
        disable=not cfg.progress,
        dynamic_ncols=True,
    )
    tokens_used = 0
    try:
        while pos.block < len(blocks):
            if not engine.pairs or engine.rows != blocks[pos.block]:
                engine.start_block(blocks[pos.block])
            iters = [
                iter_mlp_activations(
                    m,
                    run.dataset,
                    cfg.batch_size,
                    drop_ids=run.drop_ids,
                    want_pre=False,
                    want_post=True,
                    start_row=pos.next_row,
                    end_row=run.n_rows,
                )
                for m in all_models
            ]
            for batches in zip(*iters):
                rb = batches[0]
                if any(not torch.equal(ob.keep, rb.keep) for ob in batches[1:]):
                    raise NeuronLibError("models disagree on the token filter; they must share the tokenizer")
                T = rb.post.shape[-1]
                engine.update(
                    rb.post.reshape(n_ref, T), [ob.post.reshape(-1, T) for ob in batches[1:]], batch_key=rb.rows[0]
                )
                pos.next_row, pos.batches_done, tokens_used = rb.rows[1], pos.batches_done + 1, tokens_used + T
                bar.update((rb.rows[1] - rb.rows[0]) * ctx)
                bar.set_postfix(block=f"{pos.block + 1}/{len(blocks)}", kept=f"{tokens_used:,}", refresh=False)
                if cfg.checkpoint_every and pos.batches_done % cfg.checkpoint_every == 0 and pos.next_row < run.n_rows:
                    pos.seq += 1
                    _save_checkpoint(ckpt_dir, engine, pos.record(run, n_ref, block_rows), in_block=True)
            engine.finish_block(save_full)
            pos.block, pos.next_row = pos.block + 1, 0
            if cfg.checkpoint_every:
                pos.seq += 1
                _save_checkpoint(ckpt_dir, engine, pos.record(run, n_ref, block_rows), in_block=False)
    finally:
        bar.close()


def _write_pair_folders(run: _Run, engine: _Engine, plan: Plan, models: list, elapsed: float) -> None:
    """Every (other model, baseline) folder: row and column summaries, neuron stats, manifest last."""
    from neuron_lib.models import model_info

    cfg, ref_model = run.cfg, models[0]
    for i, (other, L2, d2) in enumerate(engine.others):
        for kind in run.kinds:
            st = dict(engine.folder_stats[i, kind])
            st["dead_ref"], st["dead_other"] = st["dead_ref"].to(torch.bool), st["dead_other"].to(torch.bool)
            if kind == "rotation":
                st["rotation_null_max"] = engine.null_max[i]
                st["rotation_seeds"] = torch.tensor(
                    [[rotation_seed(cfg.seed, other, k, l) for l in range(L2)] for k in range(cfg.n_rotations)],
                    dtype=torch.int64,
                )
            conf = _folder_config(cfg, run.ref_name, other, kind, run.dataset_desc, run.drop_ids)
            manifest = make_manifest(
                STAGE,
                conf,
                config_fingerprint=run.fps[f"{other}/{kind}"],
                model=run.ref_name,
                other_model=other,
                dataset=run.dataset_desc["name"],
                dataset_path=str(Path(cfg.token_dataset).resolve()),
                n_tokens=int(st["n_tokens"][0]),
                similarity=cfg.simtype,
                baseline=kind,
                ref_shape=[ref_model.cfg.n_layers, ref_model.cfg.d_mlp],
                other_shape=[L2, d2],
                files={
                    "summary": artifacts.CORRELATION_SUMMARY_FILE,
                    "summary_T": artifacts.CORRELATION_SUMMARY_T_FILE,
                    "stats": artifacts.CORRELATION_STATS_FILE,
                    "full_matrix": artifacts.CORRELATION_FULL_GLOB if cfg.save_full_matrix else None,
                },
                n_dead_ref=int(st["dead_ref"].sum()),
                n_dead_other=int(st["dead_other"].sum()),
                plan=plan.as_dict(),
                elapsed_s=elapsed,
                ref_model_info=model_info(ref_model),
                other_model_info=model_info(models[i + 1]),
            )
            stage.write_folder(
                run.out_dirs[other, kind],
                {
                    artifacts.CORRELATION_SUMMARY_FILE: engine.row_acc[i, kind].finalize(),
                    artifacts.CORRELATION_SUMMARY_T_FILE: engine.col_acc[i, kind].finalize(),
                    artifacts.CORRELATION_STATS_FILE: st,
                },
                manifest,
                fresh=False,
            )


def run_correlations(cfg: CorrelationConfig, *, models: Mapping[str, Any] | None = None) -> stage.StageResult:
    """Run (or resume, or skip when finished) a correlation job.

    ``models``: optional preloaded models by the names used in ``cfg`` (tests use this to avoid reloading).
    """
    from neuron_lib.models import load_model

    cfg.validate()
    t_start = time.time()
    device = pick_device(cfg.device)
    run = _open_run(cfg)
    outputs = {
        "table_dir": str(run.table_dir),
        "table": str(artifacts.correlation_table_file(run.table_dir, "csv")),
        **{f"{o}/{k}": str(d) for (o, k), d in run.out_dirs.items()},
    }
    todo = [
        d
        for (o, k), d in run.out_dirs.items()
        if stage.must_run(d, stage.folder_state(d, STAGE, run.fps[f"{o}/{k}"], _PAIR_FILES), cfg.overwrite, STAGE)
    ]
    table_state = stage.folder_state(run.table_dir, f"{STAGE}.table", run.table_fp, _TABLE_FILES)
    table_todo = stage.must_run(run.table_dir, table_state, cfg.overwrite, f"{STAGE}.table")
    if not todo:
        if not table_todo:
            stage.log(
                STAGE,
                f"{run.ref_name} vs {', '.join(run.other_names)} on {run.dataset_desc['name']} is "
                "complete; nothing to do",
            )
            return stage.StageResult(STAGE, "skipped", outputs)
        df = _write_table(run)
        return stage.StageResult(
            STAGE, "done", outputs, details={"table_only": True, "n_universal": int(df["is_universal"].sum())}
        )

    all_models = [
        models[m] if models is not None and m in models else load_model(m, device=device)
        for m in [cfg.reference_model] + cfg.other_models
    ]
    ref_model = all_models[0]
    for name, m in zip(run.other_names, all_models[1:]):
        if m.cfg.d_vocab != ref_model.cfg.d_vocab:
            raise NeuronLibError(
                f"{name} has d_vocab={m.cfg.d_vocab}, {run.ref_name} has {ref_model.cfg.d_vocab}: "
                "models must share the vocabulary"
            )
    others = [(n, m.cfg.n_layers, m.cfg.d_mlp) for n, m in zip(run.other_names, all_models[1:])]
    n_ref = ref_model.cfg.n_layers * ref_model.cfg.d_mlp

    ckpt_dir = artifacts.correlation_checkpoint(
        run.ref_name, run.dataset_desc["name"], config_fingerprint({"folders": run.fps, "others": run.other_names})
    )
    ckpt = read_json(_ckpt_paths(ckpt_dir)) if _ckpt_paths(ckpt_dir).exists() else None
    plan = _plan(cfg, run, n_ref, others, device, ckpt)
    shapes = {run.ref_name: (ref_model.cfg.n_layers, ref_model.cfg.d_mlp), **{n: (L, d) for n, L, d in others}}
    for line in plan.describe(shapes).splitlines():
        stage.log(STAGE, line)
    blocks = [(r, min(r + plan.block_rows, n_ref)) for r in range(0, n_ref, plan.block_rows)]

    engine, pos, resumed = _Engine(cfg, n_ref, others, device), _Position(), None
    if ckpt is not None and ckpt.get("n_ref") == n_ref:
        pos = _Position(ckpt["block"], ckpt["next_row"], ckpt["seq"], ckpt["batches_done"])
        if pos.block < len(blocks):
            engine.start_block(blocks[pos.block])
        engine.load_state_dict(
            load_tensors(ckpt_dir / ckpt["tensors"]), in_block=bool(ckpt["in_block"]) and pos.block < len(blocks)
        )
        resumed = {"block": pos.block, "row": pos.next_row, "batches_done": pos.batches_done}
        stage.log(STAGE, f"resuming from checkpoint: block {pos.block + 1}/{len(blocks)}, dataset row {pos.next_row}")
    else:
        shutil.rmtree(ckpt_dir, ignore_errors=True)
        for folder in run.out_dirs.values():  # stale full-matrix pieces of an unfinished or overwritten run
            for f in folder.glob(artifacts.CORRELATION_FULL_GLOB):
                f.unlink()

    _passes(run, engine, all_models, blocks, pos, ckpt_dir, _full_matrix_writer(run, others))
    _write_pair_folders(run, engine, plan, all_models, time.time() - t_start)
    df = _write_table(run)
    if not cfg.keep_checkpoint:
        shutil.rmtree(ckpt_dir, ignore_errors=True)
    return stage.StageResult(
        STAGE,
        "done",
        outputs,
        int(engine.folder_stats[0, "none"]["n_tokens"][0]),
        time.time() - t_start,
        details={"plan": plan.as_dict(), "resumed_from": resumed, "n_universal": int(df["is_universal"].sum())},
    )


def _write_table(run: _Run):
    """Build the universal-neuron table from the pair folders on disk, save it, print per-layer shares."""
    cfg = run.cfg
    per_model = {}
    dead = None
    n_layers = d_mlp = None
    table_baseline = _table_baseline(cfg)
    for other in run.other_names:
        none_dir = run.out_dirs[other, "none"]
        man = read_json(artifacts.manifest_path(none_dir))
        n_layers, d_mlp = man["ref_shape"]
        summ = load_tensors(none_dir / artifacts.CORRELATION_SUMMARY_FILE)
        stats = load_tensors(none_dir / artifacts.CORRELATION_STATS_FILE)
        dead = stats["dead_ref"] if dead is None else dead | stats["dead_ref"]
        rec = {"max_corr": summ["max_corr"], "max_corr_ix": summ["max_corr_ix"], "d_mlp": man["other_shape"][1]}
        if table_baseline == "rotation":
            null = load_tensors(run.out_dirs[other, "rotation"] / artifacts.CORRELATION_STATS_FILE)["rotation_null_max"]
            rec["baseline"] = null.double().mean(1)  # = the paper's baseline when n_rotations == 1
            rec["null_max"] = null
        elif table_baseline is not None:
            rec["baseline"] = load_tensors(run.out_dirs[other, table_baseline] / artifacts.CORRELATION_SUMMARY_FILE)[
                "max_corr"
            ]
        else:
            rec["baseline"] = torch.zeros_like(summ["max_corr"])
        per_model[other] = rec
    df = build_universal_table(
        per_model,
        n_layers,
        d_mlp,
        dead=dead,
        universal_threshold=cfg.universal_threshold,
        min_models=cfg.min_models,
        z_threshold=cfg.z_threshold,
    )
    save_dataframe_atomic(df, artifacts.correlation_table_file(run.table_dir, "csv").with_suffix(""))
    share = universal_share_by_layer(df)
    write_manifest(
        run.table_dir,
        make_manifest(
            f"{STAGE}.table",
            run.table_conf,
            config_fingerprint=run.table_fp,
            model=run.ref_name,
            other_models=run.other_names,
            n_neurons=len(df),
            n_universal=int(df["is_universal"].sum()),
            n_universal_z=int(df["is_universal_z"].sum()),
            share_by_layer=share.to_dict(orient="index"),
            files=list(_TABLE_FILES),
        ),
    )
    stage.log(
        STAGE,
        f"universal neurons of {run.ref_name} (excess_corr > {cfg.universal_threshold}, >= {cfg.min_models} "
        f"model(s); z > {cfg.z_threshold}): {int(df['is_universal'].sum())} / {len(df)}, z-criterion "
        f"{int(df['is_universal_z'].sum())}",
    )
    for line in ("share per layer:\n" + share.to_string(float_format=lambda v: f"{100 * v:.2f}%")).splitlines():
        stage.log(STAGE, line)
    return df


# =============================================================================== CLI
def _cli_parser():
    return config_parser(
        CorrelationConfig,
        "python -m neuron_lib.correlations_fast",
        "Streaming cross-seed neuron correlations with baselines.",
    )


def main(argv: Sequence[str] | None = None) -> stage.StageResult:
    cfg = config_from_args(CorrelationConfig, _cli_parser().parse_args(argv))
    result = run_correlations(cfg)
    print(json.dumps({k: v for k, v in dataclasses.asdict(result).items() if k != "details"}, indent=2, default=str))
    return result


if __name__ == "__main__":
    run_cli(main)
