"""TensorRT engines for whisper-export bundles: build (build.py, build_cli.py), run (runner.py, backend.py),
compare across backends (compare.py). See each module's docstring; nothing here imports TensorRT at import time."""
