"""CUDA backends of different precisions one after the other in one process (run with -m gpu on a machine with
onnxruntime-gpu): an fp16 backend after an fp32 one gets device memory the fp32 one freed into onnxruntime's
process-wide arena, whose bits read as fp16 hold NaN; a pool slot no window was encoded into must not hold up the
streamed greedy steps (the CPU path is test_cuda_paths.py::test_streamed_steps_finish_with_a_free_slot_on_recycled_memory)."""

from __future__ import annotations

import pytest

from whisper_export.runtime.api import WhisperRuntime


@pytest.mark.gpu
def test_fp32_then_fp16_backends_in_one_process(tiny_bundle, tiny_bundle_fp16, english_clips):
    """fp32, fp16, fp32, fp16 runtimes in a row, words on: every file decoded, each bundle's texts the CPU's."""
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip("onnxruntime-gpu with CUDAExecutionProvider is not installed")
    clips = [str(c) for c in english_clips]
    options = dict(word_timestamps=True, temperature=0.0)
    want = {}
    for bundle in (tiny_bundle, tiny_bundle_fp16):
        with WhisperRuntime.load(bundle, device="cpu") as cpu:
            want[bundle] = [f.result.text for f in cpu.transcribe_batch(clips, **options)]
    for bundle in (tiny_bundle, tiny_bundle_fp16, tiny_bundle, tiny_bundle_fp16):
        with WhisperRuntime.load(bundle, device="cuda") as gpu:
            files = gpu.transcribe_batch(clips, **options)
        assert all(f.ok for f in files), [f.error for f in files]
        assert [f.result.text for f in files] == want[bundle], bundle
