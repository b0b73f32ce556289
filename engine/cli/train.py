"""`wplus train`: train the W+ adapter (stage 1 or 2, REFERENCE.md §6), or compute the loss probe of one batch."""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from typing import Any

from engine.errors import InvalidInput


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "train",
        help="train the W+ adapter (stage 1 or 2) on a prepared dataset",
        description=(
            "Train the W+ adapter with the paper's recipe on a dataset made by `wplus dataset build`. Runs in one "
            "process, or on several GPUs/nodes under `accelerate launch --num_processes N -m engine train …`. "
            "With --probe, computes the stage-2 losses of one fixed batch instead (nothing is trained)."
        ),
    )
    p.add_argument("--stage", type=int, choices=(1, 2), required=True)
    p.add_argument("--model", help="SD1.5 diffusers folder or single .safetensors (default: models/sd15)")
    p.add_argument("--data", help="dataset folder (from `wplus dataset build`)")
    p.add_argument("--out", help="run folder: checkpoints, log, and the adapter of the last save")
    p.add_argument("--init", help="adapter to start from (stage 2: the stage-1 wplus_adapter.bin; required)")
    p.add_argument("--steps", type=int, default=1000, help="optimizer steps (default 1000)")
    p.add_argument("--batch", type=int, default=16, help="batch per process (default 16, as the paper)")
    p.add_argument("--grad-accum", type=int, default=1, help="micro-batches per optimizer step")
    p.add_argument("--lr", type=float, default=1e-4, help="constant learning rate (default 1e-4)")
    p.add_argument("--resolution", type=int, default=512)
    p.add_argument("--mixed-precision", default="no", choices=("no", "fp16", "bf16"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--save-every", type=int, default=50, help="checkpoint and adapter every N steps (default 50)")
    p.add_argument("--keep", type=int, default=3, help="checkpoints kept (default 3)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    p.add_argument("--lambda-disen", type=float, default=2.0, help="weight of L_disen (default 2.0)")
    p.add_argument("--lambda-preserve", type=float, default=1.0, help="weight of L_preserve (default 1.0)")
    p.add_argument("--gradient-checkpointing", action="store_true", help="less memory, ~30%% slower")
    p.add_argument("--adam-8bit", action="store_true", help="8-bit AdamW (needs bitsandbytes, CUDA)")
    p.add_argument("--workers", type=int, default=2, help="data-loading worker processes (default 2)")
    p.add_argument("--quiet", action="store_true")
    p.add_argument("--probe", metavar="NPZ", help="compute the losses of this batch (stage 2) and exit")
    p.add_argument("--adapter", help="with --probe: the adapter to evaluate")
    p.add_argument("-o", "--output", metavar="JSON", help="with --probe: where to write the losses")
    p.set_defaults(func=run)


def _model(args: argparse.Namespace) -> str:
    if args.model:
        return str(args.model)
    from engine.cli.common import config_from_args

    return str(config_from_args(args).models_dir / "sd15")


def run(args: argparse.Namespace) -> int:
    from engine.training.objectives import Lambdas

    device = getattr(args, "device", "auto") or "auto"
    if args.probe:
        if args.stage != 2 or not args.adapter or not args.output:
            raise InvalidInput("--probe needs --stage 2, --adapter ADAPTER and -o LOSSES.json.")
        import torch

        from engine.devices import resolve_device
        from engine.training.probe import run_probe

        losses = run_probe(args.probe, _model(args), args.adapter, args.output,
                           lambdas=Lambdas(args.lambda_disen, args.lambda_preserve),
                           device=str(resolve_device(device, "float32")[0]), dtype=torch.float32)
        print(json.dumps({k: losses[k] for k in ("loss", "loss_rec", "loss_disen", "loss_preserve")}))
        return 0
    if not args.data or not args.out:
        raise InvalidInput("Training needs --data DATA_DIR and --out RUN_DIR.")
    from engine.training.loop import TrainConfig, train

    cfg = TrainConfig(
        stage=args.stage, model=_model(args), data=args.data, out=args.out, init=args.init, steps=args.steps,
        batch=args.batch, grad_accum=args.grad_accum, lr=args.lr, resolution=args.resolution,
        mixed_precision=args.mixed_precision, seed=args.seed, save_every=args.save_every, keep=args.keep,
        resume=args.resume, lambda_disen=args.lambda_disen, lambda_preserve=args.lambda_preserve,
        gradient_checkpointing=args.gradient_checkpointing, adam_8bit=args.adam_8bit, workers=args.workers,
        cpu=device == "cpu", quiet=args.quiet,
    )
    result = train(cfg)
    if result.interrupted:
        again = [a for a in sys.argv[1:] if a != "--resume"] + ["--resume"]
        print(f"Interrupted at step {result.step}; the checkpoint is in {result.run_dir}/checkpoints.\n"
              f"Resume with: wplus {shlex.join(again)}", file=sys.stderr)
        return 130
    print(f"Trained {result.step} steps; adapter: {result.adapter}")
    return 0
