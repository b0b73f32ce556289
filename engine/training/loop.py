"""The training loop on Hugging Face `accelerate` (REFERENCE.md §6).

The same code runs in one process and under `accelerate launch --num_processes N`. Frozen: UNet, VAE, CLIP text
encoder (and WProj in stage 2). Trained: stage 1 WProj + the 16 `to_{q,k,v}_wplus` sets (initialised from attn2's
q/k/v); stage 2 the 16 sets only, from the stage-1 adapter. AdamW (weight decay 0.01), constant LR.

Determinism: every random number of a sample (drop-out, t, ε, the VAE posterior draw, the augmentation) is
seeded by the run seed and the sample's position in the endless shuffled stream, and the perturbation of a
micro-step by the seed and the micro-step — so `--resume` continues bit-exactly and N processes with batch B
see the same global batch as one process with batch N·B (W+ is gathered across processes for the shuffle).

Run folder: `run.json` (the arguments), `log.jsonl` (losses, LR, samples/s per step), `checkpoints/checkpoint-N/`
(accelerate state: optimizer, RNG, plus `trainable.safetensors` and `meta.json`), `latest.json`, and the
adapter of the last save as `wplus_adapter.bin` (official layout) + `wplus_adapter.safetensors`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import shutil
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from engine.errors import InvalidInput, StorageError
from engine.training.data import StreamSampler, TorchItems, TrainDataset, collate
from engine.training.objectives import (
    DROP_RATES,
    LAMBDA_DISEN,
    LAMBDA_PRESERVE,
    Lambdas,
    PerturbationSampler,
    adapter_losses,
    add_noise,
    ddpm_alphas_cumprod,
    draw_drop,
)

log = logging.getLogger(__name__)
WEIGHT_DECAY = 0.01
CHECKPOINTS = "checkpoints"
LATEST = "latest.json"
ADAPTER_BIN = "wplus_adapter.bin"
ADAPTER_ST = "wplus_adapter.safetensors"


@dataclass
class TrainConfig:
    """Arguments of one run (also stored as run.json)."""

    stage: int
    model: str
    data: str
    out: str
    init: str | None = None
    steps: int = 1000
    batch: int = 16  # per process
    grad_accum: int = 1
    lr: float = 1e-4
    resolution: int = 512
    mixed_precision: str = "no"
    seed: int = 0
    save_every: int = 50
    keep: int = 3
    resume: bool = False
    lambda_disen: float = LAMBDA_DISEN
    lambda_preserve: float = LAMBDA_PRESERVE
    gradient_checkpointing: bool = False
    adam_8bit: bool = False
    workers: int = 0
    cpu: bool = False
    quiet: bool = False

    def check(self) -> None:
        if self.stage not in (1, 2):
            raise InvalidInput(f"--stage must be 1 or 2, got {self.stage}.")
        if self.stage == 2 and not self.init:
            raise InvalidInput("Stage 2 starts from the stage-1 adapter: give it with --init.",
                               "Train stage 1 first (`wplus train --stage 1 …`) and pass its wplus_adapter.bin.")
        for name in ("steps", "batch", "grad_accum", "save_every", "keep"):
            if getattr(self, name) < 1:
                raise InvalidInput(f"--{name.replace('_', '-')} must be at least 1.")
        if self.resolution % 8 or self.resolution < 8:
            raise InvalidInput(f"--resolution must be a multiple of 8, got {self.resolution}.")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise InvalidInput(f"--lr must be a positive number, got {self.lr}.")
        if self.mixed_precision not in ("no", "fp16", "bf16"):
            raise InvalidInput(f"--mixed-precision must be no, fp16 or bf16, got {self.mixed_precision}.")


# Fields that must not change when a run is resumed (the rest — steps, save cadence, workers — may).
_RESUME_FIXED = ("stage", "batch", "grad_accum", "lr", "resolution", "seed", "lambda_disen", "lambda_preserve")


@dataclass
class TrainResult:
    step: int
    interrupted: bool
    run_dir: Path
    adapter: Path | None
    last_losses: dict[str, float]


class AdapterTrainer(nn.Module):
    """The module accelerate wraps: the UNet (with the W+ processors) and WProj; forward = the losses."""

    def __init__(self, unet: Any, wproj: nn.Module, stage: int, lambdas: Lambdas) -> None:
        super().__init__()
        self.unet = unet
        self.wproj = wproj
        self.stage = stage
        self.lambdas = lambdas

    def forward(self, z_t: torch.Tensor, timesteps: torch.Tensor, noise: torch.Tensor, text_embeds: torch.Tensor,
                wplus: torch.Tensor, wplus_perturbed: torch.Tensor | None = None,
                mask: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        return adapter_losses(self.unet, self.wproj, z_t, timesteps, noise, text_embeds, wplus, stage=self.stage,
                              wplus_perturbed=wplus_perturbed, mask=mask, lambdas=self.lambdas)


def trainable_state(unet: Any, wproj: nn.Module, stage: int) -> dict[str, torch.Tensor]:
    """The trained tensors by stable name (processor names, `w_proj.*` in stage 1)."""
    from engine.networks.wplus import wplus_processors

    out = {}
    for name, proc in wplus_processors(unet).items():
        for k, v in proc.state_dict().items():
            out[f"{name}.{k}"] = v
    if stage == 1:
        out.update({f"w_proj.{k}": v for k, v in wproj.state_dict().items()})
    return out


def trainable_parameters(unet: Any, wproj: nn.Module, stage: int) -> list[nn.Parameter]:
    from engine.networks.wplus import wplus_processors

    params = [p for proc in wplus_processors(unet).values() for p in proc.parameters()]
    if stage == 1:
        params += list(wproj.parameters())
    return params


def official_adapter(unet: Any, wproj: nn.Module) -> dict[str, dict[str, torch.Tensor]]:
    """{'w_proj': …, 'wplus_adapter': {'<index>.to_k_wplus.weight': …}} — REFERENCE.md §3.4, float32."""
    from engine.networks.wplus import WPlusAttnProcessor, adapter_index_names

    procs = unet.attn_processors
    adapter = {}
    for idx, name in adapter_index_names(unet).items():
        proc = procs[name]
        if isinstance(proc, WPlusAttnProcessor):
            for k in ("to_k_wplus.weight", "to_v_wplus.weight", "to_q_wplus.weight"):
                adapter[f"{idx}.{k}"] = dict(proc.named_parameters())[k].detach().to("cpu", torch.float32).clone()
    w_proj = {k: v.detach().to("cpu", torch.float32).clone() for k, v in wproj.state_dict().items()}
    return {"w_proj": w_proj, "wplus_adapter": adapter}


def write_adapter(unet: Any, wproj: nn.Module, folder: Path) -> Path:
    """Write `wplus_adapter.bin` (official layout) and its `.safetensors` into `folder`, each atomically."""
    from engine.fileio import atomic_open
    from engine.models.convert import convert_to_safetensors

    folder.mkdir(parents=True, exist_ok=True)
    with atomic_open(folder / ADAPTER_BIN) as fh:
        torch.save(official_adapter(unet, wproj), fh)
    convert_to_safetensors(folder / ADAPTER_BIN, folder / ADAPTER_ST)
    return folder / ADAPTER_BIN


def _sample_seed(seed: int, position: int, what: int) -> int:
    return int(np.random.SeedSequence([seed, position, what]).generate_state(1, np.uint64)[0] & ((1 << 63) - 1))


def _write_json_atomic(path: Path, obj: Any) -> None:
    from engine.fileio import atomic_write_bytes

    atomic_write_bytes(path, (json.dumps(obj, indent=2) + "\n").encode("utf-8"))


def latest_checkpoint(run_dir: Path) -> Path | None:
    try:
        name = json.loads((run_dir / LATEST).read_text(encoding="utf-8"))["checkpoint"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    p = run_dir / CHECKPOINTS / name
    return p if (p / "meta.json").is_file() else None


class _Interrupt:
    """Ctrl-C sets a flag; the loop stops at the next step boundary and saves (a half-applied step is never saved)."""

    def __init__(self) -> None:
        self.flag = False
        self._old: Any = None

    def __enter__(self) -> _Interrupt:
        try:
            self._old = signal.signal(signal.SIGINT, self._handle)
        except ValueError:  # not the main thread: no handler (the caller owns interruption)
            self._old = None
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.flag:  # a second Ctrl-C aborts at once
            raise KeyboardInterrupt
        self.flag = True
        print("\ninterrupt: finishing this step and saving a checkpoint (Ctrl-C again to abort)…",
              file=sys.stderr, flush=True)

    def __exit__(self, *exc: Any) -> None:
        if self._old is not None:
            signal.signal(signal.SIGINT, self._old)


def train(cfg: TrainConfig, *, on_step: Callable[[int, dict[str, float]], None] | None = None,
          components: Any = None) -> TrainResult:
    """Run (or resume) training; returns where it stopped. `components` (an SD15Components) skips loading the model.

    Raises:
        InvalidInput: bad arguments or dataset; a --resume that does not match the run.
        StorageError: a checkpoint could not be written (the previous one is kept).
    """
    from accelerate import Accelerator  # type: ignore[import-untyped]
    from accelerate.utils import set_seed  # type: ignore[import-untyped]

    cfg.check()
    run_dir = Path(cfg.out)
    accelerator = Accelerator(mixed_precision=cfg.mixed_precision, cpu=cfg.cpu)
    rank, world = accelerator.process_index, accelerator.num_processes
    resume_from = _check_resume(cfg, run_dir) if cfg.resume else None
    if accelerator.is_main_process:
        run_dir.mkdir(parents=True, exist_ok=True)
        if resume_from is None:
            _write_json_atomic(run_dir / "run.json", dataclasses.asdict(cfg))
    dataset = TrainDataset(cfg.data, cfg.stage, cfg.resolution, cfg.seed)
    set_seed(cfg.seed)
    weight_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(cfg.mixed_precision, torch.float32)

    unet, wproj, vae, text_encoder, tokenizer, sched_cfg = _build_models(cfg, accelerator.device, weight_dtype,
                                                                         components)
    params = trainable_parameters(unet, wproj, cfg.stage)
    optimizer = _optimizer(params, cfg)
    module = AdapterTrainer(unet, wproj, cfg.stage, Lambdas(cfg.lambda_disen, cfg.lambda_preserve))
    module, optimizer = accelerator.prepare(module, optimizer)
    _register_state_hooks(accelerator, unet, wproj, cfg.stage)
    start = 0
    if resume_from is not None:
        accelerator.load_state(str(resume_from))
        start = int(json.loads((resume_from / "meta.json").read_text(encoding="utf-8"))["step"])
        log.info("resumed from %s at step %d", resume_from, start)

    alphas = ddpm_alphas_cumprod(sched_cfg).to(accelerator.device)
    perturb = PerturbationSampler.from_resources() if cfg.stage == 2 else None
    loader: torch.utils.data.DataLoader[Any] = torch.utils.data.DataLoader(
        TorchItems(dataset),  # type: ignore[arg-type]
        batch_sampler=StreamSampler(len(dataset), cfg.seed, cfg.batch, rank, world, start * cfg.grad_accum,
                                    cfg.steps * cfg.grad_accum),
        collate_fn=collate, num_workers=cfg.workers,
    )
    batches = iter(loader)
    progress = _progress(cfg, start, accelerator.is_main_process)
    step, losses_out = start, {}
    saved_at = start if resume_from is not None else -1
    with _Interrupt() as interrupt:
        while step < cfg.steps and not _stop_requested(accelerator, interrupt.flag):
            t0 = time.perf_counter()
            sums: dict[str, float] = {}
            for k in range(cfg.grad_accum):
                micro = step * cfg.grad_accum + k
                batch = next(batches)
                inputs = _prepare_inputs(batch, micro, cfg, accelerator, vae, text_encoder, tokenizer, alphas,
                                         perturb, weight_dtype)
                sync = contextlib.nullcontext() if k == cfg.grad_accum - 1 else accelerator.no_sync(module)
                with sync, accelerator.autocast():
                    losses = module(**inputs)
                    accelerator.backward(losses["loss"] / cfg.grad_accum)
                for name, v in losses.items():
                    sums[name] = sums.get(name, 0.0) + float(v.detach()) / cfg.grad_accum
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            losses_out = {n: float(accelerator.reduce(torch.tensor(v, device=accelerator.device), "mean"))
                          for n, v in sums.items()}
            rate = cfg.batch * world * cfg.grad_accum / max(time.perf_counter() - t0, 1e-9)
            if accelerator.is_main_process:
                _append_log(run_dir, {"step": step, **losses_out, "lr": cfg.lr, "samples_per_s": rate})
                progress(step, losses_out)
            if on_step is not None:
                on_step(step, losses_out)
            if step % cfg.save_every == 0 or step == cfg.steps:
                _save(accelerator, run_dir, step, unet, wproj, cfg)
                saved_at = step
        interrupted = step < cfg.steps
        if interrupted and saved_at != step:
            _save(accelerator, run_dir, step, unet, wproj, cfg)
    adapter = run_dir / ADAPTER_BIN if (run_dir / ADAPTER_BIN).is_file() else None
    accelerator.end_training()
    return TrainResult(step, interrupted, run_dir, adapter, losses_out)


def _stop_requested(accelerator: Any, flag: bool) -> bool:
    """Ctrl-C reaches the processes at different moments: agree on it, or they would deadlock in a collective."""
    if accelerator.num_processes == 1:
        return flag
    votes = accelerator.reduce(torch.tensor([float(flag)], device=accelerator.device), "sum")
    return bool(votes.item() > 0)


def _check_resume(cfg: TrainConfig, run_dir: Path) -> Path:
    ckpt = latest_checkpoint(run_dir)
    if ckpt is None:
        raise InvalidInput(f"--resume: {run_dir} has no checkpoint to resume from.",
                           "Start the run without --resume, or give the run folder of an interrupted run.")
    try:
        saved = json.loads((run_dir / "run.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InvalidInput(f"--resume: {run_dir}/run.json is missing or damaged.") from exc
    changed = [f for f in _RESUME_FIXED if f in saved and saved[f] != getattr(cfg, f)]
    if changed:
        f = changed[0]
        raise InvalidInput(
            f"--resume: the run was started with {f}={saved[f]!r}, now {getattr(cfg, f)!r}.",
            "Resume with the original arguments (only --steps, --save-every and --workers may change).",
        )
    return ckpt


def _build_models(cfg: TrainConfig, device: Any, weight_dtype: torch.dtype, components: Any) -> tuple[Any, ...]:
    """Frozen parts in `weight_dtype`; the trained tensors (and WProj) in float32, initialised without rounding.

    The model is loaded in float32 so the W+ projections copy attn2's q/k/v (or the --init adapter) exactly,
    and only then are the frozen modules cast for mixed precision.
    """
    from engine.networks.sd15 import load_sd15
    from engine.networks.wplus import (
        WProj,
        apply_adapter_state,
        install_wplus_processors,
        load_adapter_checkpoint,
        wplus_processors,
    )

    comps = components if components is not None else load_sd15(cfg.model, device=device, dtype=torch.float32)
    unet, vae, text_encoder = comps.unet, comps.vae, comps.text_encoder
    ckpt = load_adapter_checkpoint(cfg.init) if cfg.init else None
    install_wplus_processors(unet)  # to_{q,k,v}_wplus ← attn2's q/k/v
    procs = wplus_processors(unet)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        wproj = WProj(unet.config.cross_attention_dim)
    for proc in procs.values():
        proc.to(dtype=torch.float32)
    if ckpt is not None:
        apply_adapter_state(unet, wproj, ckpt.w_proj, ckpt.wplus_adapter, source=str(cfg.init))
    saved = {n: {k: v.detach().clone() for k, v in p.state_dict().items()} for n, p in procs.items()}
    for m in (unet, vae, text_encoder):
        p = next(m.parameters())
        if p.dtype != weight_dtype or p.device != torch.device(device):
            m.to(device=device, dtype=weight_dtype)
        m.eval().requires_grad_(False)
    # fp32 master weights for what is trained (accelerate's autocast runs the forward in fp16/bf16)
    for n, proc in procs.items():
        proc.to(device=device, dtype=torch.float32)
        proc.load_state_dict(saved[n])
        proc.requires_grad_(True)
    wproj.to(device=device, dtype=torch.float32).requires_grad_(cfg.stage == 1)
    if cfg.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
    return unet, wproj, vae, text_encoder, comps.tokenizer, comps.scheduler_config


def _optimizer(params: list[nn.Parameter], cfg: TrainConfig) -> torch.optim.Optimizer:
    if cfg.adam_8bit:
        try:
            import bitsandbytes as bnb  # type: ignore[import-not-found]
        except ImportError as exc:
            raise InvalidInput("--adam-8bit needs the bitsandbytes package.",
                               "Install it (`pip install bitsandbytes`, CUDA only) or drop --adam-8bit.") from exc
        return bnb.optim.AdamW8bit(params, lr=cfg.lr, weight_decay=WEIGHT_DECAY)
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=WEIGHT_DECAY)


def _register_state_hooks(accelerator: Any, unet: Any, wproj: nn.Module, stage: int) -> None:
    """Checkpoints hold the trained tensors only (not the 3.4 GB frozen UNet accelerate would otherwise save)."""
    from safetensors.torch import load_file, save_file

    def save_hook(models: list[Any], weights: list[Any], output_dir: str) -> None:
        weights.clear()
        if accelerator.is_main_process:
            state = {k: v.detach().to("cpu").contiguous() for k, v in trainable_state(unet, wproj, stage).items()}
            save_file(state, os.path.join(output_dir, "trainable.safetensors"))

    def load_hook(models: list[Any], input_dir: str) -> None:
        models.clear()
        state = load_file(os.path.join(input_dir, "trainable.safetensors"))
        own = trainable_state(unet, wproj, stage)
        if set(state) != set(own):
            raise InvalidInput(f"--resume: the checkpoint {input_dir} does not match this stage's trained tensors.")
        with torch.no_grad():
            for k, v in own.items():
                v.copy_(state[k])

    accelerator.register_save_state_pre_hook(save_hook)
    accelerator.register_load_state_pre_hook(load_hook)


def _prepare_inputs(batch: dict[str, Any], micro: int, cfg: TrainConfig, accelerator: Any, vae: Any,
                    text_encoder: Any, tokenizer: Any, alphas: torch.Tensor, perturb: PerturbationSampler | None,
                    weight_dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Latents, noisy latents, t, ε, text embeddings and W+ (after drop-out) of one local micro-batch."""
    device = accelerator.device
    pixels = batch["pixel_values"].to(device=device, dtype=weight_dtype)
    b = pixels.shape[0]
    h = w = cfg.resolution // 8
    drops, steps, noise, post = [], [], [], []
    for pos in batch["position"]:
        g = torch.Generator().manual_seed(_sample_seed(cfg.seed, pos, 2))
        u = float(torch.rand((), generator=g, dtype=torch.float64))
        drops.append(draw_drop(u, DROP_RATES))
        steps.append(int(torch.randint(0, 1000, (), generator=g)))
        noise.append(torch.randn((4, h, w), generator=g))
        post.append(torch.randn((4, h, w), generator=g))
    drop_w = torch.tensor([d[0] for d in drops], device=device)
    timesteps = torch.tensor(steps, device=device, dtype=torch.long)
    eps = torch.stack(noise).to(device)
    with torch.no_grad():
        dist = vae.encode(pixels).latent_dist
        latents = (dist.mean + dist.std * torch.stack(post).to(device=device, dtype=dist.mean.dtype))
        latents = (latents * vae.config.scaling_factor).float()
        captions = ["" if d[1] else c for d, c in zip(drops, batch["caption"], strict=True)]
        ids = tokenizer(captions, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                        return_tensors="pt").input_ids.to(device)
        text_embeds = text_encoder(ids)[0].to(weight_dtype)
    z_t = add_noise(latents, eps, timesteps, alphas)
    wplus = batch["wplus"].to(device=device, dtype=torch.float32)
    wplus = torch.where(drop_w[:, None, None], torch.zeros_like(wplus), wplus)
    out = {"z_t": z_t.to(weight_dtype), "timesteps": timesteps, "noise": eps, "text_embeds": text_embeds,
           "wplus": wplus}
    if cfg.stage == 2:
        assert perturb is not None
        all_w = accelerator.gather(wplus)
        all_drop = accelerator.gather(drop_w)
        rng = np.random.default_rng([cfg.seed, micro, 3])
        plan = perturb.plan(rng, all_w.shape[0])
        tilde = perturb.apply(plan, all_w.cpu().numpy(), all_drop.cpu().numpy())
        r = accelerator.process_index
        out["wplus_perturbed"] = torch.from_numpy(tilde[r * b:(r + 1) * b]).to(device=device, dtype=torch.float32)
        out["mask"] = F.interpolate(batch["mask"].to(device=device, dtype=torch.float32), size=(h, w),
                                    mode="bilinear", align_corners=False).to(weight_dtype)
    return out


