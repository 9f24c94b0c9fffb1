"""Continuous batching: the decoder steps of many windows in one backend call.

Every window of every audio (a 30 s slice with its WindowDecode: prompt, options, temperature) is a sequence. It
waits in a queue until fewer than `max_windows` are being decoded, then takes a free slot of its pool: pools are
keyed by WindowDecode.pick_key() (rows per window and what its later steps pick), each a cross K/V handle of
`max_windows` slots and a self-attention cache of slots x group rows. Admitted windows are encoded into their slots
(one encoder call per pool), their prompts run (one call per run of neighbouring slots whose prompts have one
length; on a backend whose calls cost their launches, not their tokens, one call per run of neighbouring slots,
shorter prompts padded at their end), and from then on each pool's windows step together: one request over the
pool's rows, whatever step each window is at (per-row offsets), free slots stepped with dummy tokens and ignored. A
window that finishes frees its slot at once, after its callback has run (which may queue the audio's next window, or
the same window at a higher temperature); the next waiting window takes the slot at the next tick.
"""

from __future__ import annotations

import dataclasses
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from whisper_export.backends.base import Backend
from whisper_export.backends.step import StepRequest, StepResult
from whisper_export.runtime.decoding import WindowDecode

# streamed greedy steps per call while windows wait for a slot: a window that ends mid-call holds its slot until
# the call returns, so calls stay short when a freed slot has a taker
BUSY_STREAM_STEPS = 8
# a padded prompt call returns logits (rows, positions, vocabulary) at the union of its windows' read positions:
# at most this many rows x positions (512 x 51,865 fp32 is ~106 MB), so a batch of many windows and prompt
# lengths is cut into several calls rather than one of gigabytes
MAX_PROMPT_LOGIT_ROWS = 512
# and padding at most doubles a call's tokens (or adds this many): one long prompt does not pad every row of a run
PROMPT_PAD_SLACK = 256


@dataclass(eq=False)
class Window:
    """A window to decode: its log-mel (n_mels, 3000) and its WindowDecode; done(window) runs once it has
    finished (its cross K/V still in its slot: window.pool.cross, window.slot), failed(window, error) if a
    backend call that involved it raised."""

    mel: np.ndarray
    decode: WindowDecode
    done: Callable[["Window"], None]
    failed: Callable[["Window", Exception], None]
    tag: Any = None  # the caller's
    pool: "Pool | None" = field(default=None, repr=False)
    slot: int = -1


class Pool:
    """The cross K/V slots and cache rows of the windows that share one pick (Window.decode.pick_key())."""

    def __init__(self, backend: Backend, group: int, slots: int):
        self.group = group
        self.cross = backend.new_cross(slots)
        self.cache = backend.new_cache(slots * group, backend.dims.n_text_ctx)
        self.windows: list[Window | None] = [None] * slots

    def live(self) -> list[Window]:
        return [w for w in self.windows if w is not None]

    def take(self, window: Window) -> None:
        window.pool, window.slot = self, self.windows.index(None)
        self.windows[window.slot] = window


