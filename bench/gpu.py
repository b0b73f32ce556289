"""GPU benchmark for one short device session (H100/H200, torch ≥ 2.4, no TensorRT needed): one table.

Builds full-size SD1.5 (UNet, VAE, CLIP ViT-L text encoder from resources/sd15 configs), the W+ adapter
(WProj + 16 W+ processors) and the e4e encoder directly on the GPU in fp16. Weights are RANDOM tensors of
the real shapes (scaled 1/sqrt(fan_in)) — timing only; fidelity is checked elsewhere against the fixtures.
`--rule-weights` fills the UNet and adapter with rule wbn-1 instead (numpy on the CPU, ≈1 min more).

Everything timed is the PRODUCT path: `TorchRunners` with `FastPathOptions` (engine/backends/torch_backend.py)
and `WPlusPipeline` over them. Rows: UNet step latency at batch 2 (CFG), 512²: eager fp16 SDPA (W+ branch
skipped with scale 0.0 / computed), the math attention kernel for comparison, channels_last, CUDA-graph
replay, torch.compile (first call = compile time) and compile + CUDA graph; slider-to-image p50 (30 steps,
start ratio 20 → W+ from step 7, euler; uncached and resumed from the step cache) on the eager runners and
on the fastest runners; the guarded fp16 VAE decode and its float32 fallback; e4e encode; peak GPU memory.

Budget: one call under 8 minutes on an H100 (compile mode "default"; "max-autotune-no-cudagraphs", the
product's default when compile is switched on, autotunes for several more minutes: `--compile-mode`).

`--dry-run` runs every code path on the CPU with tiny models in float32 (torch.compile with the "eager"
backend; CUDA graphs report "off" there) so the script is known to work before a GPU is spent on it.

Usage: python bench/gpu.py [--dry-run] [--no-compile] [--compile-mode MODE] [--rule-weights] [--iters 20]
"""

from __future__ import annotations

import argparse
import datetime
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import print_table


def _sync(device: Any) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timeit(fn, device, warmup: int = 3, iters: int = 20) -> float:
    """Median seconds of `fn()` after `warmup` calls (synchronised on CUDA)."""
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(iters):
        t = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def _random_fill(module: Any, seed: int) -> None:
    """Fill parameters in place on their device: N(0, 1/fan_in) for matrices/convs, 1 for norm weights, 0 biases."""
    import torch

    gen = torch.Generator(device=next(module.parameters()).device).manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if p.ndim > 1:
                fan_in = p[0].numel()
                p.copy_(torch.randn(p.shape, generator=gen, device=p.device, dtype=torch.float32).to(p.dtype)
                        / fan_in**0.5)
            elif name.endswith("weight"):
                p.fill_(1.0)
            else:
                p.zero_()
        for name, b in module.named_buffers():
            if name.endswith("running_var"):
                b.fill_(1.0)
            elif name.endswith("position_ids"):
                b.copy_(torch.arange(b.shape[-1], device=b.device).expand(b.shape))
            elif b.is_floating_point():
                b.zero_()


def _on_device(factory, device, dtype, seed: int) -> Any:
    import torch

    with torch.device("meta"):
        m = factory()
    m = m.to_empty(device=device).to(dtype)
    _random_fill(m, seed)
    m.requires_grad_(False)
    return m.eval()


