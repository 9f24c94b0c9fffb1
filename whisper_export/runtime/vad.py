"""Speech detection: Silero VAD (MIT) on onnxruntime's CPU provider, and the speech-timestamp rules in numpy.

The model is the Silero VAD v6 ONNX file that faster-whisper ships as package data, pinned by package
version and sha256 like the packaged weights (reference_model/sources.py). That file, unlike the one in the
`silero-vad` package, takes a whole sequence of 32 ms frames in one run (its LSTM walks the frames inside
the graph), and `silero-vad` requires torch, which the runtime must not pull. Only the file is read: nothing
of faster-whisper is imported.

The rules that turn frame probabilities into speech regions are those of faster-whisper's
`get_speech_timestamps` (itself adapted from silero-vad's): tests/whisper_export/runtime/test_vad.py holds
them to it on the same model and options.
"""

from __future__ import annotations

import functools
import importlib.util
import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from whisper_export.backends.cpu_info import physical_cores
from whisper_export.hashing import pinned_file
from whisper_export.runtime.onnx_cut import cut

SAMPLE_RATE = 16000  # the model's rate (runtime/audio.py's SAMPLE_RATE; not imported: audio.py is heavier)
FRAME_SAMPLES = 512  # one speech probability per 32 ms frame
CONTEXT_SAMPLES = 64  # each frame is fed with the last 64 samples of the frame before it
# frames per onnxruntime run, the LSTM state carried from one run to the next; runs of a few thousand frames
# cost the same per frame as one run over a whole file (NOTES.md, "Speech VAD"), and bound the memory
FRAMES_PER_RUN = 8192
# frames of one run of the convolutions; the parts of a run go to parallel threads (16 s each)
PART_FRAMES = 512
# where the model is cut: the convolutions' output, the LSTM's input
FEATURES = "/encoder/relu_3/Relu_output_0"
# a region longer than max_speech_duration_s is split at the last silence longer than this, where there is one
MIN_SILENCE_AT_MAX_SPEECH_MS = 98

SILERO_PIP_SPEC = "faster-whisper==1.2.1"
SILERO_MODULE = "faster_whisper"
SILERO_FILE = "assets/silero_vad_v6.onnx"
SILERO_SHA256 = "4cbf549b8326f60f80f2536d9eefeb450a9abe83365a098031c89719f1be17d2"


class VadModelError(ValueError):
    """The Silero VAD model file is missing or is not the pinned one."""


@dataclass(frozen=True)
class VadOptions:
    """Speech detection (faster-whisper's VadOptions names and meanings; the defaults are those of its batched
    pipeline, which cuts the speech into chunks of at most 30 s).

    threshold: a frame whose speech probability is >= this is speech.
    neg_threshold: once in speech, only a frame below this is silence (hysteresis); None: threshold - 0.15,
        at least 0.01.
    min_speech_duration_ms: speech regions this short or shorter are dropped.
    max_speech_duration_s: longer regions are split, at the last silence over 98 ms if there is one, else
        hard; at most 30 s, since every chunk is one 30 s window of the model.
    min_silence_duration_ms: a region ends after this much silence.
    speech_pad_ms: each region is widened by this much on each side (half the gap when two regions are closer).
    """

    threshold: float = 0.5
    neg_threshold: float | None = None
    min_speech_duration_ms: int = 0
    max_speech_duration_s: float = 30.0
    min_silence_duration_ms: int = 160
    speech_pad_ms: int = 400

    def __post_init__(self) -> None:
        self._verify()

    def _verify(self) -> None:
        for name in ("threshold", "neg_threshold"):
            value = getattr(self, name)
            if value is None and name == "neg_threshold":
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1:
                raise ValueError(f"vad {name}: received {value!r}, expected a probability in (0, 1)")
        if self.neg_threshold is not None and self.neg_threshold > self.threshold:
            raise ValueError(
                f"vad neg_threshold: received {self.neg_threshold!r} with threshold {self.threshold!r}, "
                "expected neg_threshold <= threshold"
            )
        for name in ("min_speech_duration_ms", "min_silence_duration_ms", "speech_pad_ms"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"vad {name}: received {value!r}, expected an int >= 0 (milliseconds)")
        limit = self.max_speech_duration_s
        if isinstance(limit, bool) or not isinstance(limit, (int, float)) or not 0 < limit <= 30:
            raise ValueError(
                f"vad max_speech_duration_s: received {limit!r}, expected seconds in (0, 30] "
                "(a chunk is one 30 s window)"
            )
        if self.max_speech_samples <= 0:
            raise ValueError(
                f"vad speech_pad_ms: received {self.speech_pad_ms!r} with max_speech_duration_s {limit!r}, "
                "expected 2 * speech_pad_ms + 32 ms < max_speech_duration_s"
            )

    @property
    def silence_threshold(self) -> float:
        return max(self.threshold - 0.15, 0.01) if self.neg_threshold is None else self.neg_threshold

    @property
    def pad_samples(self) -> int:
        return SAMPLE_RATE * self.speech_pad_ms // 1000

    @property
    def max_speech_samples(self) -> float:
        """Longest region before padding: with its pads and one frame of slack it is at most the limit."""
        return SAMPLE_RATE * self.max_speech_duration_s - FRAME_SAMPLES - 2 * self.pad_samples


