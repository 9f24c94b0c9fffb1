"""transcribe(vad=True) against the sequential mode on one long recording: real-time factor and WER.

    python benchmarks/vad_bench.py --threads 2                                   # CPU, tiny.en exported on demand
    python benchmarks/vad_bench.py --device cuda --bundle B --batch-size 16      # a GPU (onnxruntime-gpu)
    python benchmarks/vad_bench.py --audio talk.wav --text talk.txt              # a real recording, its transcript
    python benchmarks/vad_bench.py --vad-without-timestamps      # --vad without timestamps against sequential with

Without --audio, a recording of about --minutes minutes is built once into --work-dir from espeak-ng speech:
sentences read by three voices, 0.3-2.5 s of silence between them and 8-20 s after every eighth (a meeting's
breaks), its reference text the sentences themselves. Both modes run in this process on the same runtime, each
timed from the audio in memory to the text (after one warm-up run of each on the first minute; the best of
--repeats), then each once more as a whole process of its own (interpreter start, imports, model load, audio
file read, transcription). Real-time factor = audio seconds / wall seconds. WER: whisper_export/bench/wer.py.
Targets (issue 15) are printed with the distance, never asserted in tests.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from whisper_export.bench.wer import word_error_rate  # noqa: E402
from whisper_export.runtime.audio import SAMPLE_RATE, load_audio  # noqa: E402

VOICES = ("en-us", "en-gb", "en-us+m3")
SPEED_WPM = 150  # as tests/data/make_clips.sh: espeak's default is hard to follow for small models
SENTENCES = """\
Good morning everyone, and thank you for joining the weekly planning meeting.
Before we start, please make sure your microphone is muted when you are not speaking.
The first item on the agenda is the schedule for the new office building.
The builders told us that the roof will be finished by the end of next month.
After that, the electricians need about three weeks to install the lighting.
We also have to decide which team moves in first and which one waits.
My suggestion is that the support team moves first, because they need the most space.
The sales team can stay in the old building until the summer holidays.
Does anyone have a question about the move before we continue?
The second item is the budget for the coming year.
Our costs for travel went up a lot, mostly because of the conferences in the spring.
I would like every team to look at their plans and cut what is not really needed.
That does not mean that nobody can travel, but we should be careful.
Training, on the other hand, is something we want to keep and even expand.
Several people asked for courses on writing and on public speaking.
We found a teacher who can come to the office twice a month.
The third item is about the customer survey that we sent out in the autumn.
More than two thousand customers answered, which is much better than last year.
Most of them are happy with the product, but many complain about the waiting time on the phone.
Some customers waited more than twenty minutes before they could talk to a person.
That is simply too long, and we have to fix it this year.
One idea is to hire four more people for the support desk.
Another idea is to improve the help pages, so that fewer people need to call at all.
We will probably do both, starting with the help pages because they are cheaper.
Now let me say a few words about the new product that we are planning.
The design team has been working on the first drawings for several weeks.
They showed them to a small group of customers, and the reactions were very positive.
People liked the simple shape and the bright colors in particular.
However, a few of them said that the buttons were too small for older users.
The designers will make the buttons larger and test the drawings again.
If everything goes well, we can build the first real samples in the summer.
The factory needs at least two months to prepare the machines for the new parts.
We should also think about the price, which is always a difficult question.
A lower price helps us sell more, but it also means less money for each sale.
Our plan is to start with a higher price and offer discounts later in the year.
Let us move on to the last item, which is the company party in December.
Last year the party was in a restaurant near the river, and everyone enjoyed it.
This year several people suggested that we go bowling instead.
Others would prefer a quiet dinner with good food and some music.
We will send a short message with both ideas, and everybody can vote.
Please answer before the end of next week, so that we have time to book.
Is there anything else that someone wants to talk about today?
Yes, I have a short question about the parking spaces at the new building.
There will be forty spaces for cars and a large room for bicycles.
People who come by bicycle can also use the showers on the ground floor.
We hope that more of you will leave the car at home when the weather is nice.
The city also plans a new bus line that stops right in front of the building.
That should make the trip much easier for everyone who lives in the north.
Thank you all for your time and your good ideas this morning.
The next meeting will take place on Tuesday at the same time in the large room.
Please read the notes that I will send this afternoon and tell me if I forgot something.
Have a good day, and see you next week.
""".strip().splitlines()


# -- the recording --------------------------------------------------------------------------------------


def _say(text: str, voice: str, work: Path) -> np.ndarray:
    raw = work / "sentence.wav"
    subprocess.run(["espeak-ng", "-v", voice, "-s", str(SPEED_WPM), "-w", str(raw), text], check=True)
    return load_audio(raw)  # resampled to 16 kHz


def build_recording(work: Path, minutes: float, seed: int = 0) -> tuple[Path, Path]:
    """(wav, reference text) of about `minutes` minutes, built once and reused."""
    wav, txt = work / f"meeting-{minutes:g}min.wav", work / f"meeting-{minutes:g}min.txt"
    if wav.is_file() and txt.is_file():
        return wav, txt
    import soundfile as sf

    work.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    parts, spoken, total, k = [], [], 0.0, 0
    while total < minutes * 60:
        sentence = SENTENCES[k % len(SENTENCES)]
        speech = _say(sentence, VOICES[k % len(VOICES)], work)
        pause = rng.uniform(8, 20) if k % 8 == 7 else rng.uniform(0.3, 2.5)
        parts += [speech, np.zeros(int(pause * SAMPLE_RATE), np.float32)]
        spoken.append(sentence)
        total += len(speech) / SAMPLE_RATE + pause
        k += 1
    sf.write(wav.with_suffix(".tmp.wav"), np.concatenate(parts), SAMPLE_RATE, subtype="PCM_16")
    wav.with_suffix(".tmp.wav").replace(wav)
    txt.write_text(" ".join(spoken) + "\n")
    return wav, txt


# -- transcription --------------------------------------------------------------------------------------


def load_runtime(args):
    from whisper_export.runtime.api import WhisperRuntime

    return WhisperRuntime.load(args.bundle, model=args.model, device=args.device, threads=args.threads)


def options_for(args, vad: bool) -> dict:
    without_timestamps = args.without_timestamps or (vad and args.vad_without_timestamps)
    options = {"batch_size": args.batch_size, "without_timestamps": without_timestamps, "vad": vad}
    if args.beam_size > 1:
        options["beam_size"] = args.beam_size
    if args.language:
        options["language"] = args.language
    return options


def in_process(args, audio: np.ndarray) -> dict:
    """Each mode's best wall time from the audio in memory to its text, and the VAD's share."""
    from whisper_export.runtime.vad import silero_vad

    out: dict = {}
    with load_runtime(args) as rt:
        for vad in (False, True):  # warm-up: sessions, CUDA graphs, the VAD session
            rt.transcribe(audio[: 60 * SAMPLE_RATE], **options_for(args, vad))
        times: dict[str, list[float]] = {"sequential": [], "vad": []}
        for _ in range(args.repeats):
            for mode in times:
                start = time.perf_counter()
                result = rt.transcribe(audio, **options_for(args, mode == "vad"))
                times[mode].append(time.perf_counter() - start)
                out.setdefault(mode, {"text": result.text, "segments": len(result.segments)})
        vad_session = silero_vad(getattr(rt.backend, "threads", None))
        start = time.perf_counter()
        vad_session.speech_probs(audio)
        out["vad_model_s"] = time.perf_counter() - start
    for mode, samples in times.items():
        out[mode].update(seconds=min(samples), all_seconds=samples)
    return out


def whole_process(args, wav: Path, vad: bool) -> dict:
    """Wall time of a fresh interpreter that loads the model, reads the file and transcribes it."""
    argv = [sys.executable, str(Path(__file__).resolve()), "--child", "--audio", str(wav),
            *_runtime_argv(args), *(["--vad"] if vad else [])]
    start = time.perf_counter()
    done = subprocess.run(argv, check=True, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "text": json.loads(done.stdout.strip().splitlines()[-1])["text"]}


def _runtime_argv(args) -> list[str]:
    argv = ["--device", args.device, "--beam-size", str(args.beam_size), "--batch-size", str(args.batch_size)]
    for flag, value in (("--bundle", args.bundle), ("--model", args.model), ("--threads", args.threads),
                        ("--language", args.language)):
        if value is not None:
            argv += [flag, str(value)]
    return (argv + (["--without-timestamps"] if args.without_timestamps else [])
            + (["--vad-without-timestamps"] if args.vad_without_timestamps else []))


def child(args) -> None:
    with load_runtime(args) as rt:
        result = rt.transcribe(load_audio(args.audio), **options_for(args, args.vad))
    print(json.dumps({"text": result.text}))


# -- report ---------------------------------------------------------------------------------------------


def report(args, duration: float, reference: str, inproc: dict, whole: dict) -> dict:
    rows = {}
    for mode in ("sequential", "vad"):
        rows[mode] = {
            "in_process_s": round(inproc[mode]["seconds"], 3),
            "in_process_all_s": [round(x, 3) for x in inproc[mode]["all_seconds"]],
            "in_process_rtf": round(duration / inproc[mode]["seconds"], 1),
            "whole_process_s": round(whole[mode]["seconds"], 3),
            "whole_process_rtf": round(duration / whole[mode]["seconds"], 1),
            "wer": round(word_error_rate(inproc[mode]["text"], reference), 4),
            "segments": inproc[mode]["segments"],
            "same_text_whole_process": whole[mode]["text"] == inproc[mode]["text"],
        }
    speedup = inproc["sequential"]["seconds"] / inproc["vad"]["seconds"]
    wer_delta = rows["vad"]["wer"] - rows["sequential"]["wer"]
    print(f"audio {duration:.1f} s; VAD model alone {inproc['vad_model_s']:.3f} s; "
          f"options {options_for(args, False)} / {options_for(args, True)}")
    print(f"{'mode':<11} {'in-proc s':>9} {'RTF':>7} {'process s':>9} {'RTF':>7} {'WER %':>6} {'segments':>8}")
    for mode, r in rows.items():
        print(f"{mode:<11} {r['in_process_s']:>9.2f} {r['in_process_rtf']:>7.1f} {r['whole_process_s']:>9.2f} "
              f"{r['whole_process_rtf']:>7.1f} {100 * r['wer']:>6.2f} {r['segments']:>8}")
    print(f"vad speed-up in process {speedup:.2f}x (target >= 1.5x: {'met' if speedup >= 1.5 else 'NOT met'}); "
          f"WER {100 * wer_delta:+.2f} points (target <= +1: {'met' if wer_delta <= 0.01 else 'NOT met'})")
    return {"audio_s": duration, "vad_model_s": inproc["vad_model_s"], "speedup": speedup, "wer_delta": wer_delta,
            "rows": rows, "texts": {m: inproc[m]["text"] for m in rows}, "argv": sys.argv[1:]}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--audio", type=Path, help="a recording (default: the espeak-ng meeting, built once)")
    p.add_argument("--text", type=Path, help="its reference transcript (with --audio)")
    p.add_argument("--minutes", type=float, default=6.0, help="length of the built recording")
    p.add_argument("--work-dir", type=Path, default=Path("/tmp/whisper-export-vad-bench"))
    p.add_argument("--bundle", help="an exported bundle (default: --model exported on demand)")
    p.add_argument("--model", help="checkpoint name or path when no --bundle (default tiny.en)")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--threads", type=int, help="CPU threads of the sessions, the VAD's included")
    p.add_argument("--beam-size", type=int, default=5, help="1 = greedy (the CLI's default is 5)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--language", help="skip language detection (multilingual models)")
    p.add_argument("--without-timestamps", action="store_true")
    p.add_argument("--vad-without-timestamps", action="store_true",
                   help="the --vad mode without timestamps (one segment per chunk, as faster-whisper's batched "
                        "pipeline), the sequential mode with them")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--out", type=Path, help="write the results as JSON here")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--vad", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if (args.audio is None) != (args.text is None) and not args.child:
        p.error("--audio and --text go together")
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.child:
        return child(args)
    if args.audio is None:
        args.audio, args.text = build_recording(args.work_dir, args.minutes)
    audio, reference = load_audio(args.audio), args.text.read_text()
    duration = len(audio) / SAMPLE_RATE
    inproc = in_process(args, audio)
    whole = {mode: whole_process(args, args.audio, mode == "vad") for mode in ("sequential", "vad")}
    results = report(args, duration, reference, inproc, whole)
    if args.out:
        args.out.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
