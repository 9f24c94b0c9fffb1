"""The bench report: ratios against the fastest baseline, the table, the ms/step-vs-batch plot."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from whisper_export.bench.common import BASELINES, BATCH, SYSTEMS

# -- the report -----------------------------------------------------------------------------------------------


def ratio_table(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Each metric: ours, every baseline, the fastest baseline and ours' speed-up over it (>1: ours faster)."""
    metrics = [
        ("encoder ms/window (batch 1)", "encoder_ms", False),
        ("decoder ms/token, batch 1 greedy", "greedy_b1_ms_per_token", False),
        ("decoder ms/token, batch 1 beam 5", "beam5_b1_ms_per_token", False),
        (f"tokens/s, batch {BATCH} greedy", f"greedy_b{BATCH}_tokens_per_s", True),
        ("whole process s (load + transcribe)", "e2e_process_s", False),
        ("in-process transcribe s", "e2e_inprocess_s", False),
        ("peak RSS MiB (whole process)", "e2e_maxrss_mib", False),
    ]
    rows = []
    for label, key, higher_better in metrics:
        row: dict[str, Any] = {"metric": label, "key": key}
        for system in SYSTEMS:
            row[system] = results.get(system, {}).get(key)
        base = {s: row[s] for s in BASELINES if isinstance(row[s], (int, float))}
        if base and isinstance(row["ours"], (int, float)) and row["ours"] > 0:
            best = (max if higher_better else min)(base, key=lambda name: base[name])
            row["fastest_baseline"] = best
            row["speedup_vs_fastest"] = row["ours"] / base[best] if higher_better else base[best] / row["ours"]
        rows.append(row)
    return rows


def format_table(rows: list[dict[str, Any]]) -> str:
    def cell(v):
        if v is None:
            return "-"
        if isinstance(v, float):
            return f"{v:.3g}" if abs(v) < 100 else f"{v:.0f}"
        return str(v)

    head = ["metric", *SYSTEMS, "fastest baseline", "ours vs it"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        speed = r.get("speedup_vs_fastest")
        vals = [r["metric"], *(cell(r[s]) for s in SYSTEMS), r.get("fastest_baseline", "-"),
                f"{speed:.2f}x" if speed else "-"]
        lines.append("| " + " | ".join(vals) + " |")
    return "\n".join(lines)


def plot_batches(curve: dict[str, list[dict[str, float]]], path: Path) -> str | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed: no plot"
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, points in curve.items():
        if points:
            ax.plot([p["rows"] for p in points], [p["ms_per_token"] for p in points], marker="o", label=name)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("batch size (decoder rows)")
    ax.set_ylabel("ms per token (decoder step / rows)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    return None
