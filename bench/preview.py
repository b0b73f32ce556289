"""Benchmark: StyleGAN2 W+ preview latency on the CPU (not a test).

Full-size e4e decoder (rule-wbn-1d weights: same architecture and cost as the real one). Prints the
median latency of `StyleGANPreview.render` for: the reduced 256² path (the slider preview) with a
fresh W+ each call (what real edits need: they touch rows 0–7 or all rows), the same with NCHW
instead of channels_last, with the stage cache when only late rows move, in bfloat16 (draft), the
coarser 64²/128² levels, and the full 1024² image.

Wall times on a machine shared with other jobs are inflated (OpenMP threads wait for a busy core);
the process CPU time column is a steadier measure of the work itself (with --threads 1 it is the
single-core compute time).

Usage: python bench/preview.py [--threads 2] [--repeats 5] [--skip-full] [--skip-bf16]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--skip-full", action="store_true", help="skip the 1024² runs (≈3–4 s each)")
    ap.add_argument("--skip-bf16", action="store_true")
    args = ap.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

    import numpy as np
    import torch

    from engine.pipeline.face_preview import StyleGANPreview, to_uint8
    from engine.testing.stylegan2 import rule_decoder_state, rule_wplus

    torch.set_num_threads(args.threads)
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            cpu = next(line.split(":", 1)[1].strip() for line in fh if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"{cpu}, {os.cpu_count()} logical CPUs, torch {torch.__version__} with {args.threads} threads, "
          f"python {platform.python_version()}; load average at start {load:.2f}")

    state = rule_decoder_state()
    base = rule_wplus("input:wplus#bench")
    direction = rule_wplus("input:wplus#bench_dir")
    counter = [0]

    def edited(rows: slice) -> np.ndarray:
        """A new slider position every call, moving only `rows` (like a real edit direction)."""
        counter[0] += 1
        w = base.copy()
        w[0, rows] += 0.01 * counter[0] * direction[0, rows]
        return w

    def measure(label: str, fn, repeats: int) -> float:
        fn()  # warm-up (oneDNN primitive creation, static weights)
        times, cpu = [], []
        for _ in range(repeats):
            t0, c0 = time.perf_counter(), time.process_time()
            fn()
            times.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
        med = statistics.median(times)
        print(f"{label:<66} {med * 1000:8.1f} ms  (min {min(times) * 1000:7.1f}; CPU time "
              f"{statistics.median(cpu) * 1000:7.1f} ms; n={repeats})")
        return med

    fast = StyleGANPreview.from_state_dict(state, cache=False)
    nchw = StyleGANPreview.from_state_dict(state, cache=False, channels_last=False)
    cached = StyleGANPreview.from_state_dict(state, cache=True)
    r = args.repeats
    measure("256² reduced path, fp32 channels_last, rows 0–7 edited", lambda: fast.render(edited(slice(0, 8)), 256), r)
    measure("256² reduced path, fp32 channels_last, all 18 rows edited", lambda: fast.render(edited(slice(0, 18)), 256), r)
    measure("256² reduced path, fp32 NCHW, rows 0–7 edited", lambda: nchw.render(edited(slice(0, 8)), 256), r)
    cached.render(base, 256)
    measure("256² reduced path + stage cache, rows 0–7 edited (full re-run)",
            lambda: cached.render(edited(slice(0, 8)), 256), r)
    measure("256² reduced path + stage cache, rows 8–17 edited", lambda: cached.render(edited(slice(8, 18)), 256), r)
    measure("256² reduced path + stage cache, rows 12–17 edited", lambda: cached.render(edited(slice(12, 18)), 256), r)
    measure("128² level (coarser partial path), fp32", lambda: fast.render_float(edited(slice(0, 8)), 128), r)
    measure("64² level (coarser partial path), fp32", lambda: fast.render_float(edited(slice(0, 8)), 64), r)
    batch = StyleGANPreview.from_state_dict(state, cache=False)
    w4 = torch.from_numpy(np.concatenate([edited(slice(0, 8)) for _ in range(4)]))

    def batch4() -> None:
        with torch.inference_mode():
            batch.module(w4)

    t4 = measure("256² reduced path, batch of 4 through .module (per call)", batch4, max(2, r // 2))
    print(f"{'   → per image':<66} {t4 / 4 * 1000:8.1f} ms")
    if not args.skip_bf16:
        draft = StyleGANPreview.from_state_dict(state, cache=False, dtype="bfloat16")
        measure("256² reduced path, bfloat16 draft, rows 0–7 edited", lambda: draft.render(edited(slice(0, 8)), 256), r)
        measure("128² level, bfloat16 draft", lambda: draft.render(edited(slice(0, 8)), 128), r)
        measure("64² level, bfloat16 draft", lambda: draft.render(edited(slice(0, 8)), 64), r)
        w = edited(slice(0, 8))
        diff = np.abs(draft.render(w, 256).astype(int) - fast.render(w, 256).astype(int))
        err = np.abs(draft.render_float(w, 256) - fast.render_float(w, 256))
        print(f"{'   bfloat16 vs fp32 at 256²':<66} max {diff.max()} grey levels (mean {diff.mean():.2f}); "
              f"float max |Δ| {err.max():.3f}")
    if not args.skip_full:
        full = StyleGANPreview.from_state_dict(state, cache=False)
        measure("1024² full image, fp32 channels_last", lambda: full.render_float(edited(slice(0, 8)), 1024), 2)
        measure("1024² full image → official 256² preview (render(w, 256, full=True))",
                lambda: full.render(edited(slice(0, 8)), 256, full=True), 2)
        w = edited(slice(0, 8))
        a = to_uint8(full.render_float(w, 256))
        print(f"{'   (reduced 256² path vs official 256² preview: different images by design)':<66} "
              f"mean |Δ| {np.abs(a.astype(int) - full.render(w, 256, full=True).astype(int)).mean():.1f} grey levels")
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"load average at end {load:.2f} (a shared machine inflates every number above)")


if __name__ == "__main__":
    main()
