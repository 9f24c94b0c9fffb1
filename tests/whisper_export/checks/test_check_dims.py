"""check and the WER gate refuse a checkpoint whose dims are not the bundle's, naming only what differs."""

from __future__ import annotations

import dataclasses

import pytest

from whisper_export.bundle import Bundle
from whisper_export.checks.check import require_same_dims


def test_the_fields_that_differ_are_named(tiny_bundle):
    bundle = Bundle.open(tiny_bundle)
    require_same_dims("tiny.en", bundle.dims, bundle)  # the same dims pass
    other = dataclasses.replace(bundle.dims, n_text_layer=2, n_vocab=51865)
    with pytest.raises(ValueError) as e:
        require_same_dims("x.pt", other, bundle)
    message = str(e.value)
    assert "n_text_layer 2 vs 4" in message and "n_vocab 51865 vs 51864" in message and "n_mels" not in message
    assert message.startswith("checkpoint 'x.pt' and bundle") and "\n" not in message
