"""Fused CPU kernels of the activation summary's per-element statistics (numba; ``summary.SubsetStats``).

The summary touches every activation of every neuron several times per batch: power sums, histogram, positive
count (pre and post), quantile-bin counts and the per-token sums and maxima (post). In torch each of those is a
separate pass that materialises a float64 or int64 temporary of the whole [T, N] batch; on a CPU they cost more
than the model's forward pass. These kernels do each group in one pass over the float32 batch, neurons split
across threads (each thread owns whole neuron columns, so no two threads write the same accumulator), the inner
loop running along the contiguous neuron axis.

Inputs follow the batch layout the model produces: ``x`` float32 [T, N] (token-major, C-contiguous). Every kernel
updates its accumulators **in place** and computes exactly what the torch code of ``summary.SubsetStats`` computes
(``tests/test_fused.py`` holds them to it): histogram bins by the paper's rule (``stats.bin_index``: bin i holds
edges[i−1] < v ≤ edges[i], NaN in the last bin), float64 power sums of (x − shift) (the summation order differs,
so sums agree to float64 rounding, not bit for bit), counts exactly.

``available()`` is False when numba cannot be imported or ``NEURON_LIB_FUSED=0``; callers then use the torch path
(also the path on GPU tensors).
"""

from __future__ import annotations

import os

import numpy as np
import torch

from neuron_lib.stats import central_moments

try:  # numba is a dependency; the torch path remains for GPUs and as the reference
    import numba
    from numba import njit, prange
except ImportError:  # pragma: no cover - exercised only without numba
    numba = None

_BLOCK = 64  # neurons per work item: a cache-friendly slice of each token row


def available() -> bool:
    return numba is not None and os.environ.get("NEURON_LIB_FUSED", "1") != "0"


def usable(*tensors: torch.Tensor) -> bool:
    """The fused path applies: numba present and every tensor on the CPU. Numba then uses as many threads as
    torch (``torch.set_num_threads`` / the Slurm allocation), not every core of the node."""
    ok = available() and all(t.device.type == "cpu" for t in tensors)
    if ok:
        numba.set_num_threads(max(1, min(numba.config.NUMBA_NUM_THREADS, torch.get_num_threads())))
    return ok


