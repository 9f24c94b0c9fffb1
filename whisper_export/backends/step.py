"""The one step of the backend contract: a StepRequest in, a StepResult out; and its validation.

A request runs the decoder on cache rows [start, start + R) of a cache handle, which it updates in place, and on
cross K/V slots [start // group, (start + R) // group) of a cross handle: row start + r belongs to the audio in
slot (start + r) // group (rows are audio-major, `group` rows per audio: 1 greedy, beam_size, or best_of). What
the step returns is data too (`pick`): logits, the best token, or the top k, optionally under per-row timestamp
rules; that is how one contract serves greedy, beam search, sampling and streamed greedy steps.

Shapes (see whisper_export/graph_io.py for the graph contract they mirror):
    tokens      (R, n_new)  int64  the new tokens of each row
    offsets     (R,)        int64  cache position of each row's first new token
    sources     (R,)        int64  the cache row (absolute) each row continues before the step (beam reorder);
                                   None: its own; rows only ever continue a row of the same audio
    positions   (P,)        int64  "logits": which of the n_new positions return logits; None: the last
    state       (R, 3)      int64  the timestamp rules' state of each row (Pick.rules)
    live        (R,)        bool   rows whose choices count (free rows of a pool are stepped but ignored)
    logits      (R, P, V)   float32
    tokens/logprobs (R, k)  int64 / float32: "best": one column per step run; "top": k candidates, best first
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from whisper_export.backends.picking import Pick


@dataclass(frozen=True)
class StepRequest:
    tokens: np.ndarray
    offsets: np.ndarray
    start: int = 0
    group: int = 1
    sources: np.ndarray | None = None
    pick: Pick = field(default_factory=Pick)
    positions: np.ndarray | None = None
    state: np.ndarray | None = None
    live: np.ndarray | None = None

    @property
    def rows(self) -> int:
        return self.tokens.shape[0]

    @property
    def stop(self) -> int:
        return self.start + self.rows

    def logit_positions(self) -> np.ndarray:
        if self.positions is not None:
            return self.positions
        return np.asarray([self.tokens.shape[1] - 1], np.int64)

    def cache_index(self) -> np.ndarray | None:
        """sources relative to start (the step's own row numbering), or None when every row continues itself."""
        if self.sources is None:
            return None
        index = self.sources - self.start
        return None if np.array_equal(index, np.arange(self.rows)) else index

    def live_rows(self) -> np.ndarray:
        return np.ones(self.rows, bool) if self.live is None else self.live


@dataclass
class StepResult:
    logits: np.ndarray | None = None
    tokens: np.ndarray | None = None
    logprobs: np.ndarray | None = None


def _int_array(name: str, value, ndim: int) -> None:
    if not isinstance(value, np.ndarray):
        raise TypeError(f"{name}: received {type(value).__name__}, expected a numpy int64 array")
    if value.dtype != np.int64:
        raise ValueError(f"{name}: received dtype {value.dtype}, expected int64")
    if value.ndim != ndim:
        raise ValueError(f"{name}: received shape {value.shape}, expected {ndim} dimension(s)")


def check_request(request: StepRequest, n_vocab: int, cache_rows: int, capacity: int, cross_slots: int) -> None:
    """Every field against the handles it runs on; messages name the field, what came and what was expected."""
    r = request
    _int_array("tokens", r.tokens, 2)
    _int_array("offsets", r.offsets, 1)
    rows, n_new = r.tokens.shape
    if rows < 1 or n_new < 1:
        raise ValueError(f"tokens: received shape {r.tokens.shape}, expected (rows >= 1, n_new >= 1)")
    if r.group < 1 or r.start % r.group or rows % r.group:
        raise ValueError(f"rows: received start {r.start} and {rows} rows with group {r.group}, expected multiples "
                         "of the group (rows are audio-major, group rows per audio)")
    if r.start < 0 or r.stop > cache_rows:
        raise ValueError(f"rows: received [{r.start}, {r.stop}), expected a range within the cache's {cache_rows} rows")
    if r.stop // r.group > cross_slots:
        raise ValueError(f"rows: received [{r.start}, {r.stop}) with group {r.group}, expected cross slots within "
                         f"the {cross_slots} of the cross K/V")
    if r.offsets.shape != (rows,):
        raise ValueError(f"offsets: received shape {r.offsets.shape}, expected ({rows},)")
    if r.tokens.min() < 0 or r.tokens.max() >= n_vocab:
        raise ValueError(f"tokens: received ids {r.tokens.min()}..{r.tokens.max()}, expected 0..{n_vocab - 1}")
    steps = r.pick.steps
    if r.offsets.min() < 0 or r.offsets.max() + n_new + steps - 1 > capacity:
        raise ValueError(f"offsets: received {r.offsets.min()}..{r.offsets.max()} with {n_new} new tokens and "
                         f"{steps} step(s), expected offset + n_new + steps - 1 <= cache capacity {capacity}")
    if r.sources is not None:
        _int_array("sources", r.sources, 1)
        own = np.arange(r.start, r.stop)
        if r.sources.shape != (rows,) or np.any(r.sources // r.group != own // r.group):
            raise ValueError(f"sources: received {r.sources.tolist()}, expected {rows} rows each continuing a row of "
                             f"the same audio ({r.group} rows per audio)")
    if r.positions is not None:
        _int_array("positions", r.positions, 1)
        if r.positions.size < 1 or r.positions.min() < 0 or r.positions.max() >= n_new:
            raise ValueError(f"positions: received {r.positions.tolist()}, expected 1+ positions in 0..{n_new - 1}")
    _check_pick(r, n_vocab, rows, n_new)


def _check_pick(r: StepRequest, n_vocab: int, rows: int, n_new: int) -> None:
    pick = r.pick
    if pick.kind != "logits" and (n_new != 1 or r.positions is not None):
        raise ValueError(f"tokens: received {n_new} new tokens for a {pick.kind!r} pick, expected one token per "
                         "row (picks follow the prompt step, whose logits go to the host)")
    if pick.steps > 1 and r.sources is not None and not np.array_equal(r.sources, np.arange(r.start, r.stop)):
        raise ValueError("sources: received a reorder for streamed greedy steps, expected none (greedy rows never move)")
    if pick.bias is not None and (not isinstance(pick.bias, np.ndarray) or pick.bias.shape != (n_vocab,)):
        raise ValueError(f"pick bias: received {getattr(pick.bias, 'shape', type(pick.bias).__name__)}, "
                         f"expected a ({n_vocab},) float32 array")
    if pick.rules is not None:
        state = r.state
        if not isinstance(state, np.ndarray) or state.shape != (rows, 3) or state.dtype != np.int64:
            raise ValueError(f"timestamp state: received {getattr(state, 'dtype', None)} "
                             f"{getattr(state, 'shape', None)}, expected int64 ({rows}, 3)")
    if r.live is not None and (r.live.shape != (rows,) or r.live.dtype != bool):
        raise ValueError(f"live: received {r.live.dtype} {r.live.shape}, expected bool ({rows},)")
    if pick.kind == "top" and pick.k > n_vocab:
        raise ValueError(f"pick k: received {pick.k}, expected at most n_vocab {n_vocab}")
