"""The release gate's token check: the runtime's greedy tokens on real speech against the torch reference's.

check.py runs it after the graph checks; it needs neither their rows nor their random inputs.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from whisper_export import graph_io as io
from whisper_export.bundle import Bundle
from whisper_export.checks.tolerances import bundle_tolerance


def check_tokens(bundle: Bundle, model, audio_paths: list[Path], max_tokens: int | None = None) -> list[dict]:
    """Greedy tokens of the runtime on the bundle against the torch reference, with the same suppression (at most
    max_tokens new tokens per clip; None: n_text_ctx // 2, DecodingOptions' default), and each clip's greedy-token
    agreement: the share of the reference's choices (its tokens and final eot) that the bundle's decoder also makes
    when fed the reference's tokens before each (1.0 exactly when the tokens are identical); at least the bundle
    tolerance's min_token_agreement passes."""
    import torch

    from reference_model.greedy import greedy_decode
    from whisper_export.runtime.audio import load_audio, log_mel_batch
    from whisper_export.runtime.decoding import suppress_set
    from whisper_export.runtime.options import DecodingOptions
    from whisper_export.runtime.api import WhisperRuntime

    tok = bundle.tokenizer()
    sp = tok.special
    sample_len = max_tokens or bundle.dims.n_text_ctx // 2
    options = DecodingOptions(language="en" if tok.is_multilingual else None, without_timestamps=True,
                              sample_len=sample_len)
    prompt = [*tok.sot_sequence(options.language), sp.no_timestamps]
    suppress, at_begin = suppress_set(tok, options), [*tok.encode(" "), sp.eot]
    min_agreement = bundle_tolerance(bundle.config).min_token_agreement
    results = []
    with WhisperRuntime.load(bundle.directory) as runtime:
        for path in audio_paths:
            mel = log_mel_batch([load_audio(path)], bundle.dims.n_mels)
            ref = greedy_decode(model, torch.from_numpy(mel), prompt, sp.eot, sample_len, suppress, at_begin)[0]
            got = runtime.decode(mel, options)[0].tokens
            # the reference's choices: its tokens, and eot unless it stopped at the cap
            choices = ref + ([sp.eot] if len(ref) < sample_len else [])
            logits = teacher_forced_logits(bundle, mel, prompt + ref)[len(prompt) - 1:][:len(choices)]
            logits[:, list(suppress)] = -np.inf
            logits[0, at_begin] = -np.inf
            agreement = float(np.mean(logits.argmax(-1) == np.asarray(choices)))
            results.append({"audio": str(path), "reference": ref, "bundle": got, "identical": ref == got,
                            "agreement": agreement, "ok": agreement >= min_agreement, "text": tok.decode(got)})
    return results


def teacher_forced_logits(bundle: Bundle, mel: np.ndarray, tokens: list[int]) -> np.ndarray:
    """The bundle decoder's logits (n, V) at every position of one step over tokens (n) on its encoder's output
    of mel (1, n_mels, 3000): the graphs through onnxruntime on the CPU."""
    import onnxruntime as ort

    dims, layers = bundle.dims, bundle.dims.n_text_layer
    encoder = ort.InferenceSession(str(bundle.encoder_path), providers=["CPUExecutionProvider"])
    decoder = ort.InferenceSession(str(bundle.decoder_path), providers=["CPUExecutionProvider"])
    cross = encoder.run(io.cross_outputs(layers), {io.MEL: mel})
    cache = np.zeros((1, dims.n_text_head, len(tokens), dims.text_head_dim), io.PRECISIONS[bundle.precision])
    selects = bundle.config.get("attention") == "onnxruntime"  # the decoder also chooses greedily (graph_io)
    feeds = {io.TOKENS: np.asarray([tokens], np.int64), io.OFFSETS: np.zeros(1, np.int64),
             io.LOGIT_POSITIONS: np.arange(len(tokens), dtype=np.int64),
             **{name: cache for name in io.self_inputs(layers)}, **dict(zip(io.cross_inputs(layers), cross)),
             **({io.LOGIT_BIAS: np.zeros(dims.n_vocab, np.float32)} if selects else {})}
    return decoder.run([io.LOGITS], feeds)[0][0]
