"""Decoding backends: the contract (base.Backend) and its implementations.

Implementations are imported on demand so that `import whisper_export.backends` pulls in neither
onnxruntime nor torch.
"""

from whisper_export.backends.base import Backend, BackendError, CrossKV, SelfCache

__all__ = ["Backend", "BackendError", "CrossKV", "SelfCache"]
