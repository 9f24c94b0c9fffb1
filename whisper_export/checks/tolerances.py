"""The one tolerance table of the release gate (check.py) and the cross-backend comparison (compare.py)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Tolerance:
    """Allowed max abs error: atol + rtol * max|reference| of that output (fp32 summation order grows with the
    values and the model width); plus a cosine-similarity floor."""

    atol: float
    rtol: float
    min_cosine: float

    def bound(self, reference: np.ndarray) -> float:
        return self.atol + self.rtol * float(np.abs(reference).max(initial=0.0))


TOLERANCES = {
    # fp32 summation order alone: tiny.en's encoder outputs reach 6.1e-5 x max|ref| on 1 of 61 random mels
    # (every attention variant alike, so not the graph's attention); base 0.9e-5 over 12 seeds
    "fp32": Tolerance(atol=1e-4, rtol=1e-4, min_cosine=0.99999),
    # fp16 weights and activations round at ~1e-3 relative
    "fp16": Tolerance(atol=1e-2, rtol=2e-2, min_cosine=0.999),
}
