"""Factor evaluation and screening by rank IC (SPEC §5).

The rank IC of a factor at date D is the cross-sectional Spearman correlation between the
factor's values at D and the forward-return labels at D (``rotation.labels``): average ranks
(ties share the mean rank) over the funds where *both* are finite, then the Pearson correlation
of those ranks — what ``scipy.stats.spearmanr`` computes on the same pairs. Fewer than
``min_obs`` pairs, or a cross-section where either side is constant, gives NaN.

Because the IC at D reads only row D of the factor and row D of the label, it inherits their
timing: no look-ahead beyond the label's own horizon (``open(D+1+H)`` under ``T1_OPEN``).

Layout: numba kernels over numpy arrays (``*_kernel``) do the work; the pandas functions align
frames, call them and label the results. Kernels run in parallel with ``prange`` (over blocks
of dates, or of (factor, dates) for the batched kernel), except the one behind
``rank_ic_many``, which is serial and GIL-free and gets one factor per thread.
``benchmarks/ic.py`` measures them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import NamedTuple

import numba
import numpy as np
import pandas as pd

TRADING_DAYS = 252
DEFAULT_MIN_OBS = 5
# Up to this many pairs the ranks come from an O(n²) branch-free count that LLVM vectorises
# (the ETF universes have 20–100 funds); above it, from a sort.
_COUNT_RANK_MAX = 128


# -- kernels ----------------------------------------------------------------------------------
# Ranks are handled as *centred doubled ranks* d_i = 2·rank_i − (n + 1): integers (average
# ranks are multiples of 1/2) summing to zero, so the Pearson sums of ranks are exact integer
# sums and the only rounding is the final division.


@numba.njit(cache=True, nogil=True)
def _less_counts(values: np.ndarray, n: int, cnt: np.ndarray) -> None:
    """``cnt[i] = #{j < n : values[j] < values[i]}`` for i < n, eight i at a time.

    O(n²) but branch-free: each loaded value is compared against eight held in registers, which
    LLVM vectorises; for the 20–100 funds of an ETF universe it beats any sort. Works for
    float32 and float64 ``values``.
    """
    i = 0
    while i + 8 <= n:
        v0, v1, v2, v3 = values[i], values[i + 1], values[i + 2], values[i + 3]
        v4, v5, v6, v7 = values[i + 4], values[i + 5], values[i + 6], values[i + 7]
        c0 = c1 = c2 = c3 = c4 = c5 = c6 = c7 = np.int32(0)
        for j in range(n):
            w = values[j]
            c0 += np.int32(w < v0)
            c1 += np.int32(w < v1)
            c2 += np.int32(w < v2)
            c3 += np.int32(w < v3)
            c4 += np.int32(w < v4)
            c5 += np.int32(w < v5)
            c6 += np.int32(w < v6)
            c7 += np.int32(w < v7)
        cnt[i], cnt[i + 1], cnt[i + 2], cnt[i + 3] = c0, c1, c2, c3
        cnt[i + 4], cnt[i + 5], cnt[i + 6], cnt[i + 7] = c4, c5, c6, c7
        i += 8
    while i < n:
        v = values[i]
        c = np.int32(0)
        for j in range(n):
            c += np.int32(values[j] < v)
        cnt[i] = c
        i += 1


@numba.njit(cache=True, nogil=True)
def _rank_scratch(n_sym: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Scratch buffers for ``_centred_ranks`` on up to ``n_sym`` values."""
    n_pad = (n_sym + 7) // 8 * 8
    return (np.empty(n_pad, dtype=np.float32), np.empty(n_pad + n_sym, dtype=np.int32),
            np.empty(n_sym))


@numba.njit(cache=True, nogil=True)
def _count_ranks(values: np.ndarray, n: int, key: np.ndarray, cnt: np.ndarray) -> bool:
    """``cnt[i] = #{j : values[j] < values[i]}`` counted on float32 keys, for n up to
    ``_COUNT_RANK_MAX``; True when the keys have no ties (the counts are then a permutation of
    0..n-1 and exact: rounding to float32 is monotone and merged nothing)."""
    n_pad = (n + 7) // 8 * 8
    for i in range(n):
        key[i] = np.float32(values[i])
    for i in range(n, n_pad):
        key[i] = np.float32(np.inf)  # never below anything: adds nothing to a count
    _less_counts(key, n_pad, cnt)
    total = 0
    for i in range(n):
        total += cnt[i]
    return total == n * (n - 1) // 2