def build(args: argparse.Namespace, device: Any, dtype: Any) -> tuple[Any, Any, Any, dict[str, str]]:
    """(SD15Components with the W+ processors, WProj, e4e encoder, notes), all on `device` in `dtype`."""
    import torch

    from engine.networks.sd15 import (
        SD15Components,
        _clip_factory,
        _load_json,
        _unet_factory,
        _vae_factory,
        default_config_dir,
        load_tokenizer,
    )
    from engine.networks.wplus import WProj, install_wplus_processors

    notes: dict[str, str] = {}
    if args.dry_run:
        from engine.testing.tiny import TINY_CLIP_CONFIG, TINY_UNET_CONFIG, TINY_VAE_CONFIG

        unet_cfg, vae_cfg = dict(TINY_UNET_CONFIG), dict(TINY_VAE_CONFIG)
        clip_cfg = dict(TINY_CLIP_CONFIG)
    else:
        root = default_config_dir()
        unet_cfg = _load_json(root / "unet" / "config.json")
        vae_cfg = _load_json(root / "vae" / "config.json")
        clip_cfg = _load_json(root / "text_encoder" / "config.json")
    t = time.perf_counter()
    unet = _on_device(_unet_factory(unet_cfg), device, dtype, 1)
    vae = _on_device(_vae_factory(vae_cfg), device, dtype, 2)
    clip = _on_device(_clip_factory(clip_cfg), device, dtype, 3)
    install_wplus_processors(unet)
    wproj = WProj(unet.config.cross_attention_dim).to(device=device, dtype=dtype).eval()
    if args.rule_weights:
        from engine.networks.wplus import apply_adapter_state, expected_adapter_shapes
        from engine.testing.wbn import rule_state_dict

        base = rule_state_dict({k: tuple(v.shape) for k, v in unet.state_dict().items()
                                if "_wplus" not in k})
        unet.load_state_dict({k: v.to(device, dtype) for k, v in base.items()}, strict=False)
        shapes = {f"wplus_adapter.{k}": s for k, s in expected_adapter_shapes(unet).items()}
        shapes.update({f"w_proj.{k}": tuple(v.shape) for k, v in wproj.state_dict().items()})
        st = rule_state_dict(shapes)
        apply_adapter_state(
            unet, wproj,
            {k[len("w_proj."):]: v for k, v in st.items() if k.startswith("w_proj.")},
            {k[len("wplus_adapter."):]: v for k, v in st.items() if k.startswith("wplus_adapter.")},
        )
        wproj.to(device=device, dtype=dtype)
        notes["weights"] = "rule wbn-1 (UNet + adapter), random (VAE, CLIP, e4e)"
    else:
        for proc in unet.attn_processors.values():
            if isinstance(proc, torch.nn.Module):
                _random_fill(proc, 4)
        _random_fill(wproj, 5)
        notes["weights"] = "random tensors of the real shapes (timing only)"
    _sync(device)
    notes["build_s"] = f"{time.perf_counter() - t:.1f} s"
    comps = SD15Components(unet, vae, clip, load_tokenizer(), _load_json(default_config_dir() / "scheduler" /
                                                                          "scheduler_config.json"),
                           source="bench", fingerprints={"bench": "random"})

    from engine.networks.e4e import E4EEncoder

    e4e = _on_device(E4EEncoder, device, dtype, 6)
    return comps, wproj, e4e, notes


def pipeline_on(runners: Any, comps: Any) -> Any:
    """A WPlusPipeline over given runners (as `WPlusPipeline.from_components` builds it, minus the runners)."""
    from engine.pipeline.generate import WPlusPipeline

    return WPlusPipeline(runners, comps.tokenizer, comps.scheduler_config, model_id="bench",
                         vae_scaling_factor=float(comps.vae.config.scaling_factor),
                         vae_scale_factor=comps.vae_scale_factor)


def slider_p50(pipe: Any, req: Any, device: Any, reps: int) -> tuple[float, float, float, float]:
    """(first render s, uncached p50 s, step-cached p50 s, steps reused) for slider moves of `req`."""
    t = time.perf_counter()
    pipe.render_float(req)  # first call: text/token caches, cuDNN plans, graph captures, compilation
    _sync(device)
    first = time.perf_counter() - t
    uncached, cached = [], []
    reused = 0.0
    for i in range(reps):
        pipe.step_cache.clear()
        _sync(device)
        t = time.perf_counter()
        pipe.render_float(req.replace(scale=1.0 - 0.05 * i))
        _sync(device)
        uncached.append(time.perf_counter() - t)
        # The slider moves: same prompt/seed, another scale → resumes after the identity-free prefix.
        t = time.perf_counter()
        _, _, tm = pipe.render_float(req.replace(scale=0.9 - 0.1 * i))
        _sync(device)
        cached.append(time.perf_counter() - t)
        reused = tm["steps_cached"]
    return first, statistics.median(uncached), statistics.median(cached), reused


