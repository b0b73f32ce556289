"""GPU benchmark for one short device session (H100/H200, torch ≥ 2.4, no TensorRT needed): one table.

Builds full-size SD1.5 (UNet, VAE, CLIP ViT-L text encoder from resources/sd15 configs), the W+ adapter
(WProj + 16 W+ processors) and the e4e encoder directly on the GPU in fp16. Weights are RANDOM tensors of
the real shapes (scaled 1/sqrt(fan_in)) — timing only; fidelity is checked elsewhere against the fixtures.
`--rule-weights` fills the UNet and adapter with rule wbn-1 instead (numpy on the CPU, ≈1 min more).

Rows: UNet step latency at batch 2 (CFG), 512² (eager fp16 with SDPA; eager with the math attention kernel;
torch.compile; a CUDA graph of the eager UNet), with the W+ branch skipped (scale 0.0) and computed;
slider-to-image latency (30 steps, start ratio 20, euler: uncached vs. resumed from the step cache);
VAE decode; e4e encode; peak GPU memory.

`--dry-run` runs every code path on the CPU with tiny models in float32 (torch.compile with the "eager"
backend, no CUDA graph) so the script is known to work before a GPU is spent on it.

Usage: python bench/gpu.py [--dry-run] [--no-compile] [--rule-weights] [--iters 20]
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
    """(pipeline, e4e encoder, raw UNet module, notes)."""
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
    from engine.pipeline.generate import WPlusPipeline

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
    pipe = WPlusPipeline.from_components(comps, wproj, device=device, dtype=dtype)

    from engine.networks.e4e import E4EEncoder

    e4e = _on_device(E4EEncoder, device, dtype, 6)
    return pipe, e4e, unet, notes


def run(args: argparse.Namespace) -> list[tuple[str, str]]:
    import torch

    from engine.api import GenerateRequest
    from engine.networks.wplus import WPlusUNet
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
    rows: list[tuple[str, str]] = []
    gpu = torch.cuda.get_device_name(0) if device.type == "cuda" else f"CPU ({platform.processor() or 'x86_64'})"
    rows += [("device", gpu), ("torch", torch.__version__), ("date", datetime.date.today().isoformat())]
    t0 = time.perf_counter()
    pipe, e4e, unet, notes = build(args, device, dtype)
    rows += [("weights", notes["weights"]), ("build on device", notes["build_s"])]

    size = 64 if args.dry_run else 512
    lat = size // 8
    model = WPlusUNet(unet).eval()
    x = torch.randn(2, 4, lat, lat, device=device, dtype=dtype)
    ts = torch.full((2,), 500.0, device=device)
    text = torch.randn(2, 77, 768, device=device, dtype=dtype)
    tok = torch.randn(2, 4, 768, device=device, dtype=dtype)
    scale_t = torch.ones(1, device=device, dtype=dtype)
    with torch.no_grad():
        for label, scale in (("W+ skipped (scale 0.0)", 0.0), ("W+ computed (tensor scale)", scale_t)):
            s = timeit(lambda scale=scale: model(x, ts, text, tok, scale), device, warm, iters)
            rows.append((f"UNet step, batch 2, {size}², eager {str(dtype)[6:]} SDPA, {label}", f"{s * 1e3:.2f} ms"))
        from torch.nn.attention import SDPBackend, sdpa_kernel

        with sdpa_kernel(SDPBackend.MATH):
            s = timeit(lambda: model(x, ts, text, tok, scale_t), device, warm, iters)
        rows.append((f"UNet step, batch 2, {size}², eager, math attention kernel", f"{s * 1e3:.2f} ms"))

        if not args.no_compile:
            t = time.perf_counter()
            compiled = torch.compile(model, backend="eager" if args.dry_run else "inductor", dynamic=False)
            compiled(x, ts, text, tok, scale_t)
            _sync(device)
            rows.append(("torch.compile: first call (compile time)", f"{time.perf_counter() - t:.1f} s"))
            s = timeit(lambda: compiled(x, ts, text, tok, scale_t), device, warm, iters)
            rows.append((f"UNet step, batch 2, {size}², torch.compile", f"{s * 1e3:.2f} ms"))

        if device.type == "cuda":
            static = [x.clone(), ts.clone(), text.clone(), tok.clone(), scale_t.clone()]
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):
                for _ in range(3):
                    model(*static)
            torch.cuda.current_stream().wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                out = model(*static)
            s = timeit(graph.replay, device, warm, iters)
            rows.append((f"UNet step, batch 2, {size}², CUDA graph (eager kernels)", f"{s * 1e3:.2f} ms"))
            static[4].fill_(0.5)  # the scale is a runtime input of the captured graph
            graph.replay()
            _sync(device)
            if not torch.isfinite(out).all():
                rows.append(("CUDA graph output", "NOT FINITE"))
        else:
            rows.append(("UNet step, CUDA graph", "n/a on CPU"))

    steps = 4 if args.dry_run else 30
    req = GenerateRequest(steps=steps, start_ratio=20.0, width=size, height=size, wplus=tiny_wplus(1), seed=23)
    pipe.render_float(req)  # warm-up: text and token caches, kernels
    uncached, cached = [], []
    for i in range(1 if args.dry_run else 3):
        pipe.step_cache.clear()
        _sync(device)
        t = time.perf_counter()
        pipe.render_float(req.replace(scale=1.0))
        _sync(device)
        uncached.append(time.perf_counter() - t)
        t = time.perf_counter()
        _, _, tm = pipe.render_float(req.replace(scale=0.9 - 0.1 * i))
        _sync(device)
        cached.append(time.perf_counter() - t)
    u, c = statistics.median(uncached), statistics.median(cached)
    rows.append((f"slider → image, {steps} steps ratio 20, uncached", f"{u * 1e3:.0f} ms"))
    rows.append((f"slider → image, {steps} steps ratio 20, step cache ({tm['steps_cached']:.0f} steps reused)",
                 f"{c * 1e3:.0f} ms  ({u / c:.2f}×)"))

    vae = pipe.runners.get("vae_decoder")
    z = torch.randn(1, 4, lat, lat, device=device, dtype=dtype)
    with torch.no_grad():
        s = timeit(lambda: vae(latent=z), device, 1, max(2, iters // 4))
    rows.append((f"VAE decode 1×4×{lat}×{lat} → {size}²", f"{s * 1e3:.1f} ms"))
    face = torch.rand(1, 3, 256, 256, device=device, dtype=dtype) * 2 - 1
    with torch.no_grad():
        s = timeit(lambda: e4e(face), device, 1, max(2, iters // 4))
    rows.append(("e4e encode 1×3×256×256", f"{s * 1e3:.1f} ms"))
    if device.type == "cuda":
        rows.append(("peak GPU memory (allocated)", f"{torch.cuda.max_memory_allocated() / 2**30:.2f} GiB"))
    rows.append(("total script time", f"{time.perf_counter() - t0:.0f} s"))
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dry-run", action="store_true", help="CPU, tiny models, float32: proves the code paths")
    ap.add_argument("--no-compile", action="store_true", help="skip torch.compile (saves its compile time)")
    ap.add_argument("--rule-weights", action="store_true", help="rule wbn-1 weights for the UNet and adapter")
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--threads", type=int, default=2, help="CPU threads for --dry-run")
    args = ap.parse_args(argv)
    rows = run(args)
    width = max(len(k) for k, _ in rows)
    print(f"{'measure':<{width}}  value")
    print(f"{'-' * width}  -----")
    for k, v in rows:
        print(f"{k:<{width}}  {v}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
