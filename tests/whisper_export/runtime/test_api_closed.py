"""WhisperRuntime after close(): a clear error, not 'NoneType' object has no attribute 'run'."""

from __future__ import annotations

import pytest


def test_a_runtime_used_after_close_says_so(tiny_bundle, clips):
    from whisper_export.runtime.api import RuntimeClosedError, WhisperRuntime

    with WhisperRuntime.load(tiny_bundle) as runtime:
        pass
    for call in (lambda: runtime.transcribe(clips["en_fox.wav"]["path"]),
                 lambda: runtime.detect_language(clips["en_fox.wav"]["path"])):
        with pytest.raises(RuntimeClosedError, match="closed WhisperRuntime.*load a new one"):
            call()
    runtime.close()  # a second close is harmless
