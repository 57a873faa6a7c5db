"""`crystalline bench`'s report: the machine it ran on, and the measurements as an aligned table.

What crawler.bench.throughput measured, written out; measures nothing itself. Relies on numpy
and numba (their versions), and on torch only to name its version when it is installed.
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
    lines = [f"architecture: {arch} ({what}); MFU over forward, backward and reduction; "
             f"update: clipping and optimizer (share of the step)",
             f"float32 matmul peak (numpy sgemm, GFLOP/s): {peaks}"]
    start = report["start_time"]
    if start:
        lines.append(f"numba start: cold compile {start['cold_s']:.1f} s, warm (cached) {start['warm_s']:.1f} s")
    header = ["config", "params", "threads", "tok/s", "eff", "GFLOP/s", "MFU", "update ms", "MB/thread"]
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
                f"{r['update_ms_median']:.1f} ({100 * r['update_share']:.0f}%)",
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
    return "\n".join(lines)
