"""Stable Diffusion 1.5 assembled from local files only: a diffusers folder or a single-file checkpoint.

Two layouts are accepted:

* a diffusers folder (`unet/`, `vae/`, `text_encoder/`, optional `tokenizer/`, `scheduler/`), each component
  loaded with `from_pretrained(..., local_files_only=True)`;
* a single `.safetensors` (or `.ckpt`, loaded with `weights_only=True`) in the original LDM key layout as
  A1111/ComfyUI users keep them (`model.diffusion_model.*`, `first_stage_model.*`,
  `cond_stage_model.transformer.*`). It is converted with diffusers' pure key-mapping functions and loaded
  into modules built from the configs shipped in `resources/sd15/` — `from_single_file` is not used because
  it resolves configs through the hub.

Checkpoints of another family (SD2.x, SDXL, SD3, Flux, inpainting, LoRA, VAE-only, …) are recognised from
their keys and refused with `WrongModelFamily` naming what was found: the W+ adapter was trained for the SD1.5
UNet (768-wide cross-attention, 4 latent channels).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engine.errors import ModelCorrupt, ModelMissing, WrongModelFamily
from engine.models.safe_load import read_safetensors_header

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

SD15_CROSS_DIM = 768
SD15_LATENT_CHANNELS = 4
SINGLE_FILE_SUFFIXES = (".safetensors", ".ckpt")
_UNET = "model.diffusion_model."
_CLIP = "cond_stage_model.transformer."
_VAE_PREFIXES = ("first_stage_model.", "vae.")
_FAMILY_HINT = (
    "The W+ adapter works only with Stable Diffusion 1.5-architecture models (768-wide text "
    "cross-attention, 4-channel UNet), e.g. SD1.5 itself or SD1.5 fine-tunes. Choose such a model."
)
_REDOWNLOAD = "The file is truncated or damaged: download or copy it again."
_ST_DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1,
                   "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1, "U16": 2, "U32": 4, "U64": 8}


@dataclass(eq=False)
class SD15Components:
    """The loaded SD1.5 parts (torch modules in eval mode) and where they came from.

    Attributes:
        unet: diffusers UNet2DConditionModel.
        vae: diffusers AutoencoderKL.
        text_encoder: transformers CLIPTextModel.
        tokenizer: transformers CLIPTokenizer.
        scheduler_config: the SD1.5 scheduler configuration (a dict; schedulers are built per request).
        source: the model path as given.
        vae_source: the separate VAE's path, or "" when the model's own VAE is used.
        fingerprints: file name → quick fingerprint (`file_fingerprint`) of each weight file used.
    """

    unet: Any
    vae: Any
    text_encoder: Any
    tokenizer: Any
    scheduler_config: dict[str, Any]
    source: str = ""
    vae_source: str = ""
    fingerprints: dict[str, str] = field(default_factory=dict)

    @property
    def model_id(self) -> str:
        """A short stable identity of the weights (for caches and metadata)."""
        h = hashlib.sha256(json.dumps(sorted(self.fingerprints.items())).encode())
        return h.hexdigest()[:16]

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)


# -- small file helpers ------------------------------------------------------------------------------


def default_config_dir() -> Path:
    """The shipped SD1.5 configs and tokenizer (`resources/sd15`)."""
    from engine.resources import resource_path

    return resource_path("sd15")


def file_fingerprint(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    """A quick identity of a large file: sha256 of its size, first and last MiB (not its full sha256).

    Hashing a 4 GB checkpoint fully takes many seconds; this changes whenever the file is replaced by
    another model, which is what caches and image metadata need. Full hashes are the manifest's job.
    """
    p = Path(path)
    size = p.stat().st_size
    h = hashlib.sha256(str(size).encode())
    with p.open("rb") as fh:
        h.update(fh.read(chunk))
        if size > chunk:
            fh.seek(max(chunk, size - chunk))
            h.update(fh.read(chunk))
    return h.hexdigest()[:16]


# -- family detection --------------------------------------------------------------------------------

_LORA = re.compile(r"(^|\.)(lora_(unet|te\d?)_|lora_(up|down|A|B)\b|hada_w|lokr_w)|\.lora\.")


def detect_family(shapes: Mapping[str, tuple[int, ...]]) -> str:
    """Name the model family of a single-file checkpoint from its keys and shapes.

    Returns "sd15" for an SD1.5-architecture checkpoint, else a human-readable family name such as
    "SDXL", "SD 2.x", "SD3", "Flux", "an SD1.5 inpainting model", "a LoRA", "a VAE".
    """
    keys = list(shapes)

    def has(prefix: str) -> bool:
        return any(k.startswith(prefix) for k in keys)

    if any(_LORA.search(k) for k in keys):
        return "a LoRA/LyCORIS add-on (not a full model)"
    if has("conditioner.embedders."):
        return "SDXL" if has("conditioner.embedders.1.") else "SDXL refiner"
    if has(_UNET + "joint_blocks.") or has("joint_blocks."):
        return "SD3"
    if has(_UNET + "double_blocks.") or has("double_blocks.") or has("model.diffusion_model.single_blocks."):
        return "Flux"
    if has("control_model.") or any("input_hint_block" in k for k in keys):
        return "a ControlNet"
    if has("cond_stage_model.model."):
        return "SD 2.x (OpenCLIP text encoder)"
    conv_in = shapes.get(_UNET + "input_blocks.0.0.weight")
    if conv_in is not None:
        context = {s[1] for k, s in shapes.items() if k.startswith(_UNET) and k.endswith("attn2.to_k.weight")}
        if 1024 in context:
            return "SD 2.x (1024-wide cross-attention)"
        if 2048 in context or has(_UNET + "label_emb."):
            return "SDXL"
        in_ch = conv_in[1] if len(conv_in) == 4 else -1
        if in_ch == 9:
            return "an SD1.5 inpainting model (9-channel UNet)"
        if in_ch == 8:
            return "an InstructPix2Pix model (8-channel UNet)"
        if in_ch != SD15_LATENT_CHANNELS:
            return f"an unknown UNet with {in_ch} input channels"
        if context and context != {SD15_CROSS_DIM}:
            return f"an unknown UNet with {sorted(context)}-wide cross-attention"
        return "sd15"
    if has("encoder.down.") or has("decoder.up.") or has("encoder.down_blocks.") or any(
        k.startswith(p + "encoder.") for p in _VAE_PREFIXES for k in keys
    ):
        return "a VAE (use it as the separate VAE instead)"
    if has("text_model.") or has(_CLIP):
        return "a text encoder only"
    if has("down_blocks.") and has("conv_in."):
        return "a diffusers UNet weight file (point to the model folder instead)"
    if has("transformer_blocks.") or has("x_embedder."):
        return "a diffusion transformer (PixArt, SD3, Flux, …)"
    return "not a Stable Diffusion checkpoint"


def _refuse(path: Path, family: str) -> WrongModelFamily:
    hint = _FAMILY_HINT
    if "LoRA" in family:
        hint = "Apply it on top of an SD1.5 model with --lora PATH[:WEIGHT] (in the app: the LoRA list). " + hint
    return WrongModelFamily(f"{path.name} is {family}, not a Stable Diffusion 1.5 checkpoint.", hint)


# -- building modules --------------------------------------------------------------------------------


def _load_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ModelMissing(f"Configuration file not found: {path}.", "Reinstall the application.") from exc
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelCorrupt(f"{path} is not a readable configuration ({exc}).") from exc


def _assemble(
    factory: Callable[[], Any], state: Mapping[str, Any], what: str, source: Path,
    device: Any, dtype: Any,
) -> Any:
    """Build `factory()` on the meta device and adopt `state` (no random init of 860 M parameters)."""
    import torch

    with torch.device("meta"):
        model = factory()
    expected = model.state_dict()
    state = _match_text_model_prefix(state, expected)
    optional = {k for k in expected if k.endswith("position_ids")}
    missing = [k for k in expected if k not in state and k not in optional]
    if missing:
        raise ModelCorrupt(
            f"{source.name}: the {what} weights are incomplete ('{missing[0]}' is missing, {len(missing)} in all).",
            _REDOWNLOAD,
        )
    for k, v in expected.items():
        if k in state and tuple(state[k].shape) != tuple(v.shape):
            raise ModelCorrupt(
                f"{source.name}: the {what} weight '{k}' has shape {tuple(state[k].shape)}, "
                f"expected {tuple(v.shape)} for SD1.5.",
                _FAMILY_HINT,
            )
    model.load_state_dict({k: state[k] for k in expected if k in state}, strict=False, assign=True)
    # Non-persistent buffers (CLIP's position_ids) are not in any checkpoint: rebuild them.
    for name, buf in list(model.named_buffers()):
        if buf.is_meta:
            if not name.endswith("position_ids"):
                raise ModelCorrupt(f"{source.name}: the {what} buffer '{name}' could not be set.")
            mod_name, _, attr = name.rpartition(".")
            mod = model.get_submodule(mod_name)
            mod.register_buffer(attr, torch.arange(buf.shape[-1]).expand(buf.shape), persistent=False)
    model = model.to(device=device, dtype=dtype).eval()
    model.requires_grad_(False)
    return model


def _match_text_model_prefix(state: Mapping[str, Any], expected: Mapping[str, Any]) -> Mapping[str, Any]:
    """CLIP keys are `text_model.*` in checkpoints and transformers 4, bare in transformers 5: align them."""
    if not any(k.startswith("text_model.") for k in state) and not any(k.startswith("text_model.") for k in expected):
        return state
    want = any(k.startswith("text_model.") for k in expected)
    out = {}
    for k, v in state.items():
        bare = k.removeprefix("text_model.")
        out["text_model." + bare if want else bare] = v
    return out


def _unet_factory(cfg: Mapping[str, Any]) -> Callable[[], Any]:
    from diffusers import UNet2DConditionModel

    return lambda: UNet2DConditionModel.from_config(dict(cfg))


def _vae_factory(cfg: Mapping[str, Any]) -> Callable[[], Any]:
    from diffusers import AutoencoderKL

    return lambda: AutoencoderKL.from_config(dict(cfg))


def _clip_factory(cfg: Mapping[str, Any]) -> Callable[[], Any]:
    from transformers import CLIPTextConfig, CLIPTextModel

    conf = CLIPTextConfig(**{k: v for k, v in cfg.items() if not k.startswith("_") and k != "architectures"})
    return lambda: CLIPTextModel(conf)


def load_tokenizer(folder: Path | None = None) -> Any:
    """The CLIP tokenizer from `folder` (default: the one shipped in resources)."""
    from transformers import CLIPTokenizer

    folder = folder or default_config_dir() / "tokenizer"
    try:
        return CLIPTokenizer.from_pretrained(str(folder), local_files_only=True)
    except (OSError, ValueError) as exc:
        raise ModelCorrupt(f"The CLIP tokenizer in {folder} cannot be read ({exc}).", "Reinstall the application.") from exc


def check_single_file(state: Mapping[str, Any], path: Path) -> None:
    """Refuse a single-file checkpoint's tensors unless they are SD1.5 (the model service runs this
    before converting a `.ckpt`, so another family is refused before anything is written).

    Raises:
        WrongModelFamily: naming the family found.
    """
    family = detect_family({k: tuple(v.shape) for k, v in state.items() if hasattr(v, "shape")})
    if family != "sd15":
        raise _refuse(path, family)


def _read_single_file(path: Path) -> tuple[dict[str, Any], dict[str, tuple[int, ...]]]:
    """Tensors and shapes of a single-file checkpoint; the family is checked before reading tensor data.

    A `.ckpt` is read weights-only here; the model service converts it to safetensors first
    (`ModelService.runtime_path`), so this path serves direct callers only.
    """
    from engine.models.safe_load import load_state

    if path.suffix.lower() == ".safetensors":
        header = read_safetensors_header(path)
        shapes = {k: s for k, (_d, s) in header.tensors.items()}
        family = detect_family(shapes)
        if family != "sd15":
            raise _refuse(path, family)
        return load_state(path), shapes
    state = load_state(path)
    if isinstance(state.get("state_dict"), dict):  # Lightning .ckpt
        state = state["state_dict"]
    state = {k: v for k, v in state.items() if hasattr(v, "shape")}
    check_single_file(state, path)
    return state, {k: tuple(v.shape) for k, v in state.items()}


def _convert_vae_state(state: Mapping[str, Any], cfg: Mapping[str, Any]) -> dict[str, Any]:
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    return convert_ldm_vae_checkpoint(dict(state), dict(cfg))


def load_vae(
    path: str | os.PathLike[str], *, device: Any = "cpu", dtype: Any = None, config_dir: Path | None = None
) -> tuple[Any, dict[str, str]]:
    """Load a separate VAE: a diffusers folder (`config.json` + weights, or one with `vae/`) or one file.

    A single file may use diffusers keys (`encoder.down_blocks.*`, e.g. sd-vae-ft-mse's
    `diffusion_pytorch_model.safetensors`) or the LDM layout (`encoder.down.*`, optionally prefixed
    `first_stage_model.`, e.g. `vae-ft-mse-840000-ema-pruned.safetensors`).

    Returns:
        (AutoencoderKL in eval mode, {file name: fingerprint}).

    Raises:
        ModelMissing, ModelCorrupt: missing, damaged or not a VAE.
    """
    import torch

    dtype = dtype or torch.float32
    p = Path(path)
    if p.is_dir():
        folder = p / "vae" if (p / "vae" / "config.json").is_file() else p
        from diffusers import AutoencoderKL

        try:
            vae = AutoencoderKL.from_pretrained(str(folder), local_files_only=True)
        except (OSError, ValueError, RuntimeError) as exc:
            raise ModelCorrupt(f"The VAE folder {folder} cannot be loaded ({exc}).", _REDOWNLOAD) from exc
        vae = vae.to(device=device, dtype=dtype).eval()
        vae.requires_grad_(False)
        return vae, _folder_fingerprints(folder, "vae")
    cfg = _load_json((config_dir or default_config_dir()) / "vae" / "config.json")
    if p.suffix.lower() == ".safetensors":
        read_safetensors_header(p)  # a truncated file is reported by name before anything else
    from engine.models.safe_load import load_state

    state = load_state(p)
    if isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not any(k.startswith("encoder.down_blocks.") or k.startswith("decoder.up_blocks.") for k in state):
        state = _convert_vae_state(state, cfg)
    vae = _assemble(_vae_factory(cfg), state, "VAE", p, device, dtype)
    return vae, {p.name: file_fingerprint(p)}


def _folder_fingerprints(folder: Path, component: str) -> dict[str, str]:
    out = {}
    for f in sorted(folder.iterdir()):
        if f.is_file() and f.suffix in (".safetensors", ".bin"):
            out[f"{component}/{f.name}"] = file_fingerprint(f)
    return out


def _check_folder_family(folder: Path) -> None:
    index = folder / "model_index.json"
    if index.is_file():
        cls = str(_load_json(index).get("_class_name", ""))
        for marker, family in (("XL", "SDXL"), ("3", "SD3"), ("Flux", "Flux"), ("Inpaint", "an inpainting model"),
                               ("Cascade", "Stable Cascade"), ("PixArt", "PixArt"), ("Kandinsky", "Kandinsky")):
            if marker in cls:
                raise _refuse(folder, f"{family} ({cls})")
    cfg_path = folder / "unet" / "config.json"
    if not cfg_path.is_file():
        raise ModelMissing(
            f"{folder} is not a diffusers Stable Diffusion folder (no unet/config.json).",
            "Point to the folder that holds unet/, vae/ and text_encoder/, or to a single .safetensors file.",
        )
    cfg = _load_json(cfg_path)
    cross = cfg.get("cross_attention_dim")
    if cross == 1024:
        raise _refuse(folder, "SD 2.x (1024-wide cross-attention)")
    if cross == 2048 or cfg.get("addition_embed_type") == "text_time":
        raise _refuse(folder, "SDXL")
    if cfg.get("in_channels", 4) != SD15_LATENT_CHANNELS:
        raise _refuse(folder, f"a {cfg.get('in_channels')}-channel UNet (inpainting or similar)")
    if cross != SD15_CROSS_DIM:
        raise _refuse(folder, f"a UNet with {cross}-wide cross-attention")


def _load_folder(folder: Path, device: Any, dtype: Any, config_dir: Path) -> SD15Components:
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel

    _check_folder_family(folder)

    def load(what: str, fn: Callable[[], Any]) -> Any:
        sub = folder / what
        if not sub.is_dir():
            raise ModelMissing(f"{folder} has no {what}/ folder.", "Copy the complete diffusers folder.")
        try:
            model = fn()
        except (OSError, ValueError, RuntimeError, KeyError) as exc:
            raise ModelCorrupt(f"The {what} in {folder} cannot be loaded ({type(exc).__name__}: {exc}).",
                               _REDOWNLOAD) from exc
        model = model.to(device=device, dtype=dtype).eval()
        model.requires_grad_(False)
        return model

    def variant(sub: str) -> str | None:
        names = {f.name for f in (folder / sub).iterdir()} if (folder / sub).is_dir() else set()
        plain = any(n in names for n in ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin",
                                         "model.safetensors", "pytorch_model.bin"))
        return None if plain or not any(".fp16." in n for n in names) else "fp16"

    unet = load("unet", lambda: UNet2DConditionModel.from_pretrained(
        str(folder), subfolder="unet", local_files_only=True, variant=variant("unet")))
    vae = load("vae", lambda: AutoencoderKL.from_pretrained(
        str(folder), subfolder="vae", local_files_only=True, variant=variant("vae")))
    text_encoder = load("text_encoder", lambda: CLIPTextModel.from_pretrained(
        str(folder / "text_encoder"), local_files_only=True, variant=variant("text_encoder")))
    tok_dir = folder / "tokenizer"
    tokenizer = load_tokenizer(tok_dir if (tok_dir / "vocab.json").is_file() else None)
    sched = folder / "scheduler" / "scheduler_config.json"
    scheduler_config = _load_json(sched if sched.is_file() else config_dir / "scheduler" / "scheduler_config.json")
    fps: dict[str, str] = {}
    for sub in ("unet", "vae", "text_encoder"):
        # "<model folder>/<component>/<file>": the folder's name is what artists call the model.
        fps.update(_folder_fingerprints(folder / sub, f"{folder.name}/{sub}"))
    return SD15Components(unet, vae, text_encoder, tokenizer, scheduler_config, source=str(folder), fingerprints=fps)


def _load_single_file(path: Path, device: Any, dtype: Any, config_dir: Path, has_vae: bool) -> SD15Components:
    from diffusers.loaders.single_file_utils import convert_ldm_clip_checkpoint, convert_ldm_unet_checkpoint

    state, _shapes = _read_single_file(path)
    unet_cfg = _load_json(config_dir / "unet" / "config.json")
    vae_cfg = _load_json(config_dir / "vae" / "config.json")
    clip_cfg = _load_json(config_dir / "text_encoder" / "config.json")
    if not any(k.startswith(_CLIP) for k in state):
        raise ModelCorrupt(
            f"{path.name} has no text encoder (no 'cond_stage_model.transformer.*' weights).",
            "Use a complete SD1.5 checkpoint (UNet, VAE and CLIP text encoder in one file) or a diffusers folder.",
        )
    unet_state = convert_ldm_unet_checkpoint(state, unet_cfg)
    clip_state = convert_ldm_clip_checkpoint({k: v for k, v in state.items() if k.startswith(_CLIP)})
    unet = _assemble(_unet_factory(unet_cfg), unet_state, "UNet", path, device, dtype)
    text_encoder = _assemble(_clip_factory(clip_cfg), clip_state, "text encoder", path, device, dtype)
    vae = None
    if not has_vae:
        if not any(k.startswith(_VAE_PREFIXES) for k in state):
            raise ModelCorrupt(
                f"{path.name} has no VAE (no 'first_stage_model.*' weights).",
                "Choose a separate VAE (e.g. sd-vae-ft-mse) in the settings or with --vae.",
            )
        vae_state = _convert_vae_state({k: v for k, v in state.items() if k.startswith(_VAE_PREFIXES)}, vae_cfg)
        vae = _assemble(_vae_factory(vae_cfg), vae_state, "VAE", path, device, dtype)
    del state
    tokenizer = load_tokenizer(config_dir / "tokenizer" if (config_dir / "tokenizer" / "vocab.json").is_file() else None)
    scheduler_config = _load_json(config_dir / "scheduler" / "scheduler_config.json")
    return SD15Components(unet, vae, text_encoder, tokenizer, scheduler_config, source=str(path),
                          fingerprints={path.name: file_fingerprint(path)})


def load_sd15(
    path: str | os.PathLike[str],
    *,
    vae: str | os.PathLike[str] | None = None,
    device: Any = "cpu",
    dtype: torch.dtype | None = None,
    config_dir: str | os.PathLike[str] | None = None,
) -> SD15Components:
    """Load SD1.5 from a diffusers folder or a single-file checkpoint, without any network access.

    Args:
        path: a diffusers folder, or a `.safetensors`/`.ckpt` file in the LDM (A1111/ComfyUI) layout.
        vae: optional separate VAE (diffusers folder or single file) replacing the model's own.
        device: torch device for the modules.
        dtype: parameter dtype (default float32).
        config_dir: where the component configs of a single file come from (default `resources/sd15`;
            tests pass a tiny model's folder).

    Returns:
        The components, in eval mode, without gradients.

    Raises:
        ModelMissing: the path does not exist or lacks a component.
        ModelCorrupt: truncated or damaged weights (the message names the file).
        WrongModelFamily: another model family (the message names the family detected).
    """
    import torch

    dtype = dtype or torch.float32
    p = Path(os.path.expanduser(str(path)))
    cfg_dir = Path(config_dir) if config_dir else default_config_dir()
    if not p.exists():
        raise ModelMissing(
            f"Stable Diffusion model not found: {p}.",
            "Put an SD1.5 .safetensors file or diffusers folder in the models folder (models/sd15) or pass --model.",
        )
    if p.is_dir():
        comps = _load_folder(p, device, dtype, cfg_dir)
    elif p.suffix.lower() in SINGLE_FILE_SUFFIXES:
        comps = _load_single_file(p, device, dtype, cfg_dir, has_vae=vae is not None)
    else:
        raise ModelCorrupt(
            f"{p.name} is not a model file this app reads (expected .safetensors or a diffusers folder).",
            "Convert .pt/.bin checkpoints to .safetensors first.",
        )
    if vae is not None:
        comps.vae, fps = load_vae(vae, device=device, dtype=dtype, config_dir=cfg_dir)
        comps.vae_source = str(vae)
        comps.fingerprints.update({f"vae:{k}": v for k, v in fps.items()})
    if comps.unet.config.cross_attention_dim != SD15_CROSS_DIM:
        raise _refuse(p, f"a UNet with {comps.unet.config.cross_attention_dim}-wide cross-attention")
    log.info("loaded SD1.5 from %s (%s)", p, comps.model_id)
    return comps