class Scheduler:
    """submit() windows, then run() until every window (and every window a callback queued) is done."""

    def __init__(self, backend: Backend, max_windows: int = 8, *, expecting: Callable[[], bool] | None = None):
        """expecting: whether windows not yet submitted are on their way (audios still being read); while they
        are, streamed greedy calls stay short, as when windows wait in the queue, so that they are admitted
        within a few steps instead of after the running windows end."""
        if not isinstance(max_windows, int) or max_windows < 1:
            raise ValueError(f"max_windows: received {max_windows!r}, expected an int >= 1")
        self.backend, self.max_windows = backend, max_windows
        self.expecting = expecting or (lambda: False)
        self.queue: deque[Window] = deque()
        self.pools: dict[tuple, Pool] = {}
        # a CUDA backend replays one captured graph per pool: it steps every row of a pool, free ones too
        self.whole_pool = bool(getattr(backend, "steps_whole_pool", False))
        self.busy_steps = BUSY_STREAM_STEPS if getattr(backend, "streams_greedy", False) else 1
        # where a call costs its launches (a GPU at these sizes), prompts of different lengths share one call
        self.pads_prompts = bool(getattr(backend, "pads_prompts", False))

    def submit(self, window: Window) -> None:
        self.queue.append(window)

    def close(self) -> None:
        """Give the pools' cross K/V and cache rows back to the backend now. Windows and their callbacks refer to
        one another in cycles that only the garbage collector breaks, so without this the next run would make
        (on CUDA: allocate, zero and capture graphs for) new buffer sets while these still wait for collection."""
        for pool in self.pools.values():
            pool.cross = pool.cache = None
        self.pools.clear()

    def cancel(self, matches: Callable[[Any], bool]) -> None:
        """Drop the windows whose tag matches: waiting ones, and live ones, whose slots are free at once (their
        rows are stepped as free rows until a window takes them)."""
        self.queue = deque(w for w in self.queue if not matches(w.tag))
        for pool in self.pools.values():
            for slot, window in enumerate(pool.windows):
                if window is not None and matches(window.tag):
                    pool.windows[slot] = None

    @property
    def busy(self) -> bool:
        return bool(self.queue) or any(pool.live() for pool in self.pools.values())

    def run(self) -> None:
        while self.busy:
            self.tick()

    def tick(self) -> None:
        """Admit what fits, then one step of every pool's windows."""
        self._admit()
        for pool in list(self.pools.values()):
            if pool.live():
                self._guarded(pool.live(), lambda p=pool: self._step(p))

    # -- admission: encode, then the prompt step ---------------------------------------------------------

    def _admit(self) -> None:
        live = sum(len(pool.live()) for pool in self.pools.values())
        if self.whole_pool and live and not self._wave_due(live):
            return
        admitted: dict[int, tuple[Pool, list[Window]]] = {}
        while self.queue and live < self.max_windows:
            window = self.queue.popleft()
            try:
                pool = self._pool(window.decode)
            except Exception as error:  # noqa: BLE001 - a window the backend cannot hold fails alone
                window.failed(window, error)
                continue
            _, windows = admitted.setdefault(id(pool), (pool, []))
            if pool.windows.count(None) == len(windows):  # a pool the backend's row limit keeps smaller: it waits
                self.queue.appendleft(window)
                break
            windows.append(window)
            live += 1
        for pool, windows in admitted.values():
            if not windows:
                continue
            # windows with one prompt layout take neighbouring free slots: one prompt call per run of them
            for window in sorted(windows, key=_layout):
                pool.take(window)
            self._guarded(windows, lambda ws=windows: self._start(ws))

    def _wave_due(self, live: int) -> bool:
        """On a backend that steps whole pools, windows are admitted in waves: each admission costs an encoder
        call and a prompt step and ends the streamed greedy call, while a free row is stepped anyway at no extra
        cost, so admitting one window whenever one ends makes many small encoder calls. A wave is due once half
        the slots (or as many as wait, if fewer) are free."""
        free = self.max_windows - live
        return free >= min(max(1, self.max_windows // 2), len(self.queue))

    def _pool(self, decode: WindowDecode) -> Pool:
        key = decode.pick_key()
        pool = self.pools.get(key)
        if pool is None:
            pool = self.pools[key] = Pool(self.backend, decode.group, self._slots(decode.group))
        return pool

    def _slots(self, group: int) -> int:
        """Windows of `group` rows a pool holds: max_windows, or fewer where the backend caps the rows of a step."""
        limit = self.backend.max_rows
        if limit is not None and limit < group:
            raise ValueError(f"group: received {group} rows per window, expected at most the backend's {limit} rows")
        return self.max_windows if limit is None else min(self.max_windows, limit // group)

    def _start(self, windows: list[Window]) -> None:
        pool = windows[0].pool
        assert pool is not None
        self.backend.encode(np.stack([w.mel for w in windows]), into=pool.cross, slots=[w.slot for w in windows])
        for run in _prompt_runs(windows, _fits_padded if self.pads_prompts else _same_layout):
            self._prompt(pool, run)

    def _prompt(self, pool: Pool, run: list[Window]) -> None:
        """One prompt call for a run of neighbouring slots. Prompts shorter than the longest are padded at their
        end (with their last token): causal attention keeps a row's own tokens from seeing its padding, and
        the padding's cache positions lie past the row's offset, hidden by the mask until its steps overwrite
        them. Logits come back at every position some window reads; each window takes its own."""
        g = pool.group
        prompts = [w.decode.prompt() for w in run]
        width = max(p.shape[1] for p in prompts)
        tokens = np.concatenate([_padded(p, width) for p in prompts])  # (len(run) * g, width)
        positions = sorted({p for w in run for p in w.decode.prompt_positions})
        request = StepRequest(tokens, np.zeros(len(tokens), np.int64), run[0].slot * g, g,
                              positions=np.asarray(positions, np.int64))
        logits = self.backend.step(request, pool.cache, pool.cross).logits  # (len(run) * g, len(positions), V)
        for i, window in enumerate(run):
            read = [positions.index(p) for p in window.decode.prompt_positions]
            window.decode.take_prompt(logits[i * g : (i + 1) * g, read])
        self._retire(pool)

    # -- the step of a pool -------------------------------------------------------------------------------

    def _step(self, pool: Pool) -> None:
        windows, g = pool.live(), pool.group
        high = len(pool.windows) if self.whole_pool else 1 + max(w.slot for w in windows)
        rows = high * g
        pick = windows[0].decode.later
        tokens, offsets = np.zeros((rows, 1), np.int64), np.zeros(rows, np.int64)
        sources, live = np.arange(rows, dtype=np.int64), np.zeros(rows, bool)
        state = np.zeros((rows, 3), np.int64) if pick.rules is not None else None
        for w in windows:
            at = slice(w.slot * g, (w.slot + 1) * g)
            tokens[at], offsets[at], live[at] = w.decode.next_tokens(), w.decode.offset(), True
            if w.decode.sources is not None:
                sources[at] = w.slot * g + np.asarray(w.decode.sources, np.int64)
            if state is not None:
                state[at] = w.decode.timestamp_state()
        if pick.kind == "best":
            steps = min(w.decode.budget() for w in windows)
            waiting = self.queue or self.expecting()
            pick = dataclasses.replace(pick, steps=min(steps, self.busy_steps) if waiting else steps)
        reorder = None if np.array_equal(sources, np.arange(rows)) else sources
        request = StepRequest(tokens, offsets, 0, g, reorder, pick, state=state, live=live)
        result = self.backend.step(request, pool.cache, pool.cross)
        for w in windows:
            w.decode.take_step(_rows(result, slice(w.slot * g, (w.slot + 1) * g)))
        self._retire(pool)

    def _retire(self, pool: Pool) -> None:
        for slot, window in enumerate(pool.windows):
            if window is not None and window.decode.finished:
                pool.windows[slot] = None
                window.done(window)

    def _guarded(self, windows: list[Window], work: Callable[[], None]) -> None:
        """Run work; if a backend call raises, the windows it involved fail and free their slots (the others go
        on)."""
        try:
            work()
        except Exception as error:  # noqa: BLE001 - one failed call fails its windows, not the scheduler
            for window in windows:
                if window.pool is not None and window.pool.windows[window.slot] is window:
                    window.pool.windows[window.slot] = None
                    window.failed(window, error)


def _prompt_runs(windows: list[Window], joins: Callable[[list[Window], Window], bool]) -> list[list[Window]]:
    """The admitted windows in runs of neighbouring slots, each window joining the run before it where
    joins(run, window) (_same_layout: one prompt length and layout; _fits_padded: any prompts, padded, within
    the caps on logits and padding)."""
    runs: list[list[Window]] = []
    for window in sorted(windows, key=lambda w: w.slot):
        if runs and runs[-1][-1].slot + 1 == window.slot and joins(runs[-1], window):
            runs[-1].append(window)
        else:
            runs.append([window])
    return runs


def _layout(window: Window) -> tuple:
    """What windows must share to be prompted in one call unpadded: the prompt's length and the positions read."""
    return window.decode.prompt().shape[1], window.decode.prompt_positions


def _same_layout(run: list[Window], window: Window) -> bool:
    return _layout(run[-1]) == _layout(window)


def _fits_padded(run: list[Window], window: Window) -> bool:
    """Whether window can join run in one padded call: the logits stay within MAX_PROMPT_LOGIT_ROWS rows x
    positions and the padding within PROMPT_PAD_SLACK tokens or the run's own token count."""
    windows = [*run, window]
    prompts = [w.decode.prompt() for w in windows]
    rows = sum(p.shape[0] for p in prompts)
    positions = {p for w in windows for p in w.decode.prompt_positions}
    tokens = sum(p.size for p in prompts)
    padding = rows * max(p.shape[1] for p in prompts) - tokens
    return rows * len(positions) <= MAX_PROMPT_LOGIT_ROWS and padding <= max(tokens, PROMPT_PAD_SLACK)


def _padded(prompt: np.ndarray, width: int) -> np.ndarray:
    """prompt (G, n) with its last token repeated to (G, width)."""
    return np.pad(prompt, ((0, 0), (0, width - prompt.shape[1])), mode="edge")


def _rows(result: StepResult, at: slice) -> StepResult:
    def part(value):
        return None if value is None else value[at]

    return StepResult(part(result.logits), part(result.tokens), part(result.logprobs))


def decode(backend: Backend, tokenizer, mel: np.ndarray, options=None, *, languages=None, prompts=None,
           max_windows: int | None = None) -> list:
    """Decode windows mel (n, n_mels, 3000) float32 together: one DecodingResult each, in order.

    languages/prompts: per window (None entries: detect / no previous text); default options.language and
    options.prompt. A window without a language on a multilingual model is detected first, on its own mel."""
    from whisper_export.runtime.decoding import DecodingResult, detect_language
    from whisper_export.runtime.options import DecodingOptions

    options = options or DecodingOptions()
    n = mel.shape[0]
    langs = list(languages) if languages is not None else [options.language] * n
    texts = list(prompts) if prompts is not None else [options.prompt] * n
    if len(langs) != n or len(texts) != n:
        raise ValueError(f"received {len(langs)} languages and {len(texts)} prompts, expected {n} each")
    probs: list = [None] * n
    if not tokenizer.is_multilingual:
        langs = ["en"] * n
    elif any(lang is None for lang in langs):
        detected, found = detect_language(backend, tokenizer, backend.encode(mel), n)
        langs = [lang or d for lang, d in zip(langs, detected)]
        probs = list(found)
    results: list[DecodingResult | None] = [None] * n
    errors: list[Exception] = []

    def done(window: Window) -> None:
        results[window.tag] = window.decode.result(probs[window.tag])

    scheduler = Scheduler(backend, max_windows or n)
    for i in range(n):
        decode_i = WindowDecode(tokenizer, backend.dims, options, langs[i], texts[i])
        scheduler.submit(Window(mel[i], decode_i, done, lambda _w, e: errors.append(e), tag=i))
    scheduler.run()
    if errors:
        raise errors[0]
    return results  # type: ignore[return-value]