def run(args: argparse.Namespace) -> list[tuple[str, str]]:
    import torch

    from engine.api import GenerateRequest
    from engine.backends.torch_backend import FastPathOptions, TorchRunners
    from engine.testing.tiny import tiny_wplus

    if args.dry_run:
        device, dtype = torch.device("cpu"), torch.float32
        torch.set_num_threads(args.threads)
    else:
        if not torch.cuda.is_available():
            raise SystemExit("no CUDA device: run with --dry-run on a CPU machine")
        device, dtype = torch.device("cuda"), torch.float16
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    iters = 2 if args.dry_run else args.iters
    warm = 1 if args.dry_run else 3
    reps = 1 if args.dry_run else 5
    backend = "eager" if args.dry_run else "inductor"
    rows: list[tuple[str, str]] = []
    if device.type == "cuda":
        gpu = torch.cuda.get_device_name(0)
        versions = f"{torch.__version__} (CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()})"
    else:
        gpu = f"CPU ({platform.processor() or platform.machine()}), dry run"
        versions = torch.__version__
    rows += [("device", gpu), ("torch", versions),
             ("date", datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"))]
    t0 = time.perf_counter()
    comps, wproj, e4e, notes = build(args, device, dtype)
    rows += [("weights", notes["weights"]), ("build on device", notes["build_s"])]

    size = 64 if args.dry_run else 512
    lat = size // 8
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, lat, lat, generator=g).to(device, dtype)
    ts = torch.full((1,), 500.0, device=device).expand(2)  # as the pipeline passes it
    text = torch.randn(2, 77, 768, generator=g).to(device, dtype)
    tok = torch.randn(2, 4, 768, generator=g).to(device, dtype)
    inputs = {"sample": x, "timestep": ts, "text_embeds": text, "wplus_tokens": tok}
    dt = str(dtype).replace("torch.", "")
    step = f"UNet step, batch 2, {size}²"

    def step_ms(fn: Any, scale: Any) -> str:
        return f"{timeit(lambda: fn(**inputs, wplus_scale=scale), device, warm, iters) * 1e3:.2f} ms"

    # 1. eager, contiguous (NCHW) weights: the product with every fast-path flag off.
    plain = TorchRunners(comps, wproj, device=device, dtype=dtype, fast=FastPathOptions(channels_last=False))
    unet = plain.get("unet")
    rows.append((f"{step}, eager {dt} SDPA, W+ skipped (scale 0.0)", step_ms(unet, 0.0)))
    rows.append((f"{step}, eager {dt} SDPA, W+ computed (scale 0.8)", step_ms(unet, 0.8)))
    from torch.nn.attention import SDPBackend, sdpa_kernel

    with sdpa_kernel(SDPBackend.MATH):
        rows.append((f"{step}, eager, math attention kernel (for comparison)", step_ms(unet, 0.8)))

    # 2. channels_last (converts the shared modules in place: every runner from here on is NHWC on CUDA).
    eager = TorchRunners(comps, wproj, device=device, dtype=dtype, fast=FastPathOptions())
    rows.append((f"{step}, eager + channels_last ({eager.fast_status()['channels_last']}), scale 0.8",
                 step_ms(eager.get("unet"), 0.8)))

    # 3. CUDA graphs of the eager UNet.
    graphed = TorchRunners(comps, wproj, device=device, dtype=dtype, fast=FastPathOptions(cuda_graph=True))
    rows.append((f"{step}, CUDA graph, scale 0.0 (graph without the W+ branch)", step_ms(graphed.get("unet"), 0.0)))
    rows.append((f"{step}, CUDA graph, scale 0.8 (scale buffer)", step_ms(graphed.get("unet"), 0.8)))
    rows.append(("CUDA graph status", graphed.fast_status()["cuda_graph"]))
    best = graphed

    # 4. torch.compile (one compiled module; timed without and with our CUDA graphs around it).
    if not args.no_compile:
        fast = FastPathOptions(compile=True, compile_mode=args.compile_mode, cuda_graph=True,
                               compile_backend=backend)
        compiled = TorchRunners(comps, wproj, device=device, dtype=dtype, fast=fast)
        t = time.perf_counter()
        with torch.no_grad():
            for scale in (0.0, 0.8):
                compiled.unet_step.fn(x, ts.contiguous(), text, tok, compiled.unet_step.prepare_scale(scale))
        _sync(device)
        rows.append((f"torch.compile ({backend}, mode {args.compile_mode}): UNet compile, both variants",
                     f"{time.perf_counter() - t:.1f} s"))

        def compiled_only(**kw: Any) -> Any:
            s = compiled.unet_step.prepare_scale(kw.pop("wplus_scale"))
            with torch.no_grad():
                return compiled.unet_step.fn(kw["sample"], kw["timestep"].contiguous(), kw["text_embeds"],
                                             kw["wplus_tokens"], s)

        rows.append((f"{step}, torch.compile, scale 0.8", step_ms(compiled_only, 0.8)))
        rows.append((f"{step}, torch.compile + CUDA graph, scale 0.0", step_ms(compiled.get("unet"), 0.0)))
        rows.append((f"{step}, torch.compile + CUDA graph, scale 0.8", step_ms(compiled.get("unet"), 0.8)))
        z = torch.randn(1, 4, lat, lat, generator=g).to(device, dtype)
        t = time.perf_counter()
        compiled.get("vae_decoder")(latent=z)
        _sync(device)
        rows.append(("torch.compile: VAE decoder compile", f"{time.perf_counter() - t:.1f} s"))
        status = compiled.fast_status()
        rows.append(("compile status (UNet / VAE)", f"{status['compile_unet']} / {status['compile_vae']}"))
        if status["compile_unet"] == "on":
            best = compiled

    # 5. slider → image on the product pipeline: eager runners vs. the fastest runners above.
    steps = 4 if args.dry_run else 30
    req = GenerateRequest(steps=steps, start_ratio=20.0, width=size, height=size, wplus=tiny_wplus(1), seed=23)
    label = f"{steps} steps, W+ from step {req.start_step + 1}"
    for name, runners in (("eager + channels_last", eager), ("fastest: " + _describe(best), best)):
        first, u, c, reused = slider_p50(pipeline_on(runners, comps), req, device, reps)
        rows.append((f"slider → image p50, {label}, uncached, {name}", f"{u * 1e3:.0f} ms"))
        rows.append((f"slider → image p50, {label}, step cache ({reused:.0f} steps reused), {name}",
                     f"{c * 1e3:.0f} ms  ({u / c:.2f}×; first render {first:.1f} s)"))

    # 6. VAE decode: the guarded low-precision decode and its float32 fallback.
    vae = eager.get("vae_decoder")
    z = torch.randn(1, 4, lat, lat, generator=g).to(device, dtype)
    with torch.no_grad():
        s = timeit(lambda: vae(latent=z), device, 1, max(2, iters // 4))
        rows.append((f"VAE decode 1×4×{lat}×{lat} → {size}², {eager.fast_status()['vae_decode']}", f"{s * 1e3:.1f} ms"))
        fp32 = eager.vae_decode.float32_module()
        s = timeit(lambda: fp32(z.float()), device, 1, max(2, iters // 4))
    rows.append((f"VAE decode {size}², float32 fallback copy", f"{s * 1e3:.1f} ms"))
    face = torch.rand(1, 3, 256, 256, device=device, dtype=dtype) * 2 - 1
    with torch.no_grad():
        s = timeit(lambda: e4e(face), device, 1, max(2, iters // 4))
    rows.append(("e4e encode 1×3×256×256", f"{s * 1e3:.1f} ms"))
    if device.type == "cuda":
        rows.append(("peak GPU memory (allocated)", f"{torch.cuda.max_memory_allocated() / 2**30:.2f} GiB"))
    rows.append(("total script time", f"{time.perf_counter() - t0:.0f} s"))
    return rows


def _describe(runners: Any) -> str:
    st = runners.fast_status()
    parts = [st["dtype"]]
    if st["channels_last"] == "on":
        parts.append("channels_last")
    if st["compile_unet"] == "on":
        parts.append("compiled")
    if st["cuda_graph"].startswith("on"):
        parts.append("CUDA graph")
    return " + ".join(parts)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dry-run", action="store_true", help="CPU, tiny models, float32: proves the code paths")
    ap.add_argument("--no-compile", action="store_true", help="skip torch.compile (saves its compile time)")
    ap.add_argument("--compile-mode", default="default",
                    help="inductor mode (the product's default is max-autotune-no-cudagraphs: minutes more)")
    ap.add_argument("--rule-weights", action="store_true", help="rule wbn-1 weights for the UNet and adapter")
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--threads", type=int, default=2, help="CPU threads for --dry-run")
    args = ap.parse_args(argv)
    rows = run(args)
    print_table(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
