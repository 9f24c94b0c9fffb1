"""Fixtures of the batch tests: one local Ray cluster for the session (on loopback, 2 CPUs)."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

@pytest.fixture(scope="session")
def ray_cluster(tmp_path_factory) -> Iterator[str]:
    """ray.init on 127.0.0.1 with 2 CPUs, shared by every test that needs Ray; its GCS address."""
    ray = pytest.importorskip("ray")
    if ray.is_initialized():
        ray.shutdown()
    # workers are started by this process: they import this checkout (PYTHONPATH) and its cache dir
    context = ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1",
                       object_store_memory=256 * 2**20, logging_level="warning",
                       runtime_env={"env_vars": {"PYTHONPATH": os.environ.get("PYTHONPATH", ""),
                                                 "WHISPER_EXPORT_CACHE_DIR": os.environ["WHISPER_EXPORT_CACHE_DIR"]}})
    yield context.address_info["gcs_address"]
    ray.shutdown()
