"""ONNX Runtime CPU vs torch CPU per component (issue 5): ratios on the same machine, same threads.

Builds the tiny real SD1.5 + adapter of `engine.testing.tiny` (no weights needed), exports each
component with the dynamo exporter and times torch and ONNX Runtime on identical inputs (median of
`--repeat` runs after one warm-up). With `--full`, the full-size SD1.5 UNet + W+ adapter (shipped config,
rule-wbn-1 weights: timing only) is exported too (≈3.4 GB external data, minutes, ~16 GB RAM).

Usage: python bench/export_ort.py [--threads 2] [--repeat 5] [--full] [--size 512]
"""

from __future__ import annotations

import argparse
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import median_time


def _row(name: str, module, component: str, profile, out: Path, repeat: int, threads: int, shapes=None) -> str:
    from engine.backends.artifacts import read_artifact
    from engine.backends.base import IO_SPEC
    from engine.backends.ort_backend import OrtRunner, open_session
    from engine.backends.torch_modules import component_module
    from export.components import example_inputs, run_torch
    from export.to_onnx import export_onnx

    res = export_onnx(component, module, out / f"{component}.onnx", profile=profile)
    runner = OrtRunner(IO_SPEC[component], open_session(res.path, ["CPUExecutionProvider"], threads=threads),
                       read_artifact(res.path), res.path, "cpu")
    wrapped = component_module(component, module)
    inputs = example_inputs(component, profile, seed=0, shapes=shapes)
    t_torch = median_time(lambda: run_torch(component, wrapped, inputs), repeat, warmup=1)
    t_ort = median_time(lambda: runner(**inputs), repeat, warmup=1)
    shape = next(iter(inputs.values())).shape
    return (f"| {name} | {tuple(shape)} | {res.seconds:.1f} | {t_torch * 1000:.1f} | {t_ort * 1000:.1f} | "
            f"{t_torch / t_ort:.2f} |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--full", action="store_true", help="also the full-size SD1.5 UNet + adapter")
    parser.add_argument("--size", type=int, default=512, help="image side for --full (latent = size/8)")
    args = parser.parse_args()

    import torch

    from engine.backends.profiles import DimRange, ShapeProfile
    from engine.networks.sd15 import load_sd15
    from engine.networks.wplus import load_wplus_adapter
    from engine.testing.tiny import write_tiny_models

    torch.set_num_threads(args.threads)
    print(f"# bench/export_ort.py — {platform.processor() or platform.machine()}, {args.threads} threads, "
          f"torch {torch.__version__}, {time.strftime('%Y-%m-%d')}")
    print("| component | first input | export s | torch ms | ORT ms | torch/ORT |")
    print("|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_tiny_models(root / "models")
        comps = load_sd15(root / "models" / "sd15")
        wproj = load_wplus_adapter(comps.unet, root / "models" / "wplus_adapter.bin")
        profile = ShapeProfile.dynamic(64, 128, 128, max_batch=1)
        for name, module, component in (
            ("tiny text encoder", comps.text_encoder, "text_encoder"),
            ("tiny UNet + W+ (CFG batch 2)", comps.unet, "unet"),
            ("tiny VAE decoder", comps.vae, "vae_decoder"),
            ("WProj (full size)", wproj, "identity_proj"),
        ):
            print(_row(name, module, component, profile, root / "onnx", args.repeat, args.threads), flush=True)
        if args.full:
            import json

            from diffusers import UNet2DConditionModel

            from engine.networks.sd15 import default_config_dir
            from engine.networks.wplus import expected_adapter_shapes
            from engine.testing.official_files import rule_tensors, write_official_adapter

            cfg = json.loads((default_config_dir() / "unet" / "config.json").read_text())
            with torch.device("meta"):
                unet = UNet2DConditionModel.from_config(cfg)
            shapes = {k: tuple(v.shape) for k, v in unet.state_dict().items()}
            unet.load_state_dict(rule_tensors(shapes), strict=True, assign=True)
            unet.eval()
            adapter = write_official_adapter(root / "full_adapter.bin",
                                             {f"proj_{i}.weight": (768, n * 512) for i, n in enumerate((4, 4, 4, 6))}
                                             | {"norm.weight": (768,), "norm.bias": (768,)},
                                             expected_adapter_shapes(unet))
            load_wplus_adapter(unet, adapter)
            lat = args.size // 8
            full = ShapeProfile("bench", (("B", DimRange(1, 2, 2)), ("H", DimRange(lat, lat, lat)),
                                          ("W", DimRange(lat, lat, lat))))
            print(_row(f"SD1.5 UNet + W+ {args.size}² (CFG batch 2)", unet, "unet", full, root / "onnx_full",
                       max(1, args.repeat // 2), args.threads), flush=True)
    print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2:.1f} GB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
