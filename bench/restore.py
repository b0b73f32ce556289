"""Benchmark: PSFRGAN restoration of one aligned 512² face vs one e4e encode, on the CPU (not a test).

Both networks are full size (PSFRGAN 45.96 M parameters at 512², e4e's IR-SE50 encoder at 256²); their
weights do not change the time, so they keep PyTorch's initialisation. The restoration is timed as the
chain runs it (`FaceRestorer.restore`: input tensor, generator, official tensor2pil); the e4e encode is the
encoder's forward on its 1×3×256×256 input. Prints the median times and their ratio.
Usage: python bench/restore.py [--threads 2] [--repeat 3] [--device cpu]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    args = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
    import numpy as np
    import torch

    from bench.common import median_time, print_table
    from engine.faces.restore import FaceRestorer, labels_onehot
    from engine.networks.e4e import E4EEncoder
    from engine.networks.psfrgan import PSFRGenerator

    torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    rng = np.random.default_rng(0)
    face = rng.integers(0, 256, (512, 512, 3), dtype=np.uint8)
    onehot = labels_onehot(rng.integers(0, 19, (512, 512), dtype=np.uint8))
    restorer = FaceRestorer.from_module(PSFRGenerator().to(dev).eval())
    e4e = E4EEncoder().to(dev).eval()
    x = torch.from_numpy(np.tanh(rng.standard_normal((1, 3, 256, 256))).astype(np.float32)).to(dev)

    def encode() -> None:
        with torch.inference_mode():
            e4e(x)
        sync()

    t_restore = median_time(lambda: restorer.restore(face, onehot), args.repeat, warmup=1)
    t_encode = median_time(encode, args.repeat, warmup=1)
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} logical CPUs ({args.threads} used), "
          f"python {platform.python_version()}, torch {torch.__version__}, device {dev}")
    print_table([
        ("PSFRGAN restore 512² (median)", f"{t_restore:.2f} s"),
        ("e4e encode 256² (median)", f"{t_encode:.2f} s"),
        ("restore / encode", f"{t_restore / t_encode:.1f}×"),
    ])


if __name__ == "__main__":
    main()