@numba.njit(cache=True, nogil=True)
def _tied_ranks(values: np.ndarray, n: int, out: np.ndarray, cnt: np.ndarray,
                rep: np.ndarray) -> None:
    """``out[:n]`` from the float32 counts of :func:`_count_ranks` when it found ties: recount
    in float64 if float32 merged distinct values, then give each tie group its mean rank."""
    for i in range(n):
        rep[cnt[i]] = values[i]
    for i in range(n):
        if rep[cnt[i]] != values[i]:  # float32 merged distinct values: count exactly
            _less_counts(values, n, cnt)
            break
    hist = cnt[(n + 7) // 8 * 8:]
    for i in range(n):
        hist[i] = 0
    for i in range(n):
        hist[cnt[i]] += 1
    for i in range(n):
        c = cnt[i]
        out[i] = 2 * c + hist[c] - n


@numba.njit(cache=True, nogil=True)
def _ranks_from_order(values: np.ndarray, order: np.ndarray, n: int, out: np.ndarray) -> None:
    """``out[:n]`` = centred doubled ranks of ``values[:n]`` from their sort ``order``: a tie
    group is a run of equal values in that order, sharing its mean rank."""
    i = 0
    while i < n:
        j = i
        v = values[order[i]]
        while j + 1 < n and values[order[j + 1]] == v:
            j += 1
        for q in range(i, j + 1):
            out[order[q]] = i + j + 1 - n
        i = j + 1


@numba.njit(cache=True, nogil=True)
def _centred_ranks(values: np.ndarray, n: int, out: np.ndarray, key: np.ndarray,
                   cnt: np.ndarray, rep: np.ndarray) -> None:
    """``out[:n]`` (int64) = 2·rank − (n+1), rank = 1-based average rank of ``values[:n]``.

    Ties share the mean rank, as ``scipy.stats.rankdata(method="average")``. With
    L_i = #{x_j < x_i}, tied values share L and distinct values have distinct L: a tie group is a
    set of equal L, of size g, with average rank L + (g + 1) / 2; without ties the L are a
    permutation of 0..n-1 (their sum is n(n-1)/2, which is how ties are detected).

    L is counted on float32 copies (eight lanes per vector instead of four) padded with +inf to
    a multiple of eight. Rounding to float32 is monotone, so the counts are exact unless two
    *different* float64 values collapse onto one float32; that shows up as a tie group whose
    float64 values differ, and the row is then recounted in float64. Above ``_COUNT_RANK_MAX``
    values a sort is used instead. ``key``, ``cnt``, ``rep`` come from ``_rank_scratch``.
    """
    if n > _COUNT_RANK_MAX:
        _ranks_from_order(values, np.argsort(values[:n], kind="mergesort"), n, out)
        return
    if _count_ranks(values, n, key, cnt):
        for i in range(n):
            out[i] = 2 * cnt[i] + 1 - n
        return
    _tied_ranks(values, n, out, cnt, rep)


@numba.njit(cache=True, nogil=True)
def _sum_squares(d: np.ndarray, n: int) -> int:
    s = 0
    for i in range(n):
        s += d[i] * d[i]
    return s


@numba.njit(cache=True, nogil=True)
def _rank_corr(dx: np.ndarray, dy: np.ndarray, n: int, syy: int) -> float:
    """Pearson correlation of centred doubled ranks (``syy`` = Σ dy², precomputed)."""
    sxy = 0
    sxx = 0
    for i in range(n):
        sxy += dx[i] * dy[i]
        sxx += dx[i] * dx[i]
    return _corr_from_sums(sxy, sxx, syy)


@numba.njit(cache=True, nogil=True)
def _corr_from_sums(sxy: int, sxx: int, syy: int) -> float:
    """Pearson correlation from the exact integer sums of centred doubled ranks."""
    if sxx == 0 or syy == 0:  # a constant side: undefined, as in scipy
        return np.nan
    r = sxy / math.sqrt(float(sxx) * float(syy))
    return min(1.0, max(-1.0, r))  # |r| <= 1 exactly; only the final rounding could exceed it


@numba.njit(cache=True, nogil=True)
def _rank_ic_rows(factor: np.ndarray, label: np.ndarray, out: np.ndarray, start: int, stop: int,
                  min_obs: int) -> None:
    """Rank IC of rows ``start:stop`` into ``out`` (one set of buffers, reused per row)."""
    n_sym = factor.shape[1]
    xb = np.empty(n_sym)
    yb = np.empty(n_sym)
    dx = np.empty(n_sym, dtype=np.int64)
    dy = np.empty(n_sym, dtype=np.int64)
    key, cnt, rep = _rank_scratch(n_sym)
    for t in range(start, stop):
        n = 0
        for j in range(n_sym):
            x = factor[t, j]
            y = label[t, j]
            if np.isfinite(x) and np.isfinite(y):
                xb[n] = x
                yb[n] = y
                n += 1
        if n < min_obs:
            out[t] = np.nan
            continue
        _centred_ranks(xb, n, dx, key, cnt, rep)
        _centred_ranks(yb, n, dy, key, cnt, rep)
        out[t] = _rank_corr(dx, dy, n, _sum_squares(dy, n))


@numba.njit(cache=True, parallel=True)
def rank_ic_kernel(factor: np.ndarray, label: np.ndarray, min_obs: int = DEFAULT_MIN_OBS,
                   n_chunks: int = 64) -> np.ndarray:
    """Daily rank IC of one (dates × symbols) factor against a label of the same shape.

    Dates are split into ``n_chunks`` blocks run in parallel, each with its own scratch buffers.
    """
    n_dates = factor.shape[0]
    out = np.full(n_dates, np.nan)
    n_chunks = max(1, min(n_dates, n_chunks))
    for c in numba.prange(n_chunks):
        _rank_ic_rows(factor, label, out, c * n_dates // n_chunks, (c + 1) * n_dates // n_chunks,
                      min_obs)
    return out


@numba.njit(cache=True, parallel=True)
def _label_ranks(label: np.ndarray, min_obs: int
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per date, computed once and reused by every factor: the label's finite funds (count
    ``m`` and positions ``where[:m]``), their centred doubled ranks and Σ d², and ``order[:m]``,
    the indices into ``where`` sorted by label value (ties: equal ranks), from which the ranks
    on any subset of those funds follow in one pass (:func:`_subset_ranks`)."""
    n_dates, n_sym = label.shape
    count = np.zeros(n_dates, dtype=np.int64)
    where = np.empty((n_dates, n_sym), dtype=np.int64)
    order = np.empty((n_dates, n_sym), dtype=np.int64)
    ranks = np.empty((n_dates, n_sym), dtype=np.int64)
    sumsq = np.zeros(n_dates, dtype=np.int64)
    for t in numba.prange(n_dates):
        values = np.empty(n_sym)
        key, cnt, rep = _rank_scratch(n_sym)
        m = 0
        for j in range(n_sym):
            y = label[t, j]
            if np.isfinite(y):
                where[t, m] = j
                values[m] = y
                m += 1
        count[t] = m
        if m >= min_obs:
            _centred_ranks(values, m, ranks[t], key, cnt, rep)
            sumsq[t] = _sum_squares(ranks[t], m)
            order[t, :m] = np.argsort(values[:m], kind="mergesort")
    return count, where, order, ranks, sumsq


@numba.njit(cache=True, nogil=True)
def _subset_ranks(order: np.ndarray, ranks: np.ndarray, m: int, pos: np.ndarray, n: int,
                  out: np.ndarray) -> None:
    """Centred doubled ranks of the label on the ``n`` of its ``m`` funds with ``pos[q] >= 0``,
    written to ``out[pos[q]]``: one walk up the label's sorted ``order``, tie groups being runs
    of equal full-set ``ranks`` — exactly the ranks a fresh ranking of the subset gives."""
    below = 0
    i = 0
    while i < m:
        tie = ranks[order[i]]
        j = i
        size = 0
        while j < m and ranks[order[j]] == tie:
            size += pos[order[j]] >= 0
            j += 1
        for u in range(i, j):
            p = pos[order[u]]
            if p >= 0:
                out[p] = 2 * below + size - n
        below += size
        i = j


@numba.njit(cache=True, nogil=True)
def _ranked_rows(factor: np.ndarray, count: np.ndarray, where: np.ndarray, order: np.ndarray,
                 ranks: np.ndarray, sumsq: np.ndarray, min_obs: int, out: np.ndarray,
                 start: int, stop: int) -> None:
    """``out[t]`` = rank IC of factor row ``t`` for ``start <= t < stop`` (one set of scratch
    buffers for the block) against the label ranked once by :func:`_label_ranks`.

    Usual case — the factor is finite on all the label's ``m`` funds and has no ties: then
    d_i = 2·L_i + 1 − m and Σ dy = 0, so Σ dx·dy = 2 Σ L_i·dy_i and Σ dx² = (m³ − m)/3, the same
    integers the ranks themselves give. A factor with ties gets its mean ranks. Where the
    factor misses some of the label's funds the label's ranks on the common funds come from its
    sorted order (:func:`_subset_ranks`) rather than a fresh ranking. Everything is integer
    until the final division, so the result is bitwise that of ranking both sides afresh.
    """
    n_sym = factor.shape[1]
    xb = np.empty(n_sym)
    dx = np.empty(n_sym, dtype=np.int64)
    dy = np.empty(n_sym, dtype=np.int64)
    pos = np.empty(n_sym, dtype=np.int64)
    key, cnt, rep = _rank_scratch(n_sym)
    for t in range(start, stop):
        m = count[t]
        if m < min_obs:
            out[t] = np.nan
            continue
        n = 0
        if m == n_sym:  # every fund: contiguous reads
            for q in range(m):
                x = factor[t, q]
                xb[q] = x
                n += np.isfinite(x)
        else:
            for q in range(m):
                x = factor[t, where[t, q]]
                xb[q] = x
                n += np.isfinite(x)
        if n == m:
            y = ranks[t]
            syy = sumsq[t]
        else:
            if n < min_obs:
                out[t] = np.nan
                continue
            n = 0
            for q in range(m):
                if np.isfinite(xb[q]):
                    xb[n] = xb[q]
                    pos[q] = n
                    n += 1
                else:
                    pos[q] = -1
            _subset_ranks(order[t], ranks[t], m, pos, n, dy)
            y = dy
            syy = _sum_squares(dy, n)
        if n <= _COUNT_RANK_MAX and _count_ranks(xb, n, key, cnt):
            sxy = 0
            for i in range(n):
                sxy += cnt[i] * y[i]
            out[t] = _corr_from_sums(2 * sxy, (n * n * n - n) // 3, syy)
        else:
            if n <= _COUNT_RANK_MAX:
                _tied_ranks(xb, n, dx, cnt, rep)
            else:
                _centred_ranks(xb, n, dx, key, cnt, rep)
            out[t] = _rank_corr(dx, y, n, syy)


@numba.njit(cache=True, nogil=True)
def rank_ic_ranked_kernel(factor: np.ndarray, count: np.ndarray, where: np.ndarray,
                          order: np.ndarray, ranks: np.ndarray, sumsq: np.ndarray,
                          min_obs: int, out: np.ndarray) -> None:
    """Daily rank IC of one (dates × symbols) factor, C- or Fortran-ordered (a pandas frame's
    own array, uncopied), against a label ranked once by :func:`_label_ranks`, into ``out``.

    Serial and GIL-free: :func:`rank_ic_many` runs one factor per thread, so threads never wait
    on each other between factors.
    """
    _ranked_rows(factor, count, where, order, ranks, sumsq, min_obs, out, 0, factor.shape[0])


@numba.njit(cache=True, parallel=True)
def rank_ic_batch_kernel(factors: np.ndarray, label: np.ndarray,
                         min_obs: int = DEFAULT_MIN_OBS, n_chunks: int = 64) -> np.ndarray:
    """Daily rank IC of many factors ``(factors, dates, symbols)`` → ``(dates, factors)``.

    The label of a date is ranked once and reused for every factor (see
    :func:`_ranked_rows`). Work items are (factor, block of dates), so each reads its
    factor's rows in memory order.
    """
    n_factors, n_dates = factors.shape[0], factors.shape[1]
    count, where, order, ranks, sumsq = _label_ranks(label, min_obs)
    out = np.empty((n_factors, n_dates))
    n_blocks = max(1, min(n_dates, -(-n_chunks // max(n_factors, 1))))
    for item in numba.prange(n_factors * n_blocks):
        k = item // n_blocks
        b = item % n_blocks
        _ranked_rows(factors[k], count, where, order, ranks, sumsq, min_obs, out[k],
                     b * n_dates // n_blocks, (b + 1) * n_dates // n_blocks)
    return np.ascontiguousarray(out.T)


@numba.njit(cache=True, nogil=True)
def _rank_date(factors: np.ndarray, t: int, own: np.ndarray, ordered: np.ndarray,
               count: np.ndarray, sumsq: np.ndarray, group: np.ndarray, finite: np.ndarray,
               xb: np.ndarray, dx: np.ndarray) -> None:
    """Every factor of date ``t`` ranked once over its own finite funds: ``own[k, j]`` its
    centred doubled rank (float64, exact; 0 where missing), Σ of their squares, the funds in
    value order (``ordered[k, :count[k]]``, for ranks on a subset) and ``group[k]``, the first
    factor with the same finite funds."""
    n_factors, n_sym = own.shape
    for k in range(n_factors):
        n = 0
        for j in range(n_sym):
            x = factors[k, t, j]
            ok = np.isfinite(x)
            finite[k, j] = ok
            own[k, j] = 0.0
            if ok:
                xb[n] = x
                ordered[k, n] = j
                n += 1
        count[k] = n
        total = 0
        if n > 0:
            # One sort gives both the value order and the ranks (a tie group: a run of equal
            # values, its mean rank), as _centred_ranks' sorting branch computes them.
            order = np.argsort(xb[:n])
            _ranks_from_order(xb, order, n, dx)
            for q in range(n):
                own[k, ordered[k, q]] = dx[q]
                total += dx[q] * dx[q]
            for q in range(n):
                dx[q] = ordered[k, order[q]]
            ordered[k, :n] = dx[:n]
        sumsq[k] = total
        group[k] = k
        for g in range(k):
            if group[g] == g and count[g] == n:
                same = True
                for j in range(n_sym):
                    if finite[g, j] != finite[k, j]:
                        same = False
                        break
                if same:
                    group[k] = g
                    break


@numba.njit(cache=True, nogil=True, fastmath={"reassoc"})
def _exact_dot(x: np.ndarray, y: np.ndarray) -> float:
    """Σ x·y of integer-valued float64 vectors whose partial sums stay below 2**53: every
    partial sum is exact, so any summation order (vectorised, reassociated) gives the same."""
    s = 0.0
    for j in range(x.shape[0]):
        s += x[j] * y[j]
    return s


@numba.njit(cache=True, nogil=True)
def _pairwise_rows(factors: np.ndarray, pair_i: np.ndarray, pair_j: np.ndarray, min_obs: int,
                   out: np.ndarray, start: int, stop: int) -> None:
    """Dates ``start:stop`` of :func:`pairwise_rank_corr_daily_kernel` (one set of buffers)."""
    n_factors, n_sym = factors.shape[0], factors.shape[2]
    own = np.empty((n_factors, n_sym))
    ordered = np.empty((n_factors, n_sym), dtype=np.int64)
    finite = np.empty((n_factors, n_sym), dtype=np.bool_)
    count = np.empty(n_factors, dtype=np.int64)
    sumsq = np.empty(n_factors, dtype=np.int64)
    group = np.empty(n_factors, dtype=np.int64)
    xb = np.empty(n_sym)
    dx = np.empty(n_sym, dtype=np.int64)
    da = np.zeros(n_sym, dtype=np.int64)
    db = np.zeros(n_sym, dtype=np.int64)
    pa = np.empty(n_sym, dtype=np.int64)
    pb = np.empty(n_sym, dtype=np.int64)
    for t in range(start, stop):
        _rank_date(factors, t, own, ordered, count, sumsq, group, finite, xb, dx)
        for p in range(pair_i.shape[0]):
            a = pair_i[p]
            b = pair_j[p]
            if group[a] == group[b]:  # the same funds: their own ranks are the pair's
                if count[a] < min_obs:
                    continue
                sxy = int(_exact_dot(own[a], own[b]))
                r = _corr_from_sums(sxy, sumsq[a], sumsq[b])
            else:
                n = 0
                for j in range(n_sym):  # each side keeps the funds where the other is finite
                    pa[j] = j if finite[b, j] else -1
                    pb[j] = j if finite[a, j] else -1
                    n += finite[a, j] and finite[b, j]
                if n < min_obs:
                    continue
                _subset_ranks(ordered[a], own[a], count[a], pa, n, da)
                _subset_ranks(ordered[b], own[b], count[b], pb, n, db)
                sxy = 0
                sxx = 0
                syy = 0
                for j in range(n_sym):
                    if finite[a, j] and finite[b, j]:
                        sxy += da[j] * db[j]
                        sxx += da[j] * da[j]
                        syy += db[j] * db[j]
                r = _corr_from_sums(sxy, sxx, syy)
            if np.isfinite(r):
                out[p, t] = r


@numba.njit(cache=True, parallel=True)
def pairwise_rank_corr_daily_kernel(factors: np.ndarray, pair_i: np.ndarray,
                                    pair_j: np.ndarray, min_obs: int = DEFAULT_MIN_OBS,
                                    n_chunks: int = 64) -> np.ndarray:
    """Cross-sectional rank correlation of each listed factor pair per date: ``(pairs, dates)``,
    NaN where fewer than ``min_obs`` funds have both or the correlation is undefined.

    Blocks of dates run in parallel. On a date each factor is ranked once
    (:func:`_rank_date`); a pair whose finite funds coincide correlates those ranks (one exact
    dot product), otherwise both sides' ranks on the common funds follow from their value
    order (:func:`_subset_ranks`). Integer sums throughout, so the result is bitwise that
    of ranking each pair's common funds afresh (exact Spearman).
    """
    n_dates = factors.shape[1]
    out = np.full((pair_i.shape[0], n_dates), np.nan)
    n_chunks = max(1, min(n_dates, n_chunks))
    for c in numba.prange(n_chunks):
        _pairwise_rows(factors, pair_i, pair_j, min_obs, out, c * n_dates // n_chunks,
                       (c + 1) * n_dates // n_chunks)
    return out


@numba.njit(cache=True)
def mean_finite_kernel(daily: np.ndarray, lo: int, hi: int) -> np.ndarray:
    """Mean of the finite values of each row of ``daily[:, lo:hi]``, summed in date order
    (NaN for a row without any)."""
    out = np.full(daily.shape[0], np.nan)
    for p in range(daily.shape[0]):
        total = 0.0
        count = 0
        for t in range(lo, hi):
            r = daily[p, t]
            if np.isfinite(r):
                total += r
                count += 1
        if count > 0:
            out[p] = total / count
    return out


# -- pandas wrappers --------------------------------------------------------------------------
def _as_array(panel: pd.DataFrame, index: pd.Index, columns: pd.Index) -> np.ndarray:
    return np.ascontiguousarray(
        panel.reindex(index=index, columns=columns).to_numpy(dtype=np.float64)
    )


def rank_ic(factor: pd.DataFrame, label: pd.DataFrame, min_obs: int = DEFAULT_MIN_OBS
            ) -> pd.Series:
    """Daily rank IC, indexed by the factor's dates (NaN where it cannot be computed).

    Funds are the factor's columns; the label is aligned to them (a fund or date missing from
    the label has no pair).
    """
    label_arr = _as_array(label, factor.index, factor.columns)
    values = rank_ic_kernel(_as_array(factor, factor.index, factor.columns), label_arr,
                            int(min_obs))
    return pd.Series(values, index=factor.index, name="rank_ic")


def _panel_array(panel: pd.DataFrame, index: pd.Index, columns: pd.Index) -> np.ndarray:
    """A frame's float64 values on ``index × columns``: pandas' own array when the frame is
    already aligned (no copy; Fortran-ordered for a frame built column by column), otherwise a
    reindexed copy. Always C- or Fortran-contiguous, the two layouts the kernels compile for."""
    if not (panel.index.equals(index) and panel.columns.equals(columns)):
        panel = panel.reindex(index=index, columns=columns)
    values = panel.to_numpy(dtype=np.float64)
    if values.flags.c_contiguous or values.flags.f_contiguous:
        return values
    return np.ascontiguousarray(values)


def stack_factors(factors: Mapping[str, pd.DataFrame], index: pd.Index, columns: pd.Index,
                  out: np.ndarray | None = None) -> np.ndarray:
    """A ``(factors, dates, symbols)`` float64 array of the factors aligned to one frame
    (written into ``out[:len(factors)]`` when given, to reuse a buffer)."""
    shape = (len(factors), len(index), len(columns))
    out = np.empty(shape) if out is None else out[: len(factors)]
    for k, panel in enumerate(factors.values()):
        out[k] = _panel_array(panel, index, columns)
    return out


def _union_index(frames: Sequence[pd.DataFrame]) -> pd.Index:
    index = frames[0].index
    for frame in frames[1:]:
        if not frame.index.equals(index):
            index = index.union(frame.index)
    return index


def _union_columns(frames: Sequence[pd.DataFrame]) -> pd.Index:
    columns = frames[0].columns
    for frame in frames[1:]:
        if not frame.columns.equals(columns):
            columns = columns.union(frame.columns)
    return columns


def rank_ic_many(factors: Mapping[str, pd.DataFrame], label: pd.DataFrame,
                 min_obs: int = DEFAULT_MIN_OBS) -> pd.DataFrame:
    """Daily rank IC of every factor against one label: a (dates × factors) frame.

    Dates and funds are the union over the factors; identical to ``rank_ic`` per factor. The
    label is ranked once; each factor then goes through the kernel straight from pandas' own
    array (a copy only for a frame that needs reindexing), so nothing is stacked and memory
    does not grow with the number of factors. Factors are shared out to ``numba`` 's number of
    threads, each taking the next factor when done with one (the kernel releases the GIL).
    """
    names = list(factors)
    if not names:
        return pd.DataFrame(index=label.index, dtype=np.float64)
    frames = list(factors.values())
    index = _union_index(frames)
    columns = _union_columns(frames)
    min_obs = int(min_obs)
    ranked = _label_ranks(_as_array(label, index, columns), min_obs)
    out = np.empty((len(names), len(index)))
    todo = iter(range(len(frames)))  # shared: next() under the GIL hands each factor out once

    def work() -> None:
        for k in todo:
            rank_ic_ranked_kernel(_panel_array(frames[k], index, columns), *ranked, min_obs,
                                  out[k])

    n_threads = min(numba.get_num_threads(), len(frames))
    if n_threads <= 1:
        work()
    else:
        with ThreadPoolExecutor(n_threads) as pool:
            for done in [pool.submit(work) for _ in range(n_threads)]:
                done.result()
    return pd.DataFrame(out.T, index=index, columns=pd.Index(names, name="factor"), copy=False)


def ic_decay(factor: pd.DataFrame, labels_by_horizon: Mapping[int, pd.DataFrame],
             direction: int = 1, min_obs: int = DEFAULT_MIN_OBS) -> pd.DataFrame:
    """``ic_summary`` per horizon (rows) — how predictive power fades with the horizon."""
    rows = {
        int(h): ic_summary(rank_ic(factor, label, min_obs), int(h), direction)
        for h, label in sorted(labels_by_horizon.items())
    }
    out = pd.DataFrame.from_dict(rows, orient="index")
    out.index.name = "horizon"
    return out


def rank_autocorrelation(factor: pd.DataFrame, lag: int = 1,
                         min_obs: int = DEFAULT_MIN_OBS) -> pd.Series:
    """Cross-sectional rank correlation between factor(D) and factor(D - lag), per date."""
    if lag < 1:
        raise ValueError(f"lag must be >= 1, got {lag}")
    return rank_ic(factor, factor.shift(lag), min_obs).rename("rank_autocorrelation")


def factor_turnover(factor: pd.DataFrame, lag: int = 1, min_obs: int = DEFAULT_MIN_OBS
                    ) -> float:
    """Mean rank autocorrelation at ``lag``: near 1 = slow factor, cheap to trade.

    Unlike alphalens (which ranks each date over all its funds), both dates are ranked over the
    funds present on both, i.e. an exact Spearman correlation.
    """
    return float(rank_autocorrelation(factor, lag, min_obs).mean())


def mean_pairwise_correlation(factors: Mapping[str, pd.DataFrame],
                              min_obs: int = DEFAULT_MIN_OBS) -> pd.DataFrame:
    """Symmetric (factor × factor) mean over dates of the cross-sectional rank correlation.

    The redundancy measure of ``select_factors``: two factors that order the funds the same way
    on most days carry the same bet, whatever their IC.
    """
    names = list(factors)
    daily = daily_pairwise_correlation(factors, min_obs)
    return pairwise_mean(names, daily, 0, daily.shape[1])


def daily_pairwise_correlation(factors: Mapping[str, pd.DataFrame],
                               min_obs: int = DEFAULT_MIN_OBS) -> np.ndarray:
    """Per-date rank correlation of every factor pair ``(i < j)`` in ``np.triu_indices``
    order: ``(pairs, dates)`` over the union of the factors' dates."""
    k = len(factors)
    if k < 2:
        return np.empty((0, 0))
    frames = list(factors.values())
    index = _union_index(frames)
    columns = _union_columns(frames)
    pi, pj = np.triu_indices(k, 1)
    return pairwise_rank_corr_daily_kernel(stack_factors(factors, index, columns),
                                           pi.astype(np.int64), pj.astype(np.int64),
                                           int(min_obs))


