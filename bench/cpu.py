"""CPU benchmark of the generation pipeline (issues 2 and 6): ratios, not absolute speed claims.

Measures, on tiny real models built in code (no weights needed):

1. pipeline time per denoising step vs. a bare UNet call with the same inputs (batch 2 = CFG), as a ratio:
   the pipeline's own overhead (scheduler, guidance, runner protocol);
2. the step-cache speedup of a slider re-render at the official settings (30 steps, start ratio 20 →
   W+ off for steps 0..6): uncached render vs. re-render after a scale change (ideal 30/23 ≈ 1.30 for the
   denoising part);
3. ControlNet / LoRA (issue 13): one ControlNet's per-step cost vs the plain step, a LoRA fused vs unfused
   (forward hooks), and the step cache at 30/23 with a ControlNet;
4. with --full: full-size SD1.5 UNet (shipped config, random weights of the right shapes — timing only) build
   and one forward at batch 2, 64×64 latents, 81 tokens, with the W+ processors installed.

Usage: python bench/cpu.py [--threads 2] [--size 128] [--full]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import median_time, print_table


def bench_tiny(size: int, rows: list[tuple[str, str]]) -> None:
    import torch

    from engine.api import GenerateRequest
    from engine.pipeline.generate import WPlusPipeline
    from engine.testing.tiny import tiny_wplus, write_tiny_models

    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        root = write_tiny_models(Path(tmp) / "models")
        rows.append(("tiny models: write (unet, vae, clip, adapter)", f"{time.perf_counter() - t:.2f} s"))
        t = time.perf_counter()
        pipe = WPlusPipeline.from_files(root / "sd15", root / "wplus_adapter.bin", device="cpu", dtype="float32")
        rows.append(("tiny models: load + install adapter", f"{time.perf_counter() - t:.2f} s"))

    unet = pipe.runners.get("unet")
    h = size // 8
    x = torch.randn(2, 4, h, h)
    ts = torch.tensor([500.0, 500.0])
    text = torch.randn(2, 77, 768)
    tok = torch.randn(2, 4, 768)
    for _ in range(3):
        unet(sample=x, timestep=ts, text_embeds=text, wplus_tokens=tok, wplus_scale=1.0)
    bare = median_time(lambda: unet(sample=x, timestep=ts, text_embeds=text, wplus_tokens=tok, wplus_scale=1.0), 20)
    bare0 = median_time(lambda: unet(sample=x, timestep=ts, text_embeds=text, wplus_tokens=tok, wplus_scale=0.0), 20)

    steps = 30
    req = GenerateRequest(steps=steps, start_ratio=0.0, width=size, height=size, wplus=tiny_wplus(1), seed=1)
    pipe.render_float(req)  # warm the text/token caches
    per_step = []
    for _ in range(3):
        pipe.step_cache.clear()
        _, _, tm = pipe.render_float(req)
        per_step.append(tm["denoise_s"] / steps)
    per_step_s = statistics.median(per_step)
    rows.append((f"tiny UNet call, batch 2, {size}² px, W+ scale 1", f"{bare * 1e3:.2f} ms"))
    rows.append((f"tiny UNet call, batch 2, {size}² px, W+ scale 0 (branch skipped)", f"{bare0 * 1e3:.2f} ms"))
    rows.append(("pipeline time per step (euler, CFG)", f"{per_step_s * 1e3:.2f} ms"))
    rows.append(("pipeline step / bare UNet call", f"{per_step_s / bare:.3f}×"))

    official = GenerateRequest(steps=30, start_ratio=20.0, width=size, height=size, wplus=tiny_wplus(1), seed=2)
    uncached, cached, den_u, den_c = [], [], [], []
    for i in range(5):
        pipe.step_cache.clear()
        t = time.perf_counter()
        _, _, tm = pipe.render_float(official.replace(scale=1.0))
        uncached.append(time.perf_counter() - t)
        den_u.append(tm["denoise_s"])
        t = time.perf_counter()
        _, _, tm = pipe.render_float(official.replace(scale=0.9 - 0.1 * i))  # a slider move
        cached.append(time.perf_counter() - t)
        den_c.append(tm["denoise_s"])
        assert tm["steps_cached"] == 7, tm
    u, c = statistics.median(uncached), statistics.median(cached)
    rows.append(("slider re-render, 30 steps ratio 20: uncached", f"{u:.3f} s"))
    rows.append(("slider re-render, 30 steps ratio 20: from step cache", f"{c:.3f} s"))
    rows.append(("step-cache speedup, whole render (incl. VAE decode)", f"{u / c:.3f}×"))
    rows.append(("step-cache speedup, denoising only (ideal 30/23 = 1.304)",
                 f"{statistics.median(den_u) / statistics.median(den_c):.3f}×"))


def bench_controls(size: int, rows: list[tuple[str, str]]) -> None:
    """Issue 13: one ControlNet's per-step cost, LoRA fused vs unfused, the step cache with a ControlNet."""
    import numpy as np
    from diffusers import UNet2DConditionModel

    from engine.api import ControlSpec, GenerateRequest, LoraSpec
    from engine.networks.sd15 import load_sd15
    from engine.pipeline.generate import WPlusPipeline
    from engine.testing.controls import build_controlnet, write_a1111_controlnet, write_kohya_lora
    from engine.testing.tiny import tiny_wplus, write_tiny_models

    with tempfile.TemporaryDirectory() as tmp:
        root = write_tiny_models(Path(tmp) / "models")
        pipe = WPlusPipeline.from_files(root / "sd15", root / "wplus_adapter.bin", device="cpu", dtype="float32")
        unet = UNet2DConditionModel.from_pretrained(str(root / "sd15" / "unet"), local_files_only=True)
        cn = write_a1111_controlnet(Path(tmp) / "control_v11p_sd15_openpose.safetensors", build_controlnet(unet))
        c = load_sd15(root / "sd15")
        lora = write_kohya_lora(Path(tmp) / "style.safetensors", c.unet, c.text_encoder, rank=16)
        pose = np.zeros((size, size, 3), np.uint8)
        pose[size // 8: -size // 8, size // 2 - 2: size // 2 + 2] = (255, 0, 85)
        control = (ControlSpec(str(cn), pose),)
        steps = 30
        req = GenerateRequest(steps=steps, start_ratio=0.0, width=size, height=size, wplus=tiny_wplus(1), seed=1)

        def per_step(r: GenerateRequest) -> float:
            pipe.render_float(r)  # warm: text cache, LoRA application, ControlNet load
            times = []
            for _ in range(3):
                pipe.step_cache.clear()
                _, _, tm = pipe.render_float(r)
                times.append(tm["denoise_s"] / steps)
            return statistics.median(times)

        plain = per_step(req)
        with_cn = per_step(req.replace(controls=control))
        rows.append(("controls: pipeline step, plain / with one ControlNet",
                     f"{plain * 1e3:.2f} / {with_cn * 1e3:.2f} ms"))
        rows.append(("controls: per-step cost of one ControlNet vs the plain step", f"{with_cn / plain:.3f}×"))
        lo = (LoraSpec(str(lora), 0.8),)
        fused = per_step(req.replace(loras=lo))
        import torch

        unet_r = pipe.runners.get("unet")
        x = torch.randn(2, 4, size // 8, size // 8)
        ts = torch.tensor([500.0, 500.0])
        text = torch.randn(2, 77, 768)
        tok = torch.randn(2, 4, 768)

        def unet_call(loras: tuple[LoraSpec, ...], fused: bool) -> float:
            pipe.runners.set_loras(loras, fused=fused)
            for _ in range(3):
                unet_r(sample=x, timestep=ts, text_embeds=text, wplus_tokens=tok, wplus_scale=1.0)
            return median_time(lambda: unet_r(sample=x, timestep=ts, text_embeds=text, wplus_tokens=tok,
                                              wplus_scale=1.0), 20)

        t_unfused = unet_call(lo, False)
        t_fused = unet_call(lo, True)
        t_none = unet_call((), True)
        pipe.clear_caches()
        rows.append(("controls: UNet call, no LoRA / LoRA fused / LoRA unfused (hooks), rank 16",
                     f"{t_none * 1e3:.2f} / {t_fused * 1e3:.2f} / {t_unfused * 1e3:.2f} ms"))
        rows.append(("controls: LoRA unfused / fused UNet call", f"{t_unfused / t_fused:.3f}×"))
        rows.append(("controls: pipeline step with a fused LoRA / plain step", f"{fused / plain:.3f}×"))

        official = GenerateRequest(steps=30, start_ratio=20.0, width=size, height=size, wplus=tiny_wplus(1), seed=2,
                                   controls=control)
        den_u, den_c = [], []
        for i in range(3):
            pipe.step_cache.clear()
            _, _, tm = pipe.render_float(official.replace(scale=1.0))
            den_u.append(tm["denoise_s"])
            _, _, tm = pipe.render_float(official.replace(scale=0.9 - 0.1 * i))
            den_c.append(tm["denoise_s"])
            assert tm["steps_cached"] == 7, tm
        rows.append(("controls: step-cache speedup with a ControlNet, denoising only (ideal 1.304)",
                     f"{statistics.median(den_u) / statistics.median(den_c):.3f}×"))


def bench_full(rows: list[tuple[str, str]]) -> None:
    import torch

    from engine.networks.sd15 import _load_json, _unet_factory, default_config_dir
    from engine.networks.wplus import WPlusUNet, install_wplus_processors

    t = time.perf_counter()
    with torch.device("meta"):
        unet = _unet_factory(_load_json(default_config_dir() / "unet" / "config.json"))()
    unet = unet.to_empty(device="cpu")
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in unet.parameters():
            fan_in = max(1, p[0].numel()) if p.ndim > 1 else 1
            p.copy_(torch.randn(p.shape, generator=gen) / fan_in**0.5 if p.ndim > 1 else torch.zeros(p.shape))
    unet.eval()
    install_wplus_processors(unet)
    model = WPlusUNet(unet).eval()
    rows.append(("full-size UNet: build (meta + random fill) + W+ processors", f"{time.perf_counter() - t:.1f} s"))
    x = torch.randn(2, 4, 64, 64)
    ts = torch.tensor([500.0, 500.0])
    text = torch.randn(2, 77, 768)
    tok = torch.randn(2, 4, 768)
    with torch.no_grad():
        for scale in (0.0, 1.0):
            t = time.perf_counter()
            model(x, ts, text, tok, scale)
            rows.append((f"full-size UNet forward, batch 2, 512² px, W+ scale {scale:g}",
                         f"{time.perf_counter() - t:.2f} s"))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--size", type=int, default=128, help="tiny-model image size in pixels (multiple of 16)")
    ap.add_argument("--full", action="store_true", help="also build and run the full-size UNet (≈4 GB RAM)")
    args = ap.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    rows: list[tuple[str, str]] = [
        ("machine", f"{platform.processor() or platform.machine()}, {args.threads} torch threads"),
        ("torch", torch.__version__),
    ]
    bench_tiny(args.size, rows)
    bench_controls(args.size, rows)
    if args.full:
        bench_full(rows)
    print_table(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
