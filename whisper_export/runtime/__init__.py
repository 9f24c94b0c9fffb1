"""The decoding runtime: audio, options, the decoding loop, the scheduler, long-form transcription, writers.

`from whisper_export.runtime import WhisperRuntime` is the public entry point (api.py). Imports numpy,
onnxruntime and tokenizers only; torch only when the torch backend is chosen.
"""

from whisper_export.runtime.api import FileResult, Segment, TranscriptionResult, WhisperRuntime

__all__ = ["WhisperRuntime", "FileResult", "TranscriptionResult", "Segment"]