def _save(accelerator: Any, run_dir: Path, step: int, unet: Any, wproj: nn.Module, cfg: TrainConfig) -> None:
    """An accelerate checkpoint written to a temporary folder and renamed; then the adapter; then latest.json.

    A failure (disk full) removes the partial folder and leaves the previous checkpoint and adapter as they were.
    """
    ckpts = run_dir / CHECKPOINTS
    final = ckpts / f"checkpoint-{step}"
    tmp = ckpts / f".checkpoint-{step}.part"
    accelerator.wait_for_everyone()
    try:
        if accelerator.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        accelerator.wait_for_everyone()
        accelerator.save_state(str(tmp))
        if accelerator.is_main_process:
            _write_json_atomic(tmp / "meta.json", {"step": step, "stage": cfg.stage, "seed": cfg.seed})
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
            write_adapter(unet, wproj, run_dir)
            _write_json_atomic(run_dir / LATEST, {"checkpoint": final.name, "step": step})
            _prune(ckpts, cfg.keep, keep_name=final.name)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        last = latest_checkpoint(run_dir)
        kept = f"the last good checkpoint {last} is kept" if last else "no earlier checkpoint exists"
        raise StorageError(f"Saving the checkpoint of step {step} failed ({exc.strerror or exc}); {kept}.",
                           "Free some disk space, then resume with --resume.") from exc
    except StorageError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        last = latest_checkpoint(run_dir)
        kept = f"the last good checkpoint {last} is kept" if last else "no earlier checkpoint exists"
        raise StorageError(f"{exc.user_message} Saving step {step} failed; {kept}.", exc.hint) from exc
    accelerator.wait_for_everyone()


