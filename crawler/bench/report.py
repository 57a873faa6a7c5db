"""`crystalline bench`'s report: the machine it ran on, and the measurements as an aligned table,
then the lines on the state directory's model (crawler/bench/your_model.py).

What crawler.bench.throughput measured, written out; measures nothing itself. Relies on numpy
and numba (their versions), on torch only to name its version when it is installed, and on the
words `crystalline status` writes counts and durations in (crawler/service/status.py).
"""

from __future__ import annotations

import os
import platform

import numpy as np


def machine_info() -> dict:
    """Python, platform, processor, usable CPUs and the numeric libraries' versions."""
    import numba

    info = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "numpy": np.__version__,
        "numba": numba.__version__,
    }
    try:
        import torch

        info["torch"] = torch.__version__
    except ImportError:
        info["torch"] = None
    return info


def format_table(report: dict) -> str:
    """The report as aligned text, one row per config and thread count."""
    peaks = ", ".join(f"{p['threads']} thr {p['gflops']:.1f}" for p in report["peak_gflops"])
    arch = report["arch"]
    what = "the product's default: rotary positions, Muon" if arch == "product" else "GPT-2, AdamW"
    lines = [f"architecture: {arch} ({what}); MFU over forward, backward and reduction",
             "share of the step: forward, backward, reduction (summing the threads' gradients), update "
             "(clipping and optimizer), rest (the threads' hand-offs and waits)",
             f"float32 matmul peak (numpy sgemm, GFLOP/s): {peaks}"]
    start = report["start_time"]
    if start:
        lines.append(f"numba start: cold compile {start['cold_s']:.1f} s, warm (cached) {start['warm_s']:.1f} s")
    header = ["config", "params", "threads", "tok/s", "eff", "GFLOP/s", "MFU", *SHARE_HEADER, "MB/thread"]
    if report["compare_torch"]:
        header += ["torch tok/s", "engine/torch"]
    rows = [header]
    for config in report["configs"]:
        for r in config["results"]:
            row = [config["name"], f"{config['parameters'] / 1e6:.2f}M", str(r["threads"])]
            if "skipped" in r:
                rows.append(row + [f"skipped: {r['skipped']}"])
                continue
            eff = r["parallel_efficiency"]
            row += [
                f"{r['tokens_per_s']:.0f}",
                "-" if eff is None else f"{eff:.2f}",
                f"{r['gflops']:.2f}",
                f"{100 * r['mfu']:.1f}%",
                *share_cells(r["shares"]),
                f"{r['memory_per_thread_mb']:.1f}",
            ]
            if report["compare_torch"]:
                row += [f"{r['torch_tokens_per_s']:.0f}", f"{r['engine_vs_torch']:.2f}x"]
            rows.append(row)
    full = [row for row in rows if len(row) == len(header)]
    widths = [max(len(row[i]) for row in full) for i in range(len(header))]
    for row in rows:
        cells = zip(row, widths) if len(row) == len(header) else zip(row, widths[: len(row) - 1] + [0])
        lines.append("  ".join(cell.rjust(width) for cell, width in cells))
    if report.get("your_model") is not None:
        lines.extend(your_model_lines(report["your_model"]))
    return "\n".join(lines)


# the phases of a step as the table's columns head them, in the order of the report's "shares"
SHARES = (("forward", "fwd"), ("backward", "bwd"), ("reduce", "reduce"), ("update", "update"), ("rest", "rest"))
SHARE_HEADER = [column for _, column in SHARES]


def share_cells(shares: dict) -> list[str]:
    """Each phase's share of the step as a whole percentage, in SHARES' order."""
    return [f"{100 * shares[phase]:.0f}%" for phase, _ in SHARES]


def your_model_lines(yours: dict) -> list[str]:
    """"your model: 41.2k tokens/s; one pass over your 1.2M stored tokens takes about 29 s ...",
    with what was timed under it; one line when the state directory holds no stored text."""
    from ..service.status import count_text, duration_text

    if not yours["stored_tokens"]:
        return [f"your model: no stored text in {yours['state_dir']} yet "
                "(crystalline ingest PATH, or --state-dir DIR for another state directory)"]
    def plural(count: int, word: str) -> str:
        return f"{count} {word}" + ("" if count == 1 else "s")

    def about(seconds: float) -> str:
        return "under a second" if seconds < 1 else f"about {duration_text(seconds)}"

    model = yours["model"]
    source = "the last checkpoint's" if model["from"] == "checkpoint" else "as configured"
    what = (f"  {plural(model['n_layer'], 'layer')}, d_model {model['d_model']}, {plural(model['n_head'], 'head')}, "
            f"vocabulary {model['vocab_size']} ({count_text(model['parameters'])} parameters, {source}); "
            f"{plural(yours['threads'], 'thread')}, batch {yours['batch_size']} x {yours['seq_len']}; "
            f"{yours['state_dir']}")
    if "skipped" in yours:
        return [f"your model: not timed: {yours['skipped']}", what]
    untrained = yours["untrained_tokens"]
    first = (f"your model: {count_text(yours['tokens_per_s'])} tokens/s; one pass over your "
             f"{count_text(yours['stored_tokens'])} stored tokens takes {about(yours['pass_seconds'])}")
    if untrained:
        first += f", the {count_text(untrained)} not yet trained {about(yours['untrained_seconds'])}"
    else:
        first += "; all of it has been trained"
    shares = ", ".join(f"{column} {cell}" for (_, column), cell in zip(SHARES, share_cells(yours["shares"])))
    lines = [first, what,
             f"  MFU {100 * yours['mfu']:.1f}%; share of the step: {shares}; training time only "
             "(evaluations and checkpoints add to it)"]
    if yours["trainer_running"]:
        lines.append("  a trainer holds this state directory now and shares the cores: the figures are low")
    return lines
