"""openai-whisper's dtw_cpu (runtime/words.py's alignment of text tokens to audio frames): the same arithmetic and
the same choices on ties. Compiled by numba where it is installed (openai-whisper's own way: ~0.3 ms for a dense
window's 90 x 1500 table), else in numpy, one anti-diagonal of the cost table at a time, several matrices at once
(~5 ms for that table: three numpy calls a diagonal).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import cache

import numpy as np


def dtw(cost_matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """openai-whisper's dtw_cpu: the cheapest monotonic path from (0, 0) to the last cell of cost_matrix (N, M),
    as (row indices, column indices). The same arithmetic (float64 costs added to float32 sums, stored in
    float32) and the same choice on ties (diagonal, then up, else left), computed one anti-diagonal at a time."""
    return dtw_many([cost_matrix])[0]


def dtw_many(cost_matrices: Sequence[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray]]:
    """dtw of each matrix: numba's compiled loop where numba is installed, else dtw_many_numpy."""
    compiled = _compiled_dtw()
    if compiled is None:
        return dtw_many_numpy(cost_matrices)
    return [compiled(np.ascontiguousarray(x, np.float64)) for x in cost_matrices]


def dtw_many_numpy(cost_matrices: Sequence[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray]]:
    """dtw_many without numba: all matrices in one numpy sweep over the anti-diagonals (the matrices stacked,
    the smaller ones padded: a cell past a matrix's last row or column never feeds one inside it)."""
    xs = [np.asarray(x, np.float64) for x in cost_matrices]
    if not xs:
        return []
    n, m = max(x.shape[0] for x in xs), max(x.shape[1] for x in xs)
    # costs that float32 holds exactly are added in float32: float64's sum rounded to float32 is the float32
    # sum (53 >= 2 x 24 + 2 bits), so the tables are openai's either way
    exact = all(np.array_equal(x.astype(np.float32), x, equal_nan=True) for x in xs)
    # skewed tables: [d, b, i] is cell (i, d - i) of matrix b's (N + 1, M + 1) cost table (anti-diagonal d);
    # built as [b, i, d], one row of a matrix at a time
    skewed = np.full((len(xs), n + 1, n + m + 1), np.inf, np.float32 if exact else np.float64)
    for b, x in enumerate(xs):
        for i, row in enumerate(x, start=1):
            skewed[b, i, i + 1 : i + 1 + len(row)] = row
    skewed = np.ascontiguousarray(skewed.transpose(2, 0, 1))
    last = max(x.shape[0] + x.shape[1] for x in xs)
    cost = None if any(np.isnan(x).any() for x in xs) else _sweep_by_minimum(skewed, last)
    if cost is None:
        cost = _sweep(skewed, last)
    return [_backtrace(_moves(cost[:, b]), n + 1, *x.shape) for b, x in enumerate(xs)]


def _table(skewed: np.ndarray) -> np.ndarray:
    cost = np.full(skewed.shape, np.inf, np.float32)
    cost[0, :, 0] = 0.0
    return cost


def _sweep(skewed: np.ndarray, last: int) -> np.ndarray:
    """The skewed cost tables by openai's rule, for any costs: at each cell the diagonal or up move (the smaller,
    when they differ) if it is below the left one, else left (NaN compares false: left)."""
    cost = _table(skewed)
    before, after, added = cost[:, :, :-1], cost[:, :, 1:], skewed[:, :, 1:]
    smaller = np.empty(added.shape[1:], np.float32)
    differ, take = np.empty(smaller.shape, bool), np.empty(smaller.shape, bool)
    for d in range(2, last + 1):
        diagonal, up, left = before[d - 2], before[d - 1], after[d - 1]  # cells (i-1, j-1), (i-1, j), (i, j-1)
        np.minimum(diagonal, up, out=smaller)
        np.not_equal(diagonal, up, out=differ)
        np.less(smaller, left, out=take)
        take &= differ
        np.add(added[d], np.where(take, smaller, left), out=after[d])  # rounded to float32, as openai stores it
    return cost


