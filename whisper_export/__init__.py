"""Whisper to ONNX/TensorRT export and a numpy decoding runtime. Importing this package never imports torch."""

__version__ = "0.2.0"
