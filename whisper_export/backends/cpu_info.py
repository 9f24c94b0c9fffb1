"""How many threads a CPU session should use."""

from __future__ import annotations

import os


def physical_cores() -> int:
    """Physical cores available to this process: hyper-threads share one core's FPUs, so GEMM-bound
    inference gains little from them while doubling contention."""
    try:
        allowed = os.sched_getaffinity(0)
    except AttributeError:  # not Linux
        allowed = set(range(os.cpu_count() or 1))
    cores: set[tuple[str, str]] = set()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = phys = core = None
            for line in f:
                key, _, value = line.partition(":")
                key, value = key.strip(), value.strip()
                if key == "processor":
                    cpu = int(value)
                elif key == "physical id":
                    phys = value
                elif key == "core id":
                    core = value
                elif not key and cpu is not None:
                    if cpu in allowed:
                        cores.add((phys or "0", core if core is not None else str(cpu)))
                    cpu = phys = core = None
            if cpu is not None and cpu in allowed:
                cores.add((phys or "0", core if core is not None else str(cpu)))
    except OSError:
        pass
    return max(1, len(cores) if cores else len(allowed))