if numba is not None:

    @njit(cache=True, inline="always")
    def _bin(v, edges, e0, inv_step):
        E = edges.shape[0]
        if v != v:  # NaN → the last bin, as torch.searchsorted
            return E
        g = (v - e0) * inv_step
        if g <= 0.0:
            i = 0
        elif g >= E:
            i = E
        else:
            i = int(np.ceil(g))
        while i < E and edges[i] < v:
            i += 1
        while i > 0 and edges[i - 1] >= v:
            i -= 1
        return i

    @njit(parallel=True, cache=True)
    def _moments_hist(x, shift, edges, hist, sums, npos):
        T, N = x.shape
        E = edges.shape[0]
        e0 = edges[0]
        inv_step = (E - 1) / (edges[E - 1] - edges[0]) if E > 1 and edges[E - 1] > edges[0] else 0.0
        n_blocks = (N + _BLOCK - 1) // _BLOCK
        for b in prange(n_blocks):
            a = b * _BLOCK
            z = min(N, a + _BLOCK)
            w = z - a
            s1 = np.zeros(w)
            s2 = np.zeros(w)
            s3 = np.zeros(w)
            s4 = np.zeros(w)
            sh = np.empty(w)
            for j in range(w):
                sh[j] = shift[a + j]
            pos = np.zeros(w, dtype=np.int64)
            for t in range(T):
                row = x[t, a:z]
                for j in range(w):  # the power sums: independent lanes, vectorised
                    d = np.float64(row[j]) - sh[j]
                    d2 = d * d
                    s1[j] += d
                    s2[j] += d2
                    s3[j] += d2 * d
                    s4[j] += d2 * d2
                    pos[j] += row[j] > 0
                for j in range(w):  # the histogram: a scattered increment per value
                    hist[a + j, _bin(row[j], edges, e0, inv_step)] += 1
            for j in range(w):
                n = a + j
                sums[0, n] += s1[j]
                sums[1, n] += s2[j]
                sums[2, n] += s3[j]
                sums[3, n] += s4[j]
                npos[n] += pos[j]

    @njit(parallel=True, cache=True)
    def _quantile_counts(x, bounds, counts):
        T, N = x.shape
        Q = bounds.shape[1]
        n_blocks = (N + _BLOCK - 1) // _BLOCK
        for b in prange(n_blocks):
            a = b * _BLOCK
            z = min(N, a + _BLOCK)
            for t in range(T):
                for n in range(a, z):
                    v = x[t, n]
                    k = 0
                    for q in range(Q):
                        if v > bounds[n, q]:
                            k += 1
                    counts[n, k] += 1

    @njit(parallel=True, cache=True)
    def _row_moments_hist(x, edges, hist, sums):
        R, C = x.shape
        E = edges.shape[0]
        e0 = edges[0]
        inv_step = (E - 1) / (edges[E - 1] - edges[0]) if E > 1 and edges[E - 1] > edges[0] else 0.0
        for r in prange(R):  # one row per work item: two passes over it, as stats.row_moments
            row = x[r]
            s = 0.0
            for c in range(C):
                s += row[c]
            mean = s / C
            s2 = 0.0
            s3 = 0.0
            s4 = 0.0
            for c in range(C):
                d = row[c] - mean
                d2 = d * d
                s2 += d2
                s3 += d2 * d
                s4 += d2 * d2
            for c in range(C):
                hist[r, _bin(row[c], edges, e0, inv_step)] += 1
            sums[0, r] = mean
            sums[1, r] = s2
            sums[2, r] = s3
            sums[3, r] = s4

    @njit(cache=True, inline="always")
    def _lse_row(row):
        m = -np.inf
        for v in range(row.shape[0]):
            if row[v] > m:
                m = row[v]
        s = 0.0
        for v in range(row.shape[0]):
            s += np.exp(np.float64(row[v]) - m)
        return m + np.log(s)

    @njit(parallel=True, cache=True)
    def _logsumexp(x, out):
        for t in prange(x.shape[0]):
            out[t] = _lse_row(x[t])

    @njit(parallel=True, cache=True)
    def _token_metrics(x, nxt, base, base_lse, with_kl, loss, entropy, rank, kl):
        T, V = x.shape
        for t in prange(T):
            row = x[t]
            lse = _lse_row(row)
            h = 0.0
            d = 0.0
            for v in range(V):
                lp = np.float64(row[v]) - lse
                h -= np.exp(lp) * lp
                if with_kl:
                    lb = np.float64(base[t, v]) - base_lse[t]
                    d += np.exp(lb) * (lb - lp)
            entropy[t] = h
            if with_kl:
                kl[t] = d if d > 0.0 else 0.0
            j = nxt[t]
            if j >= 0:
                true = row[j]
                loss[t] = lse - np.float64(true)
                r = 0
                for v in range(V):
                    r += row[v] > true
                rank[t] = r

    @njit(parallel=True, cache=True)
    def _vocab(x, mpos, inv, vsum, bmax):
        T, N = x.shape
        n_blocks = (N + _BLOCK - 1) // _BLOCK
        for b in prange(n_blocks):
            a = b * _BLOCK
            z = min(N, a + _BLOCK)
            for t in range(T):
                r = mpos[t]
                u = inv[t]
                for n in range(a, z):
                    v = x[t, n]
                    if r >= 0:
                        vsum[r, n] += np.float64(v)
                    if v > bmax[u, n] or (v != v and bmax[u, n] == bmax[u, n]):
                        bmax[u, n] = v

    # ------------------------------------------------------------ ranked lists (total orders, in place)
    @njit(cache=True, inline="always")
    def _before(v1, i1, v2, i2):
        """(v1, i1) ranks before (v2, i2): higher value first, ties to the lower id; id −1 (empty) loses ties."""
        if v1 > v2:
            return True
        if v1 < v2 or i1 < 0:
            return False
        return i2 < 0 or i1 < i2

    @njit(cache=True, inline="always")
    def _insert_desc(vals, ids, n, v, i):
        """Insert (v, i) into row n of a list sorted by ``_before`` (k = its width) when it ranks before the last;
        returns the slot it took (entries from there on moved down one), or −1 when it did not enter."""
        k = vals.shape[1]
        if not _before(v, i, vals[n, k - 1], ids[n, k - 1]):
            return -1
        j = k - 1
        while j > 0 and _before(v, i, vals[n, j - 1], ids[n, j - 1]):
            vals[n, j] = vals[n, j - 1]
            ids[n, j] = ids[n, j - 1]
            j -= 1
        vals[n, j] = v
        ids[n, j] = i
        return j

    @njit(parallel=True, cache=True)
    def _top_merge(x, flat, vals, ids):
        T, N = x.shape
        for n in prange(N):
            for t in range(T):
                v = x[t, n]
                if v > -np.inf:  # −inf and NaN never enter (as the torch path's strict "> k-th value")
                    _insert_desc(vals, ids, n, v, flat[t])

    @njit(parallel=True, cache=True)
    def _text_merge(x, tok_row, tok_pos, batch_rows, vals, rows, poss):
        T, N = x.shape
        k = vals.shape[1]
        for n in prange(N):
            t = 0
            while t < T:
                r = tok_row[t]
                best = x[t, n]
                best_pos = tok_pos[t]
                t += 1
                while t < T and tok_row[t] == r:
                    if x[t, n] > best:  # the first position on ties
                        best = x[t, n]
                        best_pos = tok_pos[t]
                    t += 1
                if best > -np.inf:
                    j = _insert_desc(vals, rows, n, best, batch_rows[r])
                    if j >= 0:  # the positions follow their rows down the list
                        for h in range(k - 1, j, -1):
                            poss[n, h] = poss[n, h - 1]
                        poss[n, j] = best_pos

    @njit(parallel=True, cache=True)
    def _vocab_merge(bmax, uniq, umap, vals, ids):
        U, N = bmax.shape
        k = vals.shape[1]
        for n in prange(N):
            for j in range(k):  # listed tokens seen in the batch: their entry takes the batch max
                tok = ids[n, j]
                u = umap[tok] if tok >= 0 else -1
                if u >= 0:
                    if bmax[u, n] > vals[n, j]:
                        vals[n, j] = bmax[u, n]
                    bmax[u, n] = -np.inf  # compete through the entry, not twice
            for j in range(1, k):  # restore the order after those in-place maxima
                v = vals[n, j]
                i = ids[n, j]
                h = j
                while h > 0 and _before(v, i, vals[n, h - 1], ids[n, h - 1]):
                    vals[n, h] = vals[n, h - 1]
                    ids[n, h] = ids[n, h - 1]
                    h -= 1
                vals[n, h] = v
                ids[n, h] = i
            for u in range(U):
                v = bmax[u, n]
                if v > -np.inf:
                    _insert_desc(vals, ids, n, v, uniq[u])

    @njit(parallel=True, cache=True)
    def _quantile_samples(x, order, prio_sorted, flat, bounds, q_flat, q_prio, q_val, empty_prio):
        T, N = x.shape
        Q = bounds.shape[1]
        m = q_flat.shape[2]
        for n in prange(N):
            thr = np.empty(Q + 1, dtype=np.int64)
            for b in range(Q + 1):
                thr[b] = q_prio[n, b, m - 1] if q_flat[n, b, m - 1] >= 0 else empty_prio + 1
            top = thr.max()
            for s in range(T):
                p = prio_sorted[s]
                if p >= top:  # tokens come in priority order: none of the rest can enter any bin
                    break
                t = order[s]
                v = x[t, n]
                b = 0
                for q in range(Q):
                    if v > bounds[n, q]:
                        b += 1
                if p >= thr[b]:
                    continue
                f = flat[t]
                j = m - 1
                while j > 0 and (
                    q_flat[n, b, j - 1] < 0
                    or p < q_prio[n, b, j - 1]
                    or (p == q_prio[n, b, j - 1] and f < q_flat[n, b, j - 1])
                ):
                    q_flat[n, b, j] = q_flat[n, b, j - 1]
                    q_prio[n, b, j] = q_prio[n, b, j - 1]
                    q_val[n, b, j] = q_val[n, b, j - 1]
                    j -= 1
                q_flat[n, b, j] = f
                q_prio[n, b, j] = p
                q_val[n, b, j] = v
                thr[b] = q_prio[n, b, m - 1] if q_flat[n, b, m - 1] >= 0 else empty_prio + 1
                top = thr.max()


