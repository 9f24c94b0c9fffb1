"""What applications embed: load a bundle (or a checkpoint for the torch backend) and transcribe.

    from whisper_export.runtime.api import WhisperRuntime
    with WhisperRuntime.load("bundles/tiny.en") as rt:
        print(rt.transcribe("meeting.wav", beam_size=5).text)

Imports numpy, onnxruntime and tokenizers only; torch is imported by the torch backend, when chosen.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from whisper_export.runtime.audio import AudioInput
from whisper_export.runtime.mel_source import MelSource
from whisper_export.backends.base import Backend
from whisper_export.bundle import Bundle
from whisper_export.runtime.decoding import DecodingResult, detect_language
from whisper_export.runtime.options import DecodingOptions, split_options
from whisper_export.runtime.scheduler import decode
from whisper_export.tokenizer import WhisperTokenizer
from whisper_export.runtime.transcribe import (
    ProgressCallback,
    Segment,
    SegmentCallback,
    Transcriber,
    TranscriptionLoop,
    TranscriptionResult,
)
from whisper_export.runtime.vad_transcribe import transcribe_speech

BACKENDS = ("onnxruntime", "tensorrt", "torch")

__all__ = ["WhisperRuntime", "FileResult", "TranscriptionResult", "Segment", "DecodingOptions", "DecodingResult"]


@dataclass(frozen=True)
class FileResult:
    """One input of transcribe_batch: its result, or the error that stopped it (the others went on)."""

    source: Any  # the path or array passed in
    result: TranscriptionResult | None = None
    error: Exception | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    def unwrap(self) -> TranscriptionResult:
        if self.error is not None:
            raise self.error
        assert self.result is not None
        return self.result


class RuntimeClosedError(RuntimeError):
    """A WhisperRuntime used after close() (its sessions and device memory are gone)."""


class WhisperRuntime:
    _closed = False

    def __init__(self, backend: Backend, tokenizer: WhisperTokenizer):
        if tokenizer.n_vocab != backend.dims.n_vocab:
            raise ValueError(f"tokenizer: received n_vocab {tokenizer.n_vocab}, expected the model's {backend.dims.n_vocab}")
        self.backend = backend
        self.tokenizer = tokenizer
        self._transcriber = Transcriber(backend, tokenizer)

    @classmethod
    def load(
        cls,
        bundle_dir: str | os.PathLike | None = None,
        *,
        model: Any = None,
        backend: str = "onnxruntime",
        device: str = "cpu",
        threads: int | None = None,
    ) -> "WhisperRuntime":
        """bundle_dir: an exported bundle (onnxruntime; tensorrt after ``whisper-export build``); without one,
        model (a checkpoint name or path; None = the packaged tiny.en) is exported once into the user cache, as
        the device runs it fastest (on_demand.ON_DEMAND: attention="onnxruntime", fp32 for a CPU, fp16 for
        CUDA).
        backend "torch" runs the checkpoint itself (model may also be a reference_model Checkpoint)."""
        if backend not in BACKENDS:
            raise ValueError(f"backend: received {backend!r}, expected one of {', '.join(BACKENDS)}")
        if backend == "tensorrt":
            if bundle_dir is None:
                raise ValueError("backend 'tensorrt': received no bundle directory, expected one built by 'whisper-export build'")
            from whisper_export.backends.tensorrt.backend import TensorRTBackend

            bundle = Bundle.open(os.fspath(bundle_dir))
            return cls(TensorRTBackend(bundle), bundle.tokenizer())
        if backend == "onnxruntime":
            if bundle_dir is None:
                from whisper_export.export.on_demand import ON_DEMAND, ensure_bundle

                if device == "cuda":  # before an export that could not run here
                    from whisper_export.backends.onnxruntime import check_cuda_provider

                    check_cuda_provider()
                precision, attention = ON_DEMAND.get(device, ON_DEMAND["cpu"])  # a wrong device: the backend says so
                bundle_dir = ensure_bundle(model, precision, attention=attention)
            from whisper_export.backends.onnxruntime import OnnxRuntimeBackend

            bundle = Bundle.open(os.fspath(bundle_dir))  # BundleError for a missing file or a wrong hash
            return cls(OnnxRuntimeBackend(bundle, device=device, threads=threads), bundle.tokenizer())
        if device != "cpu":
            raise ValueError(f"backend 'torch': received device {device!r}, expected 'cpu'")
        if bundle_dir is not None:
            raise ValueError(
                f"backend 'torch': received bundle {str(bundle_dir)!r}, expected a model (checkpoint name or path): "
                "the torch backend runs the checkpoint, not the exported graphs"
            )
        from whisper_export.backends.reference import TorchBackend

        torch_backend = TorchBackend(model, threads=threads)
        return cls(torch_backend, torch_backend.tokenizer())

    # -- transcription --------------------------------------------------------------------------------

    def transcribe(self, audio: AudioInput, *, progress: ProgressCallback | None = None, **options) -> TranscriptionResult:
        """A path or a (n_samples,) float32 array at 16 kHz, any length. Options: DecodingOptions and
        TranscribeOptions fields (temperature is the fallback schedule)."""
        return self.transcribe_batch([audio], progress=progress, **options)[0].unwrap()

    def check_options(self, **options) -> None:
        """ValueError/TypeError for options this model cannot transcribe with: what transcribe() raises before
        it reads any audio (a server checks its defaults with it at startup)."""
        self._check_open()
        transcribe_options, decoding = split_options(options)
        loop = TranscriptionLoop(self.backend, self.tokenizer, transcribe_options.batch_size)
        try:
            loop.check(transcribe_options, decoding)
        finally:
            loop.close()

    def transcribe_batch(
        self, audios: Sequence[AudioInput], *, progress: ProgressCallback | None = None, **options
    ) -> list[FileResult]:
        """One FileResult per input, in order. Options are checked first (ValueError/TypeError for all);
        an unreadable file becomes that file's error while the others are transcribed."""
        results: list[FileResult | None] = [None] * len(audios)
        for index, item in self.transcribe_iter(audios, progress=progress, **options):
            results[index] = item
        return results  # type: ignore[return-value]

    def transcribe_iter(
        self, audios: Sequence[AudioInput], *, progress: ProgressCallback | None = None,
        on_segment: SegmentCallback | None = None, **options
    ) -> Iterator[tuple[int, FileResult]]:
        """(index into audios, its FileResult) for each input as soon as it is done, in the order they finish:
        a caller can write each file's outputs at once, so an interrupted run keeps the files already done.
        on_segment(index, segment) is called as each segment is decoded (openai-whisper's verbose output).
        Options are checked before the first is yielded (ValueError/TypeError for all)."""
        self._check_open()
        audios = list(audios)
        transcribe_options, decoding = split_options(options)
        if transcribe_options.vad:  # speech chunks, decoded as independent audios by the same transcriber
            outcomes = transcribe_speech(self._transcriber, audios, transcribe_options, decoding, progress)
        else:
            outcomes = self._transcriber.run(audios, transcribe_options, decoding, progress, on_segment)
        for index, outcome in outcomes:
            source = audios[index]
            if isinstance(outcome, Exception):
                yield index, FileResult(source, error=outcome)
            else:
                yield index, FileResult(source, result=outcome)

    def service(self, *, batch_size: int = 8, max_pending: int | None = None):
        """A TranscriptionService on this runtime: transcriptions submitted from any thread, decoded together by
        one worker thread (runtime/service.py); close it before the runtime."""
        from whisper_export.runtime.service import TranscriptionService

        self._check_open()
        return TranscriptionService(self, batch_size=batch_size, max_pending=max_pending)

    def decode(self, mel: np.ndarray, options: DecodingOptions | None = None, **kwargs) -> list[DecodingResult]:
        """One 30 s window per audio: mel (n_audio, n_mels, 3000) float32."""
        self._check_open()
        return decode(self.backend, self.tokenizer, mel, options or DecodingOptions(**kwargs))

    def detect_language(self, audio: AudioInput) -> tuple[str, dict[str, float]]:
        """The language of the first 30 s: (code, {code: probability})."""
        self._check_open()
        if not self.tokenizer.is_multilingual:
            raise ValueError(
                f"detect_language: received an English-only model (n_vocab={self.tokenizer.n_vocab}), "
                "expected a multilingual one"
            )
        # as openai-whisper's transcribe(): the log-mel of the audio padded with 30 s of zeros, cut to 30 s
        with MelSource(audio, self.backend.dims.n_mels) as source:
            mel = source.language_window()
        codes, probs = detect_language(self.backend, self.tokenizer, self.backend.encode(mel[None]), 1)
        return codes[0], probs[0]

    # -- lifetime -------------------------------------------------------------------------------------

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self.backend.close()

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeClosedError(
                f"received a call on a closed {self!r}, expected an open runtime: load a new one with "
                "WhisperRuntime.load(...) (close() and the end of a with block free its sessions)"
            )

    def __enter__(self) -> "WhisperRuntime":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"WhisperRuntime({self.backend!r})"