# -- the model ------------------------------------------------------------------------------------------


def silero_model_path() -> Path:
    """The pinned model file; VadModelError when its package is missing or the file differs from the pin."""
    spec = importlib.util.find_spec(SILERO_MODULE)  # finds the package without importing it
    if spec is None or not spec.submodule_search_locations:
        raise VadModelError(f"vad: the Silero VAD model needs the package {SILERO_MODULE!r}: pip install {SILERO_PIP_SPEC}")
    path = Path(list(spec.submodule_search_locations)[0]) / SILERO_FILE
    return pinned_file(path, SILERO_SHA256, "vad", SILERO_PIP_SPEC, VadModelError)


class SileroVad:
    """The model as two onnxruntime CPU sessions, reused for every audio: its convolutions (each frame alone,
    so parts of the audio run on parallel threads) and its LSTM (the frames in order). The probabilities are
    the whole model's: the cut only changes where the frames' features wait between the two."""

    def __init__(self, path: Path, threads: int | None = None):
        front, back = cut(path.read_bytes(), FEATURES)
        self.features = _cpu_session(front)
        self.recurrent = _cpu_session(back)
        self.workers = threads or physical_cores()

    def speech_probs(self, audio: np.ndarray) -> np.ndarray:
        """(n_frames,) float32: the speech probability of each 512-sample frame, the last one zero-padded."""
        n_frames = math.ceil(len(audio) / FRAME_SAMPLES)
        if n_frames == 0:
            return np.zeros(0, np.float32)
        body = np.zeros((n_frames, FRAME_SAMPLES), np.float32)
        body.reshape(-1)[: len(audio)] = audio
        frames = np.zeros((n_frames, CONTEXT_SAMPLES + FRAME_SAMPLES), np.float32)
        frames[:, CONTEXT_SAMPLES:] = body
        frames[1:, :CONTEXT_SAMPLES] = body[:-1, -CONTEXT_SAMPLES:]  # the first frame's context is silence
        h = np.zeros((1, 1, 128), np.float32)
        c = np.zeros((1, 1, 128), np.float32)
        probs = []
        with ThreadPoolExecutor(max_workers=min(self.workers, math.ceil(n_frames / PART_FRAMES))) as pool:
            # every part queued at once, so that the pool computes the next runs' features during each LSTM run
            runs = [[pool.submit(self._features, frames[k : min(k + PART_FRAMES, begin + FRAMES_PER_RUN)])
                     for k in range(begin, min(begin + FRAMES_PER_RUN, n_frames), PART_FRAMES)]
                    for begin in range(0, n_frames, FRAMES_PER_RUN)]
            for parts in runs:
                features = np.concatenate([part.result() for part in parts])  # (frames of the run, 128, 1)
                out, h, c = self.recurrent.run(None, {FEATURES: features, "h": h, "c": c})
                probs.append(out)
        return np.concatenate(probs).astype(np.float32, copy=False)

    def _features(self, frames: np.ndarray) -> np.ndarray:
        return self.features.run(None, {"input": frames})[0]