def _np(t: torch.Tensor) -> np.ndarray:
    """A numpy view sharing the tensor's memory (strided views too), so in-place updates land in the tensor."""
    return t.detach().numpy()


def moments_hist_(
    x: torch.Tensor,
    shift: torch.Tensor,
    edges: torch.Tensor,
    hist: torch.Tensor,
    sums: torch.Tensor,
    npos: torch.Tensor,
) -> None:
    """In place: ``hist`` int64 [N, E+1] += the paper's histogram of x float32 [T, N] on float32 ``edges`` [E];
    ``sums`` float64 [4, N] += Σ_t (x − shift)^k for k = 1..4 (``shift`` float64 [N]); ``npos`` int64 [N] +=
    #(x > 0)."""
    _moments_hist(_np(x), _np(shift), _np(edges), _np(hist), _np(sums), _np(npos))


def row_moments_hist(
    x: torch.Tensor, edges: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per row of x float64 [R, C]: ``stats.row_moments`` (two-pass population mean, variance, skew, NON-excess
    kurtosis; ``exclude`` is not supported) and ``stats.histogram_counts`` on float64 ``edges`` [E] (int64
    [R, E+1]), in one parallel sweep over the rows (``weights.cosine_summary``'s vocabulary blocks).
    Returns ``(mean, var, skew, kurt, hist)``."""
    x = x.contiguous()
    R, C = x.shape
    hist = torch.zeros(R, edges.numel() + 1, dtype=torch.int64)
    sums = torch.empty(4, R, dtype=torch.float64)
    _row_moments_hist(_np(x), _np(edges.to(torch.float64).contiguous()), _np(hist), _np(sums))
    return (*central_moments(C, *sums), hist)


def logsumexp(x: torch.Tensor) -> torch.Tensor:
    """float64 [T]: log Σ_v exp(x[t, v]) of float32 logits x [T, V] (accumulated in float64)."""
    out = torch.empty(x.shape[0], dtype=torch.float64)
    _logsumexp(_np(x.contiguous()), _np(out))
    return out


def token_metrics(
    logits: torch.Tensor, tokens: torch.Tensor, base: torch.Tensor | None = None, base_lse: torch.Tensor | None = None
) -> dict[str, torch.Tensor]:
    """``stats.token_metrics`` (loss, entropy, rank [B, P]) and, with ``base`` logits, ``stats.token_kl``
    (KL(p_base ‖ p), clamped at 0) of float32 logits [B, P, V] in one sweep per position, accumulated in float64,
    without the [B, P, V] temporaries of the torch path (the interventions' 49k-token vocabularies).
    ``base_lse``: ``logsumexp(base)`` when the same base serves several calls."""
    B, P, V = logits.shape
    x = logits.reshape(B * P, V).contiguous()
    nxt = torch.full((B, P), -1, dtype=torch.int64)
    if P > 1:
        nxt[:, :-1] = tokens[:, 1:]
    with_kl = base is not None
    b = base.reshape(B * P, V).contiguous() if with_kl else x[:1]
    if with_kl and base_lse is None:
        base_lse = logsumexp(b)
    lse_b = base_lse if with_kl else torch.zeros(1, dtype=torch.float64)
    loss = torch.zeros(B * P, dtype=torch.float64)
    entropy = torch.empty(B * P, dtype=torch.float64)
    rank = torch.zeros(B * P, dtype=torch.int32)
    kl = torch.zeros(B * P, dtype=torch.float64)
    _token_metrics(
        _np(x), _np(nxt.reshape(-1)), _np(b), _np(lse_b), with_kl, _np(loss), _np(entropy), _np(rank), _np(kl)
    )
    out = {"loss": loss.float().view(B, P), "entropy": entropy.float().view(B, P), "rank": rank.view(B, P)}
    if with_kl:
        out["kl"] = kl.float().view(B, P)
    return out


def quantile_counts_(x: torch.Tensor, bounds: torch.Tensor, counts: torch.Tensor) -> None:
    """In place: ``counts`` int64 [N, Q+1] += per neuron, the tokens in each bin cut by ``bounds`` float32 [N, Q]
    (ascending): bin k holds the values above exactly k boundaries (v ≤ b₀ → 0, …, v > b_{Q−1} → Q)."""
    _quantile_counts(_np(x), _np(bounds), _np(counts))


def vocab_(x: torch.Tensor, mpos: torch.Tensor, inv: torch.Tensor, vsum: torch.Tensor, bmax: torch.Tensor) -> None:
    """In place, per token t of x float32 [T, N]: ``vsum`` float64 [V', N] row ``mpos[t]`` += x[t] (tokens with
    mpos −1 are not summed); ``bmax`` float32 [U, N] row ``inv[t]`` = max(row, x[t]) (NaN wins, as amax)."""
    _vocab(_np(x), _np(mpos), _np(inv), _np(vsum), _np(bmax))


def top_merge_(x: torch.Tensor, flat: torch.Tensor, vals: torch.Tensor, ids: torch.Tensor) -> None:
    """In place: each neuron's top-k list ``vals`` float32 / ``ids`` int64 [N, k] (highest value first, ties to the
    lowest id, empty slots (−inf, −1) last) merged with the batch x [T, N] whose tokens have ids ``flat`` [T]."""
    _top_merge(_np(x), _np(flat), _np(vals), _np(ids))


def text_merge_(
    x: torch.Tensor,
    tok_row: torch.Tensor,
    tok_pos: torch.Tensor,
    batch_rows: torch.Tensor,
    vals: torch.Tensor,
    rows: torch.Tensor,
    poss: torch.Tensor,
) -> None:
    """In place: the text-level top-k lists [N, k] (value, dataset row, position of the row's max; ranked as
    ``top_merge_`` with the row as id) merged with each row's max of x [T, N]. Tokens are grouped by row:
    ``tok_row`` [T] (non-decreasing index into ``batch_rows`` [B]) and ``tok_pos`` [T] (position in the row)."""
    _text_merge(_np(x), _np(tok_row), _np(tok_pos), _np(batch_rows), _np(vals), _np(rows), _np(poss))


def vocab_merge_(
    bmax: torch.Tensor, uniq: torch.Tensor, umap: torch.Tensor, vals: torch.Tensor, ids: torch.Tensor
) -> None:
    """In place: the per-token max lists ``vals`` / ``ids`` [N, kv] merged with ``bmax`` float32 [U, N], the batch
    maxima of the tokens ``uniq`` [U] (``umap`` [V]: token id → its row of bmax, −1 when absent). A listed token
    keeps one entry, raised to its batch max; the others enter by rank. ``bmax`` is consumed (listed tokens'
    entries are set to −inf)."""
    _vocab_merge(_np(bmax), _np(uniq), _np(umap), _np(vals), _np(ids))


def quantile_samples_(
    x: torch.Tensor,
    order: torch.Tensor,
    prio_sorted: torch.Tensor,
    flat: torch.Tensor,
    bounds: torch.Tensor,
    q_flat: torch.Tensor,
    q_prio: torch.Tensor,
    q_val: torch.Tensor,
    empty_prio: int,
) -> None:
    """In place: per neuron and quantile bin, the m tokens of smallest (priority, flat) ``q_flat`` / ``q_prio`` /
    ``q_val`` [N, Q+1, m] (ascending; empty slots flat −1, priority ``empty_prio``, value NaN, last) merged with
    the batch. ``order`` [T]: the batch's tokens by (priority, flat); ``prio_sorted`` [T] their priorities. A
    token enters a bin only with a priority below the bin's current m-th (the torch path's rule)."""
    _quantile_samples(
        _np(x), _np(order), _np(prio_sorted), _np(flat), _np(bounds), _np(q_flat), _np(q_prio), _np(q_val), empty_prio
    )
