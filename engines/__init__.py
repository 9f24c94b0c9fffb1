"""Building TensorRT engines for whisper-export bundles (build.py, build_cli.py, loaders.py, attention.py).
Running them is whisper_export.backends.tensorrt's job. Nothing here imports TensorRT at import time."""