def _cpu_session(model: bytes):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    # one thread a run: the convolutions of one frame are too small for onnxruntime to share between threads
    # (2 threads measured no faster than 1), so parts of the audio run side by side instead
    opts.intra_op_num_threads = opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    return ort.InferenceSession(model, sess_options=opts, providers=["CPUExecutionProvider"])


@functools.lru_cache(maxsize=2)
def silero_vad(threads: int | None = None) -> SileroVad:
    """The process's VAD session for a thread count (None: onnxruntime's default, one per physical core),
    made and checked against the pin on first use, then reused."""
    return SileroVad(silero_model_path(), threads)


# -- probabilities to regions ---------------------------------------------------------------------------


@dataclass(frozen=True)
class SpeechRegion:
    """Sample positions of one region: as padded (start, end), and of the speech found (before padding)."""

    start: int
    end: int
    speech_start: int
    speech_end: int


def speech_timestamps(probs: np.ndarray, n_samples: int, options: VadOptions) -> list[SpeechRegion]:
    """The speech regions of an audio of n_samples from its frames' probabilities: in order, not overlapping."""
    regions = _raw_regions(np.asarray(probs, np.float32).tolist(), n_samples, options)
    padded = _padded([list(r) for r in regions], n_samples, options.pad_samples)
    return [SpeechRegion(start, end, speech[0], speech[1]) for (start, end), speech in zip(padded, regions)]


def _raw_regions(probs: list[float], n_samples: int, options: VadOptions) -> list[list[int]]:
    """The hysteresis walk over the frames: start at threshold, end after min_silence below neg_threshold,
    split regions over max_speech at their last long-enough silence."""
    threshold, low = options.threshold, options.silence_threshold
    min_speech = SAMPLE_RATE * options.min_speech_duration_ms / 1000
    min_silence = SAMPLE_RATE * options.min_silence_duration_ms / 1000
    split_silence = SAMPLE_RATE * MIN_SILENCE_AT_MAX_SPEECH_MS / 1000
    max_speech = options.max_speech_samples
    regions: list[list[int]] = []
    start: int | None = None  # the open region's start; None: in silence
    silence_from = 0  # where the open region's current silence began (0: none)
    last_split = resume = 0  # the end of its last silence over split_silence, and the speech after it
    for i, p in enumerate(probs):
        position = FRAME_SAMPLES * i
        if p >= threshold:
            if silence_from:
                silence_from = 0
                if resume < last_split:
                    resume = position
            if start is None:
                start = position
                continue
        if start is not None and position - start > max_speech:
            if last_split:  # cut at the last silence; go on from the speech after it, if any came
                regions.append([start, last_split])
                start = resume if resume >= last_split else None
            else:  # no silence to cut at: cut here
                regions.append([start, position])
                start = None
            last_split = resume = silence_from = 0
            if start is None:
                continue
        if p < low and start is not None:
            if not silence_from:
                silence_from = position
            if position - silence_from > split_silence:
                last_split = silence_from
            if position - silence_from >= min_silence:
                if silence_from - start > min_speech:
                    regions.append([start, silence_from])
                start = None
                last_split = resume = silence_from = 0
    if start is not None and n_samples - start > min_speech:
        regions.append([start, n_samples])
    return regions


def _padded(regions: list[list[int]], n_samples: int, pad: int) -> list[tuple[int, int]]:
    """Each region widened by pad on both sides, or by half the gap where two regions are closer than 2 pad."""
    for k, region in enumerate(regions):
        if k == 0:
            region[0] = max(0, region[0] - pad)
        if k + 1 < len(regions):
            after = regions[k + 1]
            gap = after[0] - region[1]
            if gap < 2 * pad:
                region[1] += gap // 2
                after[0] = max(0, after[0] - gap // 2)
            else:
                region[1] = min(n_samples, region[1] + pad)
                after[0] = max(0, after[0] - pad)
        else:
            region[1] = min(n_samples, region[1] + pad)
    return [(int(a), int(b)) for a, b in regions]


def detect_speech(audio: np.ndarray, options: VadOptions, vad: SileroVad | None = None) -> list[SpeechRegion]:
    """The speech regions of a 16 kHz mono float32 audio."""
    vad = vad or silero_vad()
    return speech_timestamps(vad.speech_probs(audio), len(audio), options)
