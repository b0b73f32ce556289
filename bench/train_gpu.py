"""GPU training benchmark (one lent device): full-size SD1.5, batch 16, fp16 mixed precision, 512².

Builds the full-size UNet/VAE/CLIP on the GPU with random weights of the real shapes (timing only, as
bench/gpu.py), writes a small synthetic dataset at 512², and runs the product's training loop
(`engine.training.loop.train`, accelerate, one process): stage 1 then stage 2 (from the stage-1 adapter), each
for `--steps` optimizer steps. Rows per stage: median step time (after 2 warm-up steps, data loading, VAE and
text encoding included), samples/s, and peak GPU memory; plus stage 2 with gradient checkpointing.

`--dry-run` runs the same code on the CPU with the tiny models (64², batch 2, no mixed precision).

Usage: python bench/train_gpu.py [--dry-run] [--steps 8] [--batch 16] [--no-checkpointing-row]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import print_table


def components(dry: bool, device: Any, dtype: Any) -> Any:
    from bench.gpu import _on_device
    from engine.networks.sd15 import (
        SD15Components,
        _clip_factory,
        _load_json,
        _unet_factory,
        _vae_factory,
        default_config_dir,
        load_tokenizer,
    )

    root = default_config_dir()
    if dry:
        from engine.testing.tiny import TINY_CLIP_CONFIG, TINY_UNET_CONFIG, TINY_VAE_CONFIG

        cfgs = dict(TINY_UNET_CONFIG), dict(TINY_VAE_CONFIG), dict(TINY_CLIP_CONFIG)
    else:
        cfgs = tuple(_load_json(root / c / "config.json") for c in ("unet", "vae", "text_encoder"))
    unet = _on_device(_unet_factory(cfgs[0]), device, dtype, 1)
    vae = _on_device(_vae_factory(cfgs[1]), device, dtype, 2)
    clip = _on_device(_clip_factory(cfgs[2]), device, dtype, 3)
    return SD15Components(unet, vae, clip, load_tokenizer(), _load_json(root / "scheduler" / "scheduler_config.json"),
                          source="bench")


def run_stage(work: Path, stage: int, args: argparse.Namespace, init: str | None, gc: bool, tag: str) -> tuple[dict, str]:
    import torch

    from engine.training.loop import TrainConfig, train
    from engine.training.synthetic import write_synthetic_dataset

    dry = args.dry_run
    device = torch.device("cpu" if dry else "cuda")
    dtype = torch.float32 if dry else torch.float16
    res = 64 if dry else 512
    batch = 2 if dry else args.batch
    data = work / f"data{stage}"
    if not data.is_dir():
        write_synthetic_dataset(data, stage, max(2 * batch, 8), size=res)
    comps = components(dry, device, dtype)
    if not dry:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    t = time.perf_counter()
    out = train(TrainConfig(stage=stage, model="bench", data=str(data), out=str(work / f"run-{tag}"), init=init,
                            steps=args.steps, batch=batch, resolution=res, save_every=args.steps,
                            mixed_precision="no" if dry else "fp16", gradient_checkpointing=gc, workers=0 if dry else 4,
                            cpu=dry, quiet=True), components=comps)
    total = time.perf_counter() - t
    log = [json.loads(x) for x in (work / f"run-{tag}" / "log.jsonl").read_text().splitlines()]
    steady = log[2:] or log
    step_s = statistics.median(batch / r["samples_per_s"] for r in steady)
    peak = torch.cuda.max_memory_allocated() / 2**30 if not dry else float("nan")
    del comps
    return {"step_s": step_s, "samples_per_s": batch / step_s, "peak_gib": peak, "total_s": total,
            "loss": log[-1]["loss"]}, str(out.adapter)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dry-run", action="store_true")
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--no-checkpointing-row", action="store_true")
    args = ap.parse_args(argv)
    import torch

    if not args.dry_run and not torch.cuda.is_available():
        print("no CUDA device: use --dry-run on a CPU", file=sys.stderr)
        return 2
    rows = [("device", "cpu (dry run, tiny models)" if args.dry_run else torch.cuda.get_device_name(0))]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        s1, adapter = run_stage(work, 1, args, None, False, "s1")
        s2, _ = run_stage(work, 2, args, adapter, False, "s2")
        runs = [("stage 1", s1), ("stage 2", s2)]
        if not args.no_checkpointing_row:
            s2gc, _ = run_stage(work, 2, args, adapter, True, "s2gc")
            runs.append(("stage 2 + grad. checkpointing", s2gc))
        for name, r in runs:
            rows += [(f"{name}: step", f"{r['step_s'] * 1000:.0f} ms"),
                     (f"{name}: samples/s", f"{r['samples_per_s']:.1f}"),
                     (f"{name}: peak memory", f"{r['peak_gib']:.1f} GiB"),
                     (f"{name}: last loss", f"{r['loss']:.4f}")]
    print_table(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
