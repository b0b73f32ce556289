"""SD1.5 + W+ adapter generation over backend runners (REFERENCE.md §1.6, §3, §4).

The loop is the official `StableDiffusionWPlusPipeline` semantics, written against the runner protocol:

* conditioning = 81 tokens [77 CLIP text | 4 W+ tokens]; classifier-free guidance with the batch
  [uncond; cond] and ε = ε_u + g·(ε_c − ε_u) (only when g > 1, as diffusers); uncond W+ tokens =
  WProj(zeros), a constant computed once;
* delayed subject conditioning: W+ scale 0 for steps 0..start inclusive (`GenerateRequest.start_step`);
* a seed gives exactly diffusers' StableDiffusionPipeline initial noise: a CPU `torch.Generator`
  seeded with it, `randn(1×4×h/8×w/8)` in the model dtype, moved to the device, × `init_noise_sigma`.
  Variation k uses seed + k. Noise is always drawn on the CPU, so a seed gives the same start on every
  device; ancestral samplers draw their per-step noise from the same generator (as diffusers does);
* a step cache (engine.pipeline.cache) resumes slider re-renders after the identity-free prefix with
  bit-identical results.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from engine.api import GenerateRequest, Progress, Result, validate_wplus
from engine.errors import BackendUnavailable, InvalidInput
from engine.pipeline.cache import LRU, StepCache, StepKey, StepState

if TYPE_CHECKING:
    import torch

    from engine.models.service import ModelService
    from engine.networks.sd15 import SD15Components
    from engine.networks.wplus import WProj

log = logging.getLogger(__name__)

ProgressFn = Callable[[Progress], None] | None
MAX_TEXT_TOKENS = 77


class WPlusPipeline:
    """Text + identity → images with SD1.5 and the W+ adapter, over any backend's runners.

    Args:
        runners: an `engine.backends.base.Runners` (text_encoder, unet, vae_decoder, identity_proj).
        tokenizer: the CLIP tokenizer.
        scheduler_config: the SD1.5 scheduler configuration (dict).
        model_id: identity of the loaded weights (keys the caches).
        model_hashes: name → fingerprint of every weight file (written to image metadata).
        vae_scaling_factor: SD1.5's 0.18215 (latents are divided by it before decoding).
        vae_scale_factor: pixels per latent cell (8).
        step_cache_size: variations kept by the step cache (0 disables it).
    """

    def __init__(
        self,
        runners: Any,
        tokenizer: Any,
        scheduler_config: dict[str, Any],
        *,
        model_id: str = "",
        model_hashes: dict[str, str] | None = None,
        vae_scaling_factor: float = 0.18215,
        vae_scale_factor: int = 8,
        step_cache_size: int = 8,
        text_cache_size: int = 16,
    ) -> None:
        self.runners = runners
        self.tokenizer = tokenizer
        self.scheduler_config = dict(scheduler_config)
        self.model_id = model_id
        self.model_hashes = dict(model_hashes or {})
        self.vae_scaling_factor = float(vae_scaling_factor)
        self.vae_scale_factor = int(vae_scale_factor)
        self.step_cache = StepCache(step_cache_size)
        self._text_cache: LRU[tuple[Any, str | None]] = LRU(text_cache_size)
        self._token_cache: LRU[Any] = LRU(8)
        self._uncond_tokens: Any = None
        self._lora_key: tuple[Any, ...] = ()  # the LoRA set the runners carry now (text cache and step cache key)
        self._lora_hashes: dict[str, str] = {}
        self.backend_choice: Any = None  # engine.backends.select.BackendChoice when built from a config
        self._fallback_told = False

    # -- construction ----------------------------------------------------------------------------

    @classmethod
    def from_components(
        cls,
        components: SD15Components,
        wproj: WProj,
        *,
        device: Any = "cpu",
        dtype: Any = None,
        adapter_hashes: dict[str, str] | None = None,
        fast: Any = None,
        **kwargs: Any,
    ) -> WPlusPipeline:
        """A torch pipeline from loaded components (the UNet must have the W+ processors installed).

        `fast` is an `engine.backends.torch_backend.FastPathOptions` (None: the defaults).
        """
        from engine.backends.torch_backend import TorchRunners

        runners = TorchRunners(components, wproj, device=device, dtype=dtype, fast=fast)
        hashes = dict(components.fingerprints)
        hashes.update(adapter_hashes or {})
        model_id = hashlib.sha256(repr(sorted(hashes.items())).encode()).hexdigest()[:16]
        return cls(
            runners,
            components.tokenizer,
            components.scheduler_config,
            model_id=model_id,
            model_hashes=hashes,
            vae_scaling_factor=float(components.vae.config.scaling_factor),
            vae_scale_factor=components.vae_scale_factor,
            **kwargs,
        )

    @classmethod
    def from_files(
        cls,
        sd_model: str | Path,
        adapter: str | Path,
        *,
        vae: str | Path | None = None,
        device: str = "auto",
        dtype: str = "auto",
        config_dir: str | Path | None = None,
        fast: Any = None,
        **kwargs: Any,
    ) -> WPlusPipeline:
        """Load SD1.5 (folder or single file), install and load the adapter, build torch runners.

        `fast`: the torch backend's `FastPathOptions` (None: the defaults).

        Raises:
            ModelMissing, ModelCorrupt, WrongModelFamily, UnsafeCheckpoint: from the loaders.
            BackendUnavailable: the device/dtype cannot be used.
        """
        from engine.devices import resolve_device
        from engine.networks.sd15 import file_fingerprint, load_sd15
        from engine.networks.wplus import load_wplus_adapter

        dev, dt = resolve_device(device, dtype)
        comps = load_sd15(sd_model, vae=vae, device=dev, dtype=dt, config_dir=config_dir)
        wproj = load_wplus_adapter(comps.unet, adapter)
        ap = Path(adapter)
        return cls.from_components(
            comps, wproj, device=dev, dtype=dt, adapter_hashes={f"adapter:{ap.name}": file_fingerprint(ap)},
            fast=fast, **kwargs,
        )

    @classmethod
    def from_service(cls, models: ModelService) -> WPlusPipeline:
        """The pipeline of the service's configuration: SD1.5, adapter and optional VAE located by the service.

        SD1.5: `config.sd_model`, else the diffusers folder or single `.safetensors` in `models/sd15`.
        Adapter: `config.adapter`, else `wplus_adapter.safetensors` / `wplus_adapter.bin`. VAE:
        `config.vae`, else `models/vae/sd-vae-ft-mse` when present (the official notebook's VAE).

        Raises:
            ModelMissing: a required model is not in the models folder (the message says where).
            BackendUnavailable: a backend other than torch was requested.
        """
        config = models.config
        sd_path, adapter_path = models.runtime_path("sd15"), models.runtime_path("adapter")
        vae_path = models.optional_runtime_path("vae")
        from engine.backends.select import open_runners
        from engine.backends.torch_backend import FastPathOptions
        from engine.devices import resolve_device
        from engine.networks.sd15 import default_config_dir, file_fingerprint, load_tokenizer

        # Not `models.get(...)` here: the session's own service entry already caches the whole pipeline.
        dev, dt = resolve_device(config.device, config.dtype)

        def torch_pipeline() -> WPlusPipeline:
            return cls.from_files(sd_path, adapter_path, vae=vae_path, device=str(dev),
                                  dtype=str(dt).split(".")[-1], fast=FastPathOptions.from_config(config))

        built: list[WPlusPipeline] = []

        def torch_runners() -> Any:
            built.append(torch_pipeline())
            return built[0].runners

        runners, choice = open_runners(config, torch_runners)
        if built:
            pipeline = built[0]
        else:
            # Exported backends run the networks; tokenizer and scheduler are SD1.5's shipped configs.
            cfg_dir = default_config_dir()
            hashes = {f"sd15:{Path(sd_path).name}": file_fingerprint(sd_path) if Path(sd_path).is_file() else "",
                      f"adapter:{Path(adapter_path).name}": file_fingerprint(adapter_path)}
            scheduler_config = json.loads((cfg_dir / "scheduler" / "scheduler_config.json").read_text())
            model_id = hashlib.sha256(repr(sorted(hashes.items())).encode()).hexdigest()[:16]
            pipeline = cls(runners, load_tokenizer(cfg_dir / "tokenizer"), scheduler_config, model_id=model_id,
                           model_hashes=hashes)
        pipeline.backend_choice = choice
        if choice.fallback_reasons:
            log.warning("backend: %s", choice.message)
        return pipeline

    # -- conditioning -----------------------------------------------------------------------------

    @property
    def device(self) -> Any:
        return self.runners.device

    @property
    def dtype(self) -> Any:
        return self.runners.dtype

    def encode_text(self, prompt: str) -> tuple[torch.Tensor, str | None]:
        """CLIP last hidden state (1×77×768) of `prompt`, and a warning if it was truncated. Cached."""
        cached = self._text_cache.get((self._lora_key, prompt))
        if cached is not None:
            return cached
        tok = self.tokenizer(
            prompt, padding="max_length", max_length=MAX_TEXT_TOKENS, truncation=True, return_tensors="pt"
        )
        full = self.tokenizer(prompt, padding="longest", return_tensors=None)["input_ids"]
        warning = None
        if len(full) > MAX_TEXT_TOKENS:
            dropped = self.tokenizer.decode(full[MAX_TEXT_TOKENS - 1 : -1])
            warning = (
                f"The prompt is longer than CLIP's {MAX_TEXT_TOKENS} tokens; this part was ignored: \"{dropped}\""
            )
            log.warning(warning)
        embeds = self.runners.get("text_encoder")(input_ids=tok["input_ids"].to(self.device))["text_embeds"]
        value = (embeds.to(self.dtype), warning)
        self._text_cache.put((self._lora_key, prompt), value)
        return value

    def uncond_tokens(self) -> torch.Tensor:
        """WProj(zeros): the learned "no identity" tokens (1×4×768), computed once."""
        import torch

        if self._uncond_tokens is None:
            zeros = torch.zeros(1, 18, 512, device=self.device, dtype=self.dtype)
            self._uncond_tokens = self.runners.get("identity_proj")(wplus=zeros)["wplus_tokens"]
        return self._uncond_tokens

    def identity_tokens(self, wplus: np.ndarray) -> torch.Tensor:
        """WProj(W+) (1×4×768), cached per W+ value (one projection per edit)."""
        import torch

        w = validate_wplus(wplus)
        key = hashlib.sha1(w.tobytes()).hexdigest()
        cached = self._token_cache.get(key)
        if cached is not None:
            return cached
        t = torch.from_numpy(w).to(device=self.device, dtype=self.dtype)
        tokens = self.runners.get("identity_proj")(wplus=t)["wplus_tokens"]
        self._token_cache.put(key, tokens)
        return tokens

    def clear_caches(self) -> None:
        self.step_cache.clear()
        self._text_cache.clear()
        self._token_cache.clear()

    # -- generation -------------------------------------------------------------------------------

    def render(
        self,
        request: GenerateRequest,
        edited_wplus: np.ndarray | None = None,
        token: Any = None,
        progress: ProgressFn = None,
    ) -> Result:
        """Generate `request.n` images.

        Args:
            request: the request; `request.wplus` is the unedited identity (None: plain SD1.5).
            edited_wplus: the W+ actually used (request.wplus with its edits applied); None means
                `request.wplus` as is.
            token: a CancelToken, checked before every step and before the VAE decode.
            progress: receives Progress("denoise", step, total, elapsed, preview) after every step.

        Returns:
            Result with uint8 H×W×3 images, the seed of each, timings, model hashes and warnings.

        Raises:
            InvalidInput: a W+ with NaN/Inf or the wrong shape.
            Cancelled: the token was set.
        """
        floats, warnings, timings = self.render_float(request, edited_wplus, token=token, progress=progress)
        if self.backend_choice is not None and self.backend_choice.fallback_reasons and not self._fallback_told:
            # Said once per pipeline: the user asked for a backend that could not run here.
            warnings = (self.backend_choice.message, *warnings)
            self._fallback_told = True
        images = tuple((img * 255).round().astype(np.uint8) for img in floats)
        return Result(
            request=request,
            images=images,
            seeds=tuple(request.seed + k for k in range(request.n)),
            timings=timings,
            model_hashes={**self.model_hashes, **self._lora_hashes},
            warnings=warnings,
        )

    def render_float(
        self,
        request: GenerateRequest,
        edited_wplus: np.ndarray | None = None,
        token: Any = None,
        progress: ProgressFn = None,
    ) -> tuple[list[np.ndarray], tuple[str, ...], dict[str, float]]:
        """Like `render`, returning float32 H×W×3 images in [0, 1] (diffusers' output_type="np")."""
        import torch

        t0 = time.perf_counter()
        wplus = request.wplus if edited_wplus is None else edited_wplus
        if wplus is not None:
            wplus = validate_wplus(wplus, what="The edited W+" if edited_wplus is not None else "W+")
        if request.width % self.vae_scale_factor or request.height % self.vae_scale_factor:
            raise InvalidInput(f"width and height must be multiples of {self.vae_scale_factor}.")
        set_freeu = getattr(self.runners, "set_freeu", None)
        if set_freeu is not None:
            set_freeu(request.freeu)
        elif request.freeu:
            raise BackendUnavailable("FreeU needs the torch backend.", "Turn FreeU off or use the torch backend.")
        self._apply_loras(request)

        with torch.no_grad():
            cond_text, w1 = self.encode_text(request.prompt)
            uncond_text, w2 = self.encode_text(request.negative_prompt)
            found = [w1] if w1 else []
            if w2:
                found.append(w2.replace("The prompt", "The negative prompt", 1))
            warnings = tuple(found)
            uncond_tok = self.uncond_tokens()
            cond_tok = self.identity_tokens(wplus) if wplus is not None else uncond_tok
            t_cond = time.perf_counter()
            cfg = request.guidance > 1.0
            if cfg:
                text = torch.cat([uncond_text, cond_text])
                tokens = torch.cat([uncond_tok, cond_tok])
            else:
                text, tokens = cond_text, cond_tok

            images: list[np.ndarray] = []
            stats = {"steps_run": 0.0, "steps_cached": 0.0}
            total = request.steps * request.n
            latents_all = []
            controls = self._prepare_controls(request, cfg)
            for k in range(request.n):
                latents = self._denoise(request, k, text, tokens, wplus is not None, cfg, token, progress, t0,
                                        total, stats, controls)
                latents_all.append(latents)
            t_denoise = time.perf_counter()
            if token is not None:
                token.raise_if_cancelled()
            vae = self.runners.get("vae_decoder")
            for latents in latents_all:
                image = vae(latent=latents / self.vae_scaling_factor)["image"]
                image = (image * 0.5 + 0.5).clamp(0, 1)
                images.append(image.cpu().permute(0, 2, 3, 1).float().numpy()[0])
        t_end = time.perf_counter()
        timings = {
            "conditioning_s": t_cond - t0,
            "denoise_s": t_denoise - t_cond,
            "decode_s": t_end - t_denoise,
            "total_s": t_end - t0,
            **stats,
        }
        if progress is not None:
            progress(Progress("done", total, total, t_end - t0))
        return images, warnings, timings

    def _step_key(self, request: GenerateRequest, seed: int, prefix_end: int) -> StepKey:
        return StepKey(
            model_id=self.model_id,
            prompt=request.prompt,
            negative_prompt=request.negative_prompt,
            seed=seed,
            width=request.width,
            height=request.height,
            steps=request.steps,
            scheduler=str(request.scheduler),
            guidance=float(request.guidance),
            freeu=bool(request.freeu),
            prefix_end=prefix_end,
            device=str(self.device),
            dtype=str(self.dtype),
            loras=self._lora_key,
            controls=tuple(c.key() for c in request.controls),
        )

    def _apply_loras(self, request: GenerateRequest) -> None:
        """Make the runners carry the request's LoRA set (a no-op when it is already applied)."""
        set_loras = getattr(self.runners, "set_loras", None)
        if set_loras is None:
            if request.loras:
                raise BackendUnavailable("This backend's exported UNet has no LoRA support.",
                                         "Remove the LoRAs or use the torch backend.")
            return
        files = set_loras(request.loras)
        self._lora_key = tuple((f.short_hash, s.weight, s.text) for f, s in zip(files, request.loras))
        self._lora_hashes = {f"lora:{f.name}": f.short_hash for f in files}

    def _prepare_controls(self, request: GenerateRequest, cfg: bool) -> list[tuple[Any, Any, Any]]:
        """(ControlSpec, runner, conditioning image tensor with CFG's batch) per ControlNet of the request."""
        import torch

        from engine.controls.conditioning import control_tensor

        if not request.controls:
            return []
        get = getattr(self.runners, "controlnet", None)
        if get is None:
            raise BackendUnavailable("This backend has no ControlNet support.",
                                     "Remove the control images or use the torch backend.")
        out = []
        for spec in request.controls:
            image = torch.from_numpy(control_tensor(spec.image, request.width, request.height))
            image = image.to(device=self.device, dtype=self.dtype)
            out.append((spec, get(spec.model), torch.cat([image] * 2) if cfg else image))
        return out

    def _control_residuals(self, controls: list[tuple[Any, Any, Any]], step: int, steps: int, sample: Any,
                           timestep: Any, text: Any) -> tuple[Any, ...] | None:
        """Summed residuals of the ControlNets active at `step` (diffusers' multi-ControlNet sum), or None."""
        import torch

        from engine.controls.conditioning import control_active

        total: list[Any] | None = None
        for spec, runner, image in controls:
            if not control_active(step, steps, spec.start, spec.end):
                continue  # diffusers runs it with scale 0: zero residuals, the same UNet output
            out = runner(sample=sample, timestep=timestep, text_embeds=text, control_image=image,
                         conditioning_scale=torch.full((1,), float(spec.scale), device=self.device, dtype=self.dtype))
            res = [out[t.name] for t in runner.spec.outputs]
            total = res if total is None else [a + b for a, b in zip(total, res)]
        return tuple(total) if total is not None else None

    def initial_latents(self, seed: int, height: int, width: int, init_noise_sigma: float) -> tuple[Any, Any]:
        """diffusers' initial noise for `seed` (CPU generator, model dtype) and the generator after it."""
        import torch
        from diffusers.utils.torch_utils import randn_tensor

        gen = torch.Generator(device="cpu").manual_seed(int(seed))
        shape = (1, 4, height // self.vae_scale_factor, width // self.vae_scale_factor)
        latents = randn_tensor(shape, generator=gen, device=torch.device(self.device), dtype=self.dtype)
        return latents * init_noise_sigma, gen

    def _denoise(
        self,
        request: GenerateRequest,
        k: int,
        text: Any,
        tokens: Any,
        has_identity: bool,
        cfg: bool,
        token: Any,
        progress: ProgressFn,
        t0: float,
        total: int,
        stats: dict[str, float],
        controls: list[tuple[Any, Any, Any]] | None = None,
    ) -> Any:
        import torch

        from engine.pipeline.preview import latent_preview
        from engine.pipeline.schedulers import make_scheduler, step_kwargs

        seed = request.seed + k
        steps = request.steps
        prefix_end = min(request.start_step, steps - 1)
        key = self._step_key(request, seed, prefix_end)
        state = self.step_cache.get(key)
        if state is not None:
            sched, latents = state.scheduler, state.latents
            gen = torch.Generator(device="cpu")
            gen.set_state(state.generator_state)
            first = state.step + 1
            stats["steps_cached"] += first
        else:
            sched = make_scheduler(request.scheduler, self.scheduler_config)
            sched.set_timesteps(steps, device=self.device)
            latents, gen = self.initial_latents(seed, request.height, request.width, sched.init_noise_sigma)
            first = 0
        extra = step_kwargs(sched, gen)
        unet = self.runners.get("unet")
        batch = 2 if cfg else 1
        timesteps = sched.timesteps
        for i in range(first, steps):
            if token is not None:
                token.raise_if_cancelled()
            t = timesteps[i]
            model_in = torch.cat([latents] * 2) if cfg else latents
            model_in = sched.scale_model_input(model_in, t)
            scale = request.wplus_scale_at(i) if has_identity else 0.0
            timestep = t.reshape(1).expand(batch)
            extra_in = {}
            if controls:
                # The ControlNet gets the 77 text tokens only; the W+ tokens go to the UNet alone.
                residuals = self._control_residuals(controls, i, steps, model_in, timestep, text)
                if residuals is not None:
                    extra_in["control"] = residuals
            noise = unet(
                sample=model_in,
                timestep=timestep,
                text_embeds=text,
                wplus_tokens=tokens,
                wplus_scale=float(scale),
                **extra_in,
            )["noise_pred"]
            if cfg:
                noise_u, noise_c = noise.chunk(2)
                noise = noise_u + request.guidance * (noise_c - noise_u)
            out = sched.step(noise, t, latents, **extra, return_dict=True)
            latents = out.prev_sample
            stats["steps_run"] += 1
            if i == prefix_end:
                self.step_cache.put(key, StepState(i, latents, sched, gen.get_state()))
            if progress is not None:
                x0 = getattr(out, "pred_original_sample", None)
                progress(Progress("denoise", k * steps + i + 1, total, time.perf_counter() - t0,
                                  latent_preview(x0 if x0 is not None else latents)))
        return latents
