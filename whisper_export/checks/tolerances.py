"""The one tolerance table of the release gate (check.py) and the cross-backend comparison (compare.py)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Tolerance:
    """Allowed max abs error: atol + rtol * max|reference| of that output (fp32 summation order grows with the
    values and the model width); plus a cosine-similarity floor, and the least greedy-token agreement with the
    reference on speech (check.check_tokens: the share of the reference's greedy choices the bundle also makes
    on the reference's tokens; 1.0: identical tokens)."""

    atol: float
    rtol: float
    min_cosine: float
    min_token_agreement: float = 1.0

    def bound(self, reference: np.ndarray) -> float:
        return self.atol + self.rtol * float(np.abs(reference).max(initial=0.0))


TOLERANCES = {
    # fp32 summation order alone: tiny.en's encoder outputs reach 6.1e-5 x max|ref| on 1 of 61 random mels
    # (every attention variant alike, so not the graph's attention); base 0.9e-5 over 12 seeds
    "fp32": Tolerance(atol=1e-4, rtol=1e-4, min_cosine=0.99999),
    # fp16 weights and activations round at ~1e-3 relative
    "fp16": Tolerance(atol=1e-2, rtol=2e-2, min_cosine=0.999),
    # int8 weights and activations (export --int8): every MatMul rounds its inputs at ~1/254 of their range, so
    # element errors have no useful bound and only the direction of each output is held; near ties in the
    # greedy choice can go the other way (tiny.en on the committed English clips: agreement 0.92-1.0, output
    # cosines >= 0.995 on random inputs)
    "int8": Tolerance(atol=math.inf, rtol=0.0, min_cosine=0.99, min_token_agreement=0.85),
}


def bundle_tolerance(config: dict) -> Tolerance:
    """The tolerance of a bundle's graphs: its weights' quantization if any, else its precision."""
    quantize = config.get("quantize")
    return TOLERANCES[f"int{quantize['bits']}"] if quantize else TOLERANCES[config["precision"]]
