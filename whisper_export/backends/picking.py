"""What a decoder step returns per row, picked from its logits in numpy; and openai's timestamp rules it mirrors.

Every backend that returns logits gets these for free (Backend.step's default); a GPU backend picks the same on
the device with the bundle's small graphs (greedy_select, top_select, timestamp_rules, timestamp_top), and the
decoding loop's roles (runtime/sampling.py) use the same functions on host logits, so host and device pick alike.

Shapes: R rows, V = n_vocab; logits (R, V) float32.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from whisper_export import graph_io

PICK_KINDS = ("logits", "best", "top")


def log_softmax(x: np.ndarray) -> np.ndarray:
    """Along the last axis; -inf entries stay -inf."""
    x = x.astype(np.float32, copy=False)
    m = x.max(axis=-1, keepdims=True)
    shifted = x - m
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def chosen_logprobs(logits: np.ndarray, chosen: np.ndarray, scratch: np.ndarray | None = None) -> np.ndarray:
    """log_softmax(logits)[r, chosen[r]] for each row (chosen (R,) or (R, k)), bit for bit, without the (R, V)
    log_softmax array: (x[c] - max) - log(sum(exp(x - max))) with the same float32 operations as log_softmax,
    the exponentials written into scratch (R, V) float32 when given (a fifth of log_softmax's time at 16 rows)."""
    x = logits.astype(np.float32, copy=False)
    m = x.max(axis=-1, keepdims=True)
    shifted = np.subtract(x, m, out=scratch) if scratch is not None else x - m
    index = chosen if chosen.ndim == 2 else chosen[:, None]
    picked = np.take_along_axis(shifted, index, axis=-1)  # a copy: taken before exp overwrites shifted
    total = np.exp(shifted, out=shifted).sum(axis=-1, keepdims=True)
    out = picked - np.log(total)
    return out if chosen.ndim == 2 else out[:, 0]


def top_candidates(logits: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k best of each row of logits (R, V), best first and the lowest id first on ties (what the bundle's
    top_select.onnx returns), and their log_softmax values: (ids (R, k) int64, log-probabilities (R, k))."""
    x = logits.astype(np.float32, copy=False)
    best = x.max(axis=-1)  # (R,)
    ids = np.empty((x.shape[0], k), np.int64)
    for r, row in enumerate(x):
        candidates = _at_least_kth(row, best[r], k)
        order = np.lexsort((candidates, -row[candidates]))[:k]  # by value, then the lowest id
        ids[r] = candidates[order]
    return ids, chosen_logprobs(x, ids)


# margins below a row's best within which its k best are looked for first: a comparison pass over the vocabulary
# is ~30x cheaper than the partition that finds the k-th value, and a language model's k best lie within a few
# logits of its best
_CANDIDATE_MARGINS = (4.0, 16.0)


def _at_least_kth(row: np.ndarray, best: float, k: int) -> np.ndarray:
    """The ids of every value of row (V,) at least its k-th largest, and maybe more: once at least k values are
    >= t, the k-th largest is >= t, so the values >= t hold the k best and every tie with the k-th."""
    for margin in _CANDIDATE_MARGINS:
        candidates = np.flatnonzero(row >= best - margin)
        if len(candidates) >= k:
            return candidates
    kth = np.partition(row, -k)[-k]
    return np.flatnonzero(row >= kth)


class TimestampRules:
    """openai-whisper's timestamp rules after a window's first sampled token, as data a backend can apply anywhere.

    Each row's state is three numbers (state()): the last sampled token is a timestamp, the one before it is a
    timestamp (or there is none), the last sampled timestamp (-1: none yet). From the state alone come two limits
    per row (limits_of): ids below text_end are forbidden (0 or eot), and timestamps below ts_min
    (graph_io.ALL_TIMESTAMPS forbids them all); then prefer_timestamps compares the timestamps' total probability
    with the best text token's. next_state moves the state on by one chosen token, which is what lets a backend
    stream greedy steps under the rules on the device (timestamp_rules.onnx computes the same in int64).
    """

    def __init__(self, timestamp_begin: int, eot: int, no_timestamps: int):
        self.timestamp_begin, self.eot, self.no_timestamps = timestamp_begin, eot, no_timestamps

    def fixed_bias(self, n_vocab: int) -> np.ndarray:
        """What the rules do whatever the tokens: <|notimestamps|> is a prompt token, never a sampled one."""
        bias = np.zeros(n_vocab, np.float32)
        bias[self.no_timestamps] = -np.inf
        return bias

    def state(self, sampled: np.ndarray) -> np.ndarray:
        """Each row's state (R, 3) int64 from its sampled tokens (R, n) so far (the prompt excluded)."""
        ts_begin = self.timestamp_begin
        rows, n = sampled.shape
        state = np.zeros((rows, 3), np.int64)
        state[:, 0] = sampled[:, -1] >= ts_begin if n >= 1 else 0
        state[:, 1] = sampled[:, -2] >= ts_begin if n >= 2 else 1
        stamps = sampled >= ts_begin
        last = n - 1 - np.argmax(stamps[:, ::-1], axis=1) if n else np.zeros(rows, np.int64)
        state[:, 2] = np.where(stamps.any(axis=1), sampled[np.arange(rows), last] if n else -1, -1)
        return state

    def next_state(self, state: np.ndarray, chosen: np.ndarray) -> np.ndarray:
        """The state (R, 3) after each row appends chosen (R,), for rows that have sampled a token already."""
        is_stamp = (chosen >= self.timestamp_begin).astype(np.int64)
        return np.stack([is_stamp, state[:, 0], np.where(is_stamp == 1, chosen, state[:, 2])], axis=1)

    def limits_of(self, state: np.ndarray) -> np.ndarray:
        """(text_end, ts_min) per row (R, 2) int64 from the state (R, 3), in int64 arithmetic only."""
        last, penultimate, stamp = state[:, 0], state[:, 1], state[:, 2]
        text_ended = last * (1 - penultimate)  # text just ended: close it with a timestamp (or end the window)
        closed = last * penultimate  # a segment just closed: text must follow
        # never go back in time, and give each segment a nonzero length (no infinite loops); -1: no timestamp yet
        floor = self.timestamp_begin + closed * (graph_io.ALL_TIMESTAMPS - self.timestamp_begin)
        ts_min = np.maximum(floor, stamp + 1 - text_ended)
        return np.stack([text_ended * self.eot, ts_min], axis=1)

    def apply_limits(self, logits: np.ndarray, limits: np.ndarray) -> None:
        ts_begin = self.timestamp_begin
        for k, (text_end, ts_min) in enumerate(limits.tolist()):
            logits[k, :text_end] = -np.inf
            logits[k, ts_begin : min(ts_min, logits.shape[1])] = -np.inf

    def prefer_timestamps(self, logits: np.ndarray) -> None:
        """When the timestamps together are likelier than any single text token, emit a timestamp."""
        ts_begin = self.timestamp_begin
        logprobs = log_softmax(logits)
        with np.errstate(divide="ignore"):
            ts = logprobs[:, ts_begin:]
            ts_max = ts.max(axis=-1, keepdims=True)
            safe = np.where(np.isfinite(ts_max), ts_max, 0.0)
            timestamp_logprob = (safe + np.log(np.exp(ts - safe).sum(axis=-1, keepdims=True)))[:, 0]
        max_text_logprob = logprobs[:, :ts_begin].max(axis=-1)
        logits[timestamp_logprob > max_text_logprob, :ts_begin] = -np.inf

    def filter(self, logits: np.ndarray, state: np.ndarray) -> None:
        """The rules of each row's state applied to its logits (R, V) in place (after the first sampled token)."""
        self.apply_limits(logits, self.limits_of(state))
        self.prefer_timestamps(logits)


@dataclass(frozen=True)
class Pick:
    """What a step returns per row: "logits" (to the host), "best" (greedy: argmax and its log-probability) or
    "top" (a beam's candidates: the k best and their log-probabilities), of the logits + bias, under the
    timestamp rules of each row's state when `rules` is set. "best" may ask for `steps` greedy steps, each fed
    the previous choice, ending early once every live row has chosen `stop_token`."""

    kind: str = "logits"
    k: int = 1  # "top": candidates per row, best first, lowest id first on ties
    bias: np.ndarray | None = None  # (V,) float32 of 0 and -inf: the filters that do not depend on the tokens
    rules: TimestampRules | None = None  # with StepRequest.state
    steps: int = 1  # "best": greedy steps run in one call
    stop_token: int | None = None

    def __post_init__(self) -> None:
        if self.kind not in PICK_KINDS:
            raise ValueError(f"pick kind: received {self.kind!r}, expected one of {', '.join(PICK_KINDS)}")
        if not isinstance(self.k, int) or not 1 <= self.k:
            raise ValueError(f"pick k: received {self.k!r}, expected an int >= 1")
        if not isinstance(self.steps, int) or self.steps < 1 or (self.steps > 1 and self.kind != "best"):
            raise ValueError(f"pick steps: received {self.steps!r} for {self.kind!r}, expected 1 (or more for 'best')")
        if self.kind == "logits" and (self.bias is not None or self.rules is not None):
            raise ValueError("pick 'logits': received a bias or timestamp rules, expected neither (the host filters)")


def pick_from_logits(pick: Pick, logits: np.ndarray, state: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """One step's pick of kind "best" or "top" from its logits (R, V): (tokens (R, k), log-probabilities (R, k)),
    bit for bit what the decoding loop's filters and decoders compute on the same host logits."""
    filtered = logits + pick.bias if pick.bias is not None else logits.copy()
    if pick.rules is not None:
        assert state is not None, "timestamp rules need each row's state"
        pick.rules.filter(filtered, state)
    if pick.kind == "top":
        return top_candidates(filtered, pick.k)
    best = filtered.argmax(axis=-1)
    return best[:, None].astype(np.int64), chosen_logprobs(filtered, best)[:, None]
