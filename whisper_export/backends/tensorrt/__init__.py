"""TensorRT at run time: the engine runner (runner.py), the Backend on it (backend.py), the few CUDA runtime calls
it needs (cuda.py), the TensorRT module selection (trt_api.py), engine sidecars (sidecar.py) and optimization
profiles (profiles.py). Building engines is engines/'s job. Nothing here imports TensorRT at import time."""