def _prune(ckpts: Path, keep: int, keep_name: str) -> None:
    done = sorted((p for p in ckpts.glob("checkpoint-*") if p.is_dir()), key=lambda p: int(p.name.split("-")[1]))
    for p in done[:-keep]:
        if p.name != keep_name:
            shutil.rmtree(p, ignore_errors=True)


def _append_log(run_dir: Path, record: dict[str, Any]) -> None:
    with (run_dir / "log.jsonl").open("a", encoding="utf-8") as fh:
        fh.write(json.dumps(record) + "\n")


def _progress(cfg: TrainConfig, start: int, main: bool) -> Callable[[int, dict[str, float]], None]:
    t0 = time.perf_counter()
    writer = None
    if main:
        try:
            from torch.utils.tensorboard import SummaryWriter

            writer = SummaryWriter(str(Path(cfg.out) / "tensorboard"))
        except ImportError:
            writer = None

    def show(step: int, losses: dict[str, float]) -> None:
        if writer is not None:
            for k, v in losses.items():
                writer.add_scalar(k, v, step)
        if cfg.quiet or not main:
            return
        done = step - start
        eta = (time.perf_counter() - t0) / max(done, 1) * (cfg.steps - step)
        parts = " ".join(f"{k}={v:.4f}" for k, v in losses.items())
        print(f"step {step}/{cfg.steps} {parts} ETA {eta:.0f}s", file=sys.stderr, flush=True)

    return show