def pairwise_mean(names: Sequence[str], daily: np.ndarray, lo: int, hi: int) -> pd.DataFrame:
    """The (factor × factor) matrix of :func:`mean_pairwise_correlation` from the per-date
    correlations of :func:`daily_pairwise_correlation`, over its dates ``lo:hi``."""
    k = len(names)
    out = np.eye(k)
    if k > 1:
        pi, pj = np.triu_indices(k, 1)
        values = mean_finite_kernel(daily, int(lo), int(hi))
        out[pi, pj] = values
        out[pj, pi] = values
    labels = pd.Index(list(names), name="factor")
    return pd.DataFrame(out, index=labels, columns=labels)


# -- statistics -------------------------------------------------------------------------------
def bartlett_lag(n: int) -> int:
    """Newey–West (1994) automatic lag for the Bartlett kernel: floor(4 (n/100)^(2/9))."""
    return math.floor(4.0 * (n / 100.0) ** (2.0 / 9.0)) if n > 0 else 0


def newey_west_se(values: np.ndarray, lag: int) -> float:
    """HAC standard error of the mean of ``values`` (Bartlett weights 1 - l/(lag+1)).

    ``LRV = γ0 + 2 Σ_{l=1..lag} (1 - l/(lag+1)) γl`` with ``γl = Σ (x_t - x̄)(x_{t-l} - x̄) / n``
    and ``se = sqrt(LRV / n)``: the textbook estimator, no small-sample correction (the same as
    statsmodels' ``OLS(x, 1).fit(cov_type="HAC", cov_kwds={"maxlags": lag})``).
    """
    x = np.asarray(values, dtype=np.float64)
    n = x.size
    if n < 2:
        return np.nan
    e = x - x.mean()
    lrv = float(e @ e) / n
    for lg in range(1, min(lag, n - 1) + 1):
        lrv += 2.0 * (1.0 - lg / (lag + 1.0)) * float(e[lg:] @ e[:-lg]) / n
    return math.sqrt(lrv / n) if lrv > 0 else np.nan


