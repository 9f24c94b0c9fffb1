"""Load test of `whisper-export serve` on the loopback interface: the same requests sent one at a time, then by
several concurrent clients; every answer must equal the sequential one, and the table gives requests/s and p50/p99
latency per client count, with the speed-up over one client.

    python benchmarks/serve_load.py --bundle B [--device cuda] [--concurrency 1,8,32,40] [--requests 40]
        [--batch-size 8] [--serve-args "--beam-size None"] [--target 1.3] [--time-limit 1800]

It starts the server itself (a subprocess on 127.0.0.1, a free port, --max-queue as large as the request count)
and stops it with SIGTERM. The requests cycle through the committed English clips (tests/data/en_*.wav, 3-5 s).
The first concurrency level must be 1 (the baseline); --target T checks the last level: exit 1 unless its wall
time is at least T times shorter than the baseline's and every text equals the baseline's. The run stops (exit 2)
once --time-limit seconds have passed.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import openai

ROOT = Path(__file__).resolve().parents[1]
CLIPS = sorted((ROOT / "tests" / "data").glob("en_*.wav"))


def start_server(args: argparse.Namespace) -> tuple[subprocess.Popen, str]:
    source = ["--bundle", args.bundle] if args.bundle else ["--model", args.model] if args.model else []
    command = [shutil.which("whisper-export") or "whisper-export", "serve", *source, "--device", args.device,
               "--port", "0", "--max-queue", str(max(64, args.requests)), "--batch-size", str(args.batch_size),
               *shlex.split(args.serve_args)]
    print("server:", " ".join(command), file=sys.stderr)
    process = subprocess.Popen(command, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    found: list[str] = []
    ready = threading.Event()

    def read() -> None:
        for line in process.stderr:
            if not found and (match := re.search(r"\[serve\] .* on (http://\S+)", line)):
                found.append(match.group(1))
                ready.set()
            elif "Traceback" in line or "error" in line.lower():
                sys.stderr.write(line)

    threading.Thread(target=read, daemon=True).start()
    if not ready.wait(args.time_limit):
        process.kill()
        sys.exit("the server printed no address")
    url = found[0]
    while True:
        try:
            if httpx.get(url + "/health", timeout=5).status_code == 200:
                return process, url
        except httpx.HTTPError:
            time.sleep(0.2)


def run_level(url: str, uploads: list[tuple[str, bytes]], clients: int, deadline: float) -> dict:
    """Every upload transcribed, clients at a time: wall seconds, each request's latency, each text."""
    client = openai.OpenAI(base_url=url + "/v1", api_key="load-test", max_retries=0,
                           timeout=max(1.0, deadline - time.monotonic()))

    def one(upload: tuple[str, bytes]) -> tuple[float, str]:
        started = time.perf_counter()
        text = client.audio.transcriptions.create(file=upload, model="whisper-1", response_format="text")
        return time.perf_counter() - started, text

    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        answers = list(pool.map(one, uploads))
    return {"clients": clients, "wall_s": time.perf_counter() - started,
            "latencies": [a[0] for a in answers], "texts": [a[1] for a in answers]}


def table(levels: list[dict]) -> str:
    base = levels[0]
    rows = ["| clients | requests | wall s | requests/s | p50 s | p99 s | speed-up vs 1 client | texts = 1 client's |",
            "|---|---|---|---|---|---|---|---|"]
    for level in levels:
        lat = np.array(level["latencies"])
        rows.append(f"| {level['clients']} | {len(lat)} | {level['wall_s']:.2f} | {len(lat) / level['wall_s']:.2f} | "
                    f"{np.percentile(lat, 50):.2f} | {np.percentile(lat, 99):.2f} | "
                    f"{base['wall_s'] / level['wall_s']:.2f}x | {'yes' if level['texts'] == base['texts'] else 'NO'} |")
    return "\n".join(rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", help="exported bundle directory")
    parser.add_argument("--model", help="checkpoint name or path when no --bundle (default: tiny.en)")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--concurrency", default="1,8,32,40", help="client counts, the first 1 (default 1,8,32,40)")
    parser.add_argument("--requests", type=int, default=40, help="requests per level (default 40)")
    parser.add_argument("--batch-size", type=int, default=8, help="the server's --batch-size (default 8)")
    parser.add_argument("--serve-args", default="", help="more `whisper-export serve` options, as one string")
    parser.add_argument("--target", type=float, default=None, help="the last level's speed-up that must be met")
    parser.add_argument("--time-limit", type=float, default=1800.0, help="seconds for the whole run (default 1800)")
    parser.add_argument("--json", type=Path, help="also write the levels' numbers here")
    args = parser.parse_args()
    levels = [int(c) for c in args.concurrency.split(",")]
    if levels[0] != 1 or any(c < 1 for c in levels) or not 1 <= args.requests <= 1000:
        parser.error("--concurrency must start with 1 and list counts >= 1; --requests 1..1000")
    deadline = time.monotonic() + args.time_limit
    uploads = [(CLIPS[i % len(CLIPS)].name, CLIPS[i % len(CLIPS)].read_bytes()) for i in range(args.requests)]
    print(f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at the start; {args.requests} requests "
          f"over {len(CLIPS)} clips", file=sys.stderr)
    process, url = start_server(args)
    results = []
    timer = threading.Timer(max(0.0, deadline - time.monotonic()), process.kill)  # the time limit
    timer.daemon = True
    timer.start()
    try:
        run_level(url, uploads[:2], 1, deadline)  # warm-up: sessions, allocators
        for clients in levels:
            results.append(run_level(url, uploads, clients, deadline))
            print(f"{clients} client(s): {results[-1]['wall_s']:.2f} s", file=sys.stderr)
    except (openai.APIError, httpx.HTTPError) as e:
        print(f"a request failed: {e}", file=sys.stderr)
        return 2
    finally:
        timer.cancel()
        process.send_signal(signal.SIGTERM)
        process.wait(120)
    print(f"load average {os.getloadavg()[0]:.1f} at the end")
    print(table(results))
    if args.json:
        args.json.write_text(json.dumps([{k: v for k, v in r.items() if k != "texts"} for r in results], indent=1))
    same = all(r["texts"] == results[0]["texts"] for r in results)
    speedup = results[0]["wall_s"] / results[-1]["wall_s"]
    if args.target is not None and not (same and speedup >= args.target):
        print(f"FAIL: {results[-1]['clients']} clients {speedup:.2f}x (target {args.target}x), same texts: {same}")
        return 1
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
