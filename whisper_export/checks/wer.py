"""The accuracy gate (``check --wer REFS.tsv``): a bundle's word error rate against the fp32 torch reference's.

REFS.tsv lists ``audio<TAB>reference text``, one clip per line (blank lines and lines starting with ``#`` are
skipped; relative audio paths resolve against the TSV's directory). Both systems transcribe every clip with the
same options (greedy, temperature 0 without fallback, no timestamps); the texts and the references are
normalised with openai-whisper's English or basic normaliser (runtime/normalizers.py) and scored as corpus WER
(word edits summed over the clips / reference words). The gate fails when the bundle's WER exceeds the
reference's by more than ``max_increase`` (0.005 = half a point).

The reference is the torch backend on the checkpoint the bundle was exported from (its config's model_spec),
in fp32: the model itself, not another export of it, so a fault shared by every export cannot hide.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_MAX_WER_INCREASE = 0.005
# what both systems are asked: deterministic, one pass per 30 s window
TRANSCRIBE_OPTIONS = {"temperature": 0.0, "without_timestamps": True}


def edit_distance(reference: list, hypothesis: list) -> int:
    """Levenshtein distance (substitutions, insertions, deletions) between two sequences."""
    previous = list(range(len(hypothesis) + 1))
    for i, r in enumerate(reference, start=1):
        current = [i]
        for j, h in enumerate(hypothesis, start=1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (r != h)))
        previous = current
    return previous[-1]


def corpus_wer(references: list[str], hypotheses: list[str]) -> float:
    """Word edits over every clip / reference words, on texts already normalised."""
    words = sum(len(r.split()) for r in references)
    if words == 0:
        raise ValueError("references: received no words after normalisation, expected at least one")
    return sum(edit_distance(r.split(), h.split()) for r, h in zip(references, hypotheses)) / words


@dataclass(frozen=True)
class Reference:
    audio: Path
    text: str


def read_references(path: str | Path) -> list[Reference]:
    """The clips of a REFS.tsv; ValueError naming the line for anything malformed or missing."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise ValueError(f"--wer: received {str(path)!r}, which does not exist; expected a TSV of "
                         "audio<TAB>reference text lines") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"--wer: {str(path)!r} is unreadable ({e}); expected a UTF-8 TSV") from None
    refs = []
    for number, line in enumerate(lines, start=1):
        if not line.strip() or line.startswith("#"):
            continue
        audio, tab, text = line.partition("\t")
        if not tab or not audio.strip() or not text.strip():
            raise ValueError(f"{path}:{number}: received {line[:80]!r}, expected 'audio<TAB>reference text'")
        resolved = Path(audio.strip())
        resolved = resolved if resolved.is_absolute() else path.parent / resolved
        if not resolved.is_file():
            raise ValueError(f"{path}:{number}: audio {audio.strip()!r} ({resolved}) does not exist")
        refs.append(Reference(resolved, text.strip()))
    if not refs:
        raise ValueError(f"--wer: {str(path)!r} lists no clips; expected audio<TAB>reference text lines")
    return refs


@dataclass
class WerReport:
    bundle_wer: float
    reference_wer: float
    max_increase: float
    normalizer: str
    rows: list[dict] = field(default_factory=list)  # {audio, reference, bundle, torch} texts

    @property
    def increase(self) -> float:
        return self.bundle_wer - self.reference_wer

    @property
    def ok(self) -> bool:
        return self.increase <= self.max_increase

    def table(self) -> str:
        lines = [f"WER on {len(self.rows)} clips ({self.normalizer} normaliser)"]
        for r in self.rows:
            if r["bundle"] != r["torch"]:
                lines.append(f"  {Path(r['audio']).name}: bundle {r['bundle']!r}, torch {r['torch']!r}")
        lines += [f"WER bundle {self.bundle_wer:.4f}", f"WER torch fp32 reference {self.reference_wer:.4f}",
                  f"WER increase {self.increase:+.4f} (allowed {self.max_increase:.4f})",
                  "WER PASS" if self.ok else "WER FAIL"]
        return "\n".join(lines)


@dataclass(frozen=True)
class WerGate:
    """What ``check --wer`` is asked: the references, the allowed WER increase, the normaliser (by name:
    runtime.normalizers.NORMALIZERS)."""

    refs_tsv: Path
    max_increase: float = DEFAULT_MAX_WER_INCREASE
    normalizer: str = "english"

    def __post_init__(self) -> None:
        self._verify()

    def _verify(self) -> None:
        from whisper_export.runtime.normalizers import NORMALIZERS

        if not 0.0 <= self.max_increase < 1.0:
            raise ValueError(f"--max-wer-increase: received {self.max_increase}, expected 0 <= value < 1 "
                             "(0.005 = half a point)")
        if self.normalizer not in NORMALIZERS:
            raise ValueError(f"--normalizer: received {self.normalizer!r}, expected one of {', '.join(NORMALIZERS)}")
        read_references(self.refs_tsv)


def _transcripts(runtime, audio: list[Path]) -> list[str]:
    return [item.unwrap().text for item in runtime.transcribe_batch(audio, **TRANSCRIBE_OPTIONS)]


def check_wer(bundle_dir: str | Path, gate: WerGate, model_spec: str | None = None,
              threads: int | None = None) -> WerReport:
    """Transcribe the gate's clips with the bundle (onnxruntime, CPU) and with the torch reference of the
    checkpoint it was exported from (model_spec overrides), and compare their WERs."""
    from reference_model import load_checkpoint
    from whisper_export.bundle import Bundle
    from whisper_export.checks.check import require_same_dims
    from whisper_export.runtime.api import WhisperRuntime
    from whisper_export.runtime.normalizers import NORMALIZERS

    refs = read_references(gate.refs_tsv)
    bundle = Bundle.open(bundle_dir)
    audio = [r.audio for r in refs]
    with WhisperRuntime.load(bundle.directory, threads=threads) as runtime:
        ours = _transcripts(runtime, audio)
    ckpt = load_checkpoint(model_spec or bundle.config.get("model_spec") or bundle.config["model_source"])
    require_same_dims(ckpt.spec, ckpt.dims, bundle)
    with WhisperRuntime.load(model=ckpt, backend="torch", threads=threads) as runtime:
        theirs = _transcripts(runtime, audio)
    normalize = NORMALIZERS[gate.normalizer]()
    truth = [normalize(r.text) for r in refs]
    report = WerReport(corpus_wer(truth, [normalize(t) for t in ours]),
                       corpus_wer(truth, [normalize(t) for t in theirs]), gate.max_increase, gate.normalizer)
    report.rows = [{"audio": str(r.audio), "reference": r.text, "bundle": o, "torch": t}
                   for r, o, t in zip(refs, ours, theirs)]
    return report