def ic_summary(ic: pd.Series, horizon: int, direction: int = 1) -> dict[str, float]:
    """Mean, spread and significance of a daily IC series for one horizon.

    - ``icir`` = mean / std (per day); ``icir_annual`` = icir × sqrt(252 / H): with a horizon of
      H sessions there are 252/H non-overlapping bets a year.
    - ``t_nw``: mean / Newey–West standard error with lag = max(H - 1, Bartlett automatic lag),
      because labels of consecutive dates overlap by H - 1 sessions and their ICs are
      autocorrelated; the plain t = mean/(std/√n) would overstate significance about √H-fold.
      NaN dates are dropped and the rest treated as consecutive.
    - ``p_value``: two-sided, from the normal distribution (the HAC t is asymptotic).
    - ``positive_rate`` / ``negative_rate``: share of dates with IC > 0 / < 0; ``hit_rate``:
      the share in the declared ``direction`` (direction × IC > 0), the one selection uses.
    """
    x = ic.dropna().to_numpy(dtype=np.float64)
    n = x.size
    lag = max(int(horizon) - 1, bartlett_lag(n))
    mean = float(x.mean()) if n else np.nan
    std = float(x.std(ddof=1)) if n > 1 else np.nan
    icir = mean / std if n > 1 and std > 0 else np.nan
    se = newey_west_se(x, lag)
    t_nw = mean / se if np.isfinite(se) and se > 0 else np.nan
    from scipy import stats  # seconds to import: only where a summary is made

    p_value = float(2.0 * stats.norm.sf(abs(t_nw))) if np.isfinite(t_nw) else np.nan
    return {
        "horizon": float(horizon),
        "direction": float(direction),
        "count": float(n),
        "mean_ic": mean,
        "std_ic": std,
        "icir": icir,
        "icir_annual": icir * math.sqrt(TRADING_DAYS / int(horizon)),
        "nw_lag": float(lag),
        "t_nw": t_nw,
        "p_value": p_value,
        "positive_rate": float(np.mean(x > 0)) if n else np.nan,
        "negative_rate": float(np.mean(x < 0)) if n else np.nan,
        "hit_rate": float(np.mean(direction * x > 0)) if n else np.nan,
    }