def _sweep_by_minimum(skewed: np.ndarray, last: int) -> np.ndarray | None:
    """_sweep's tables for costs without NaN in three numpy calls a diagonal, or None where that is not exact.
    Without NaN, openai's rule takes the smallest of the three cells except where diagonal and up tie below
    left (it takes left then), which the finished tables show: None if that happened at any cell."""
    cost = _table(skewed)
    before, after, added = cost[:, :, :-1], cost[:, :, 1:], skewed[:, :, 1:]
    smallest = np.empty(added.shape[1:], np.float32)
    for d in range(2, last + 1):
        np.minimum(before[d - 2], before[d - 1], out=smallest)
        np.minimum(smallest, after[d - 1], out=smallest)
        np.add(added[d], smallest, out=after[d])
    diagonal, up, left = before[:-2], before[1:-1], after[1:-1]
    tied_below_left = (diagonal == up) & (diagonal < left) & np.isfinite(added[2:])  # in a matrix, not padding
    return None if tied_below_left.any() else cost


def _moves(cost: np.ndarray) -> bytes:
    """The move into each cell of a finished skewed cost table (D, N + 1), as openai's trace: 0 diagonal, 1 up,
    2 left; flat, row-major."""
    diagonal, up, left = cost[:-2, :-1], cost[1:-1, :-1], cost[1:-1, 1:]
    trace = np.full(cost.shape, 2, np.int8)
    trace[2:, 1:] -= (up < diagonal) & (up < left)
    trace[2:, 1:] -= 2 * ((diagonal < up) & (diagonal < left))
    return trace.tobytes()


def _backtrace(trace: bytes, width: int, n: int, m: int) -> tuple[np.ndarray, np.ndarray]:
    """openai's backtrace from cell (n, m) over a flat skewed trace (row i + j, column i, `width` values a row):
    row 0 goes left, column 0 goes up."""
    i, j = n, m
    rows, cols = [], []
    while i > 0 and j > 0:
        rows.append(i - 1)
        cols.append(j - 1)
        step = trace[(i + j) * width + i]
        if step != 2:
            i -= 1
        if step != 1:
            j -= 1
    # the rest of the path runs along row 0 (i == 0) or column 0 (j == 0)
    edge_rows = np.concatenate([np.arange(i - 1, -1, -1), np.full(j, -1)]).astype(np.int64)
    edge_cols = np.concatenate([np.full(i, -1), np.arange(j - 1, -1, -1)]).astype(np.int64)
    return (np.concatenate([np.array(rows, np.int64), edge_rows])[::-1],
            np.concatenate([np.array(cols, np.int64), edge_cols])[::-1])


def _openai_dtw(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """openai's dtw_cpu and backtrace, loop for loop (compiled by numba): float64 costs added to float32 sums
    stored in float32; on ties diagonal, then up, else left; row 0 goes left, column 0 goes up."""
    n, m = x.shape
    cost = np.full((n + 1, m + 1), np.inf, np.float32)
    trace = np.full((n + 1, m + 1), -1, np.int8)
    cost[0, 0] = 0
    for i in range(1, n + 1):  # row by row (openai goes column by column): each cell still follows its three
        for j in range(1, m + 1):  # neighbours, so the table is the same, read in memory order
            c0, c1, c2 = cost[i - 1, j - 1], cost[i - 1, j], cost[i, j - 1]
            if c0 < c1 and c0 < c2:
                c, t = c0, 0
            elif c1 < c0 and c1 < c2:
                c, t = c1, 1
            else:
                c, t = c2, 2
            cost[i, j] = x[i - 1, j - 1] + c
            trace[i, j] = t
    trace[0, :] = 2
    trace[:, 0] = 1
    rows, cols = np.empty(n + m, np.int64), np.empty(n + m, np.int64)
    i, j, k = n, m, 0
    while i > 0 or j > 0:
        rows[k], cols[k] = i - 1, j - 1
        k += 1
        t = trace[i, j]
        if t != 2:
            i -= 1
        if t != 1:
            j -= 1
    return rows[:k][::-1].copy(), cols[:k][::-1].copy()


@cache
def _compiled_dtw() -> Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]] | None:
    """_openai_dtw compiled by numba (its machine code cached on disk where numba can write), or None without
    numba or where it cannot compile: the numpy sweep then."""
    try:
        import numba

        compiled = numba.njit(cache=True, nogil=True)(_openai_dtw)
        compiled(np.zeros((1, 1)))  # compiled (or loaded from the cache) once, here
        return compiled
    except Exception:  # numba absent, or unable to compile or cache on this machine
        return None
