"""CPU training benchmark: tiny-model step times (stage 1, stage 2) and data-preparation throughput.

Rows: median optimizer-step time of the tiny SD1.5 at 64² (batch 4) for stage 1 and stage 2 and their ratio
(stage 2 runs two extra frozen UNet forwards per step); `wplus dataset build` photos/s with 1 and 2 workers
on copies of a real face photo (scikit-image's astronaut, slightly varied), with the real e4e and ParseNet
architectures (random weights: the cost is the same), and the photos/s per worker. `--learning` adds the
learning experiment of docs/TRAINING.md (held-out L_rec and background change, ~1 min).

Usage: python bench/train_cpu.py [--steps 12] [--photos 8] [--learning]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import print_table


def _bench_chain():
    import torch

    from bench.gpu import _on_device
    from engine.faces.chain import FaceChain
    from engine.faces.parse import FaceParser
    from engine.networks.e4e import E4EEncoder
    from engine.networks.parsenet import ParseNet

    torch.set_num_threads(1)
    e4e = _on_device(E4EEncoder, torch.device("cpu"), torch.float32, 6)
    net = _on_device(ParseNet, torch.device("cpu"), torch.float32, 7)
    return FaceChain(lambda: e4e, lambda: FaceParser(net))


def step_times(work: Path, steps: int) -> dict[str, float]:
    from engine.testing.tiny import write_tiny_sd15
    from engine.training.loop import TrainConfig, train
    from engine.training.synthetic import write_synthetic_dataset

    model = write_tiny_sd15(work / "sd15")
    out = {}
    init = None
    for stage in (1, 2):
        data = write_synthetic_dataset(work / f"d{stage}", stage, 16)
        res = train(TrainConfig(stage=stage, model=str(model), data=str(data), out=str(work / f"r{stage}"),
                                init=init, steps=steps, batch=4, resolution=64, save_every=steps, cpu=True,
                                quiet=True))
        init = str(res.adapter)
        log = [json.loads(x) for x in (work / f"r{stage}" / "log.jsonl").read_text().splitlines()]
        out[f"stage{stage}"] = statistics.median(4 / r["samples_per_s"] for r in log[2:])
    return out


def prep_rate(work: Path, photos: int, workers: int) -> float:
    import cv2
    import numpy as np
    from skimage.data import astronaut

    from engine.training.prepare import build_dataset

    src = work / "photos"
    if not src.is_dir():
        src.mkdir()
        base = astronaut()
        for i in range(photos):
            noisy = np.clip(base.astype(int) + np.random.default_rng(i).integers(-2, 3, base.shape), 0, 255)
            cv2.imwrite(str(src / f"p{i}.png"), cv2.cvtColor(noisy.astype(np.uint8), cv2.COLOR_RGB2BGR))
    rep = build_dataset(src, work / f"data-{workers}", 2, _bench_chain, workers=workers, progress=False)
    assert rep.done == photos, rep.failed
    return rep.photos_per_s


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--photos", type=int, default=8)
    ap.add_argument("--learning", action="store_true")
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        st = step_times(work, args.steps)
        rows += [("tiny stage-1 step (batch 4, 64²)", f"{st['stage1'] * 1000:.0f} ms"),
                 ("tiny stage-2 step (batch 4, 64²)", f"{st['stage2'] * 1000:.0f} ms"),
                 ("stage-2 / stage-1 step time", f"{st['stage2'] / st['stage1']:.2f}")]
        r1 = prep_rate(work, args.photos, 1)
        r2 = prep_rate(work, args.photos, 2)
        rows += [("dataset build stage 2, 1 worker", f"{r1:.2f} photos/s"),
                 ("dataset build stage 2, 2 workers", f"{r2:.2f} photos/s ({r2 / 2:.2f} per worker)"),
                 ("2-worker speed-up", f"{r2 / r1:.2f}")]
        if args.learning:
            from engine.training.evaluate import learning_experiment

            r = learning_experiment(work / "learning")
            rows += [(k, f"{v:.4f}") for k, v in r.items()]
    print_table(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