def ic_summary_table(ics: pd.DataFrame, horizon: int,
                     directions: Mapping[str, int] | None = None) -> pd.DataFrame:
    """``ic_summary`` of every column of a ``rank_ic_many`` frame: one row per factor."""
    directions = directions or {}
    rows = {name: ic_summary(ics[name], horizon, int(directions.get(name, 1)))
            for name in ics.columns}
    out = pd.DataFrame.from_dict(rows, orient="index")
    out.index.name = "factor"
    return out


def ic_by_year(ic: pd.Series, horizon: int | None = None) -> pd.DataFrame:
    """Calendar-year breakdown: count, mean, std, ICIR, positive rate (and t_nw with a horizon).

    A factor whose mean IC comes from one year is a regime bet, not a signal.
    """
    clean = ic.dropna()
    rows: dict[int, dict[str, float]] = {}
    for year, part in clean.groupby(pd.DatetimeIndex(clean.index).year):
        x = part.to_numpy(dtype=np.float64)
        std = float(x.std(ddof=1)) if x.size > 1 else np.nan
        row = {"count": float(x.size), "mean_ic": float(x.mean()), "std_ic": std,
               "icir": float(x.mean()) / std if x.size > 1 and std > 0 else np.nan,
               "positive_rate": float(np.mean(x > 0))}
        if horizon is not None:
            row["t_nw"] = ic_summary(part, horizon)["t_nw"]
        rows[int(year)] = row
    out = pd.DataFrame.from_dict(rows, orient="index")
    out.index.name = "year"
    return out


# -- selection --------------------------------------------------------------------------------
def benjamini_hochberg(pvalues: Sequence[float] | np.ndarray | pd.Series, alpha: float = 0.05
                       ) -> np.ndarray:
    """Boolean mask of hypotheses rejected by the Benjamini–Hochberg step-up at FDR ``alpha``.

    Sort p ascending, find the largest k with p_(k) <= k·alpha/m, reject the k smallest. A NaN
    p-value counts as a test (it is in m) that is never rejected.
    """
    p = np.asarray(pvalues, dtype=np.float64)
    m = p.size
    mask = np.zeros(m, dtype=bool)
    if m == 0:
        return mask
    filled = np.where(np.isfinite(p), p, np.inf)
    order = np.argsort(filled, kind="mergesort")
    passing = np.nonzero(filled[order] <= alpha * np.arange(1, m + 1) / m)[0]
    if passing.size:
        mask[order[: passing[-1] + 1]] = True
    return mask


class FactorSelection(NamedTuple):
    """Selected factor names (strongest |ICIR| first) and the per-factor reason table."""

    selected: list[str]
    reasons: pd.DataFrame


def select_factors(summaries: pd.DataFrame, min_abs_ic: float = 0.02,
                   min_positive_rate: float = 0.5, alpha: float = 0.05,
                   correlations: pd.DataFrame | None = None, max_corr: float = 0.7,
                   directions: Mapping[str, int] | None = None) -> FactorSelection:
    """SPEC §5 screen over ``ic_summary_table`` rows (one per factor, all for one horizon).

    1. |mean IC| >= ``min_abs_ic``;
    2. hit rate in the declared direction >= ``min_positive_rate``, and the mean IC has the
       declared sign (portfolios sign factors by their declaration, so a factor that works
       backwards would be traded backwards);
    3. Benjamini–Hochberg at FDR ``alpha`` over *all* tested factors (the rows of
       ``summaries``), two-sided p-values from the Newey–West t;
    4. redundancy: the survivors, strongest |ICIR| first (ties by name), are kept unless their
       |mean pairwise correlation| (``mean_pairwise_correlation``) with an already *kept*
       factor is >= ``max_corr`` — so of every such pair the stronger stays, and a factor
       whose only twin was itself dropped is not dropped for it.

    ``summaries`` needs ``mean_ic``, ``icir``, ``positive_rate``, ``negative_rate``, ``p_value``
    and optionally ``direction`` (default +1), which ``directions`` overrides. The reason table
    has the pass/fail flags and, for every factor, the first test it failed or why it was kept.
    """
    table = summaries.copy()
    names = [str(n) for n in table.index]
    table.index = pd.Index(names, name="factor")
    declared = (table["direction"].astype(float) if "direction" in table
                else pd.Series(1.0, index=table.index))
    if directions:
        override = pd.Series({str(k): float(v) for k, v in directions.items()})
        declared = override.reindex(table.index).fillna(declared)
    declared = np.sign(declared).replace(0.0, 1.0)
    mean_ic = table["mean_ic"].astype(float)
    hit = table["positive_rate"].astype(float).where(declared > 0,
                                                     table["negative_rate"].astype(float))
    out = pd.DataFrame(index=table.index)
    out["direction"] = declared
    out["mean_ic"] = mean_ic
    out["icir"] = table["icir"].astype(float)
    out["hit_rate"] = hit
    out["p_value"] = table["p_value"].astype(float)
    out["pass_ic"] = mean_ic.abs() >= min_abs_ic
    out["pass_sign"] = np.sign(mean_ic) == declared
    out["pass_rate"] = hit >= min_positive_rate
    out["pass_fdr"] = benjamini_hochberg(out["p_value"].to_numpy(), alpha)
    candidates = out.index[out["pass_ic"] & out["pass_sign"] & out["pass_rate"]
                           & out["pass_fdr"]]
    reasons = pd.Series("", index=out.index, dtype=object)
    for name in out.index:
        row = out.loc[name]
        if not row["pass_ic"]:
            reasons[name] = f"|mean IC| {abs(row['mean_ic']):.4f} < {min_abs_ic}"
        elif not row["pass_sign"]:
            reasons[name] = (f"mean IC {row['mean_ic']:+.4f} opposes declared direction "
                             f"{int(row['direction']):+d}")
        elif not row["pass_rate"]:
            reasons[name] = f"hit rate {row['hit_rate']:.3f} < {min_positive_rate}"
        elif not row["pass_fdr"]:
            reasons[name] = f"not significant after BH-FDR at {alpha} (p={row['p_value']:.3g})"
    strength = out.loc[candidates, "icir"].abs()
    ranked = sorted(candidates, key=lambda nm: (-strength[nm], nm))
    kept: list[str] = []
    out["redundant_with"] = ""
    for name in ranked:
        twin = None
        if correlations is not None:
            for other in kept:
                corr = _pair_corr(correlations, name, other)
                if np.isfinite(corr) and abs(corr) >= max_corr:
                    twin = (other, corr)
                    break
        if twin is None:
            kept.append(name)
            reasons[name] = (f"selected: |mean IC| {abs(out.at[name, 'mean_ic']):.4f}, hit rate "
                             f"{out.at[name, 'hit_rate']:.3f}, p={out.at[name, 'p_value']:.3g}, "
                             f"|ICIR| {strength[name]:.3f}")
        else:
            out.at[name, "redundant_with"] = twin[0]
            reasons[name] = (f"redundant: |corr| {abs(twin[1]):.3f} >= {max_corr} with "
                             f"{twin[0]} (stronger |ICIR| {strength[twin[0]]:.3f} vs "
                             f"{strength[name]:.3f})")
    out["selected"] = out.index.isin(kept)
    out["reason"] = reasons
    return FactorSelection(selected=kept, reasons=out)


def _pair_corr(correlations: pd.DataFrame, a: str, b: str) -> float:
    """|corr| lookup that tolerates a one-sided (triangular) matrix."""
    for x, y in ((a, b), (b, a)):
        if x in correlations.index and y in correlations.columns:
            value = float(correlations.at[x, y])
            if np.isfinite(value):
                return value
    return np.nan
