"""Blind face restoration with PSFRGAN, exactly as the official `ProcessWildImage.py -s` step (PSFRGAN.md §1).

The aligned face goes in as the same tensor ParseNet reads (`engine.faces.parse.parser_input`), with the
one-hot of ParseNet's logits of that *original* face; the output leaves through the official `tensor2pil`
(clip, scale, **truncate** to uint8). The restored PNG is what e4e then encodes; the whitening mask stays
the one of the original face (the chain does that, `engine.faces.chain.FaceChain.prepare_aligned`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from engine.errors import InvalidInput, ModelMissing

log = logging.getLogger(__name__)

NUM_CLASSES = 19
RESTORER_FILE = "psfrgan_epoch15_net_G.pth"
RESTORER_ROLE = "restorer"


def parse_onehot(parse_map: Any) -> Any:
    """The official one-hot: `(parse_map == parse_map.max(dim=1, keepdim=True)[0]).float()` (B×19×H×W).

    Exact ties set several ones, as in the official code.
    """
    return (parse_map == parse_map.max(dim=1, keepdim=True)[0]).float()


def labels_onehot(labels: np.ndarray) -> Any:
    """One-hot (1×19×H×W float32 torch) of class indices (H×W or 1×H×W integers in 0–18)."""
    import torch

    lab = np.asarray(labels)
    if lab.ndim == 3 and lab.shape[0] == 1:
        lab = lab[0]
    if lab.ndim != 2 or not np.issubdtype(lab.dtype, np.integer):
        raise InvalidInput(f"a parse map must be H×W integer class indices, got {lab.dtype} {lab.shape}.")
    if lab.size and (lab.min() < 0 or lab.max() >= NUM_CLASSES):
        raise InvalidInput(
            f"a parse map holds classes 0–{NUM_CLASSES - 1}, found {int(lab.min())}–{int(lab.max())}.",
            "Give the CelebAMask-HQ class indices (0 background … 18 cloth), not a colour image.",
        )
    t = torch.from_numpy(lab.astype(np.int64))
    return torch.nn.functional.one_hot(t, NUM_CLASSES).permute(2, 0, 1)[None].float()


def tensor2pil(output: Any) -> np.ndarray:
    """The official `tensor2pil`: 1×3×H×W → H×W×3, clip to [-1, 1], (x + 1)/2·255, `astype(uint8)` (truncates)."""
    if hasattr(output, "detach"):
        output = output.detach().to("cpu").float().numpy()
    x = np.asarray(output, dtype=np.float32)
    if x.ndim == 4:
        x = x[0]
    if x.ndim != 3 or x.shape[0] != 3:
        raise InvalidInput(f"tensor2pil needs a 1×3×H×W or 3×H×W image, got shape {x.shape}.")
    x = np.clip(x.transpose(1, 2, 0), -1, 1)
    return np.ascontiguousarray(((x + 1) / 2 * 255).astype(np.uint8))


@dataclass(frozen=True)
class Restoration:
    """A restored face: the network's float output and the PNG the official script saves."""

    raw: np.ndarray  # 1×3×512×512 float32, before clipping
    image: np.ndarray  # 512×512×3 uint8 = tensor2pil(raw)


class FaceRestorer:
    """PSFRGAN on aligned 512² faces.

    Args:
        run: (image 1×3×512×512, one-hot 1×19×512×512) torch tensors → 1×3×512×512 output; a
            `PSFRGenerator`, or a `face_restorer` runner of another backend (see `from_runner`).
        device, dtype: where the inputs go.
        backend: the backend name shown to the user.
    """

    def __init__(self, run: Callable[[Any, Any], Any], device: Any = "cpu", dtype: Any = None,
                 backend: str = "torch") -> None:
        self._run = run
        self.device = device
        self.dtype = dtype
        self.backend = backend

    @classmethod
    def from_module(cls, net: Any) -> FaceRestorer:
        param = next(net.parameters())
        return cls(net, param.device, param.dtype, "torch")

    @classmethod
    def from_runner(cls, runner: Any) -> FaceRestorer:
        """Wrap a `face_restorer` runner (named inputs `image`, `parse` → `restored`)."""
        return cls(lambda image, parse: runner(image=image, parse=parse)["restored"],
                   getattr(runner, "device", "cpu"), None, getattr(runner, "backend", "onnxruntime"))

    @classmethod
    def load(cls, path: str | Path, device: str = "cpu") -> FaceRestorer:
        """Load `psfrgan_epoch15_net_G.pth` (or .safetensors) through the safe loader.

        Raises:
            ModelMissing, ModelCorrupt, UnsafeCheckpoint: see `engine.networks.psfrgan.load_psfrgan`.
        """
        from engine.networks.psfrgan import load_psfrgan

        return cls.from_module(load_psfrgan(path, device=device))

    def restore(self, aligned: np.ndarray, onehot: Any) -> Restoration:
        """Restore an aligned face.

        Args:
            aligned: 512×512×3 uint8 RGB (other sizes are resized bilinearly as the official script does).
            onehot: 1×19×512×512 parse one-hot of this same face (`parse_onehot` or `labels_onehot`).

        Returns:
            The raw float output and its official PNG values.

        Raises:
            InvalidInput: a face or parse map of the wrong shape, or a non-finite output.
        """
        import torch

        from engine.faces.parse import parser_input

        x = torch.from_numpy(parser_input(aligned))
        if tuple(onehot.shape) != (1, NUM_CLASSES, *x.shape[2:]):
            raise InvalidInput(
                f"the parse one-hot must be 1×{NUM_CLASSES}×{x.shape[2]}×{x.shape[3]}, got {tuple(onehot.shape)}."
            )
        kw: dict[str, Any] = {"device": self.device}
        if self.dtype is not None:
            kw["dtype"] = self.dtype
        with torch.inference_mode():
            out = self._run(x.to(**kw), onehot.to(**kw))
        raw = out.detach().to("cpu", torch.float32).numpy()
        if not np.isfinite(raw).all():
            raise InvalidInput("The face restorer produced non-finite values.", "Check the PSFRGAN model file.")
        return Restoration(raw=raw, image=tensor2pil(raw))


def missing_restorer(where: Path) -> ModelMissing:
    """The error for a restoration request without the PSFRGAN file (names the file and where it goes)."""
    return ModelMissing(
        f"Face restoration needs the PSFRGAN generator {RESTORER_FILE}, which is not installed "
        f"(expected at {where}).",
        f"Put {RESTORER_FILE} (≈184 MB, from the PSFRGAN or w-plus-adapter v1 release) in the models folder "
        "(`wplus models import DIR` or `wplus models fetch psfrgan`), or pass --psfrgan PATH.",
    )


def open_restorer(models: Any) -> FaceRestorer:
    """The restorer on the configured backend: ONNX Runtime when the backend is auto/onnxruntime/tensorrt and
    `<models>/onnx/face_restorer.onnx` exists and opens, else torch (the checkpoint's safetensors
    conversion, made once).

    Args:
        models: the session's `engine.models.service.ModelService`.

    Raises:
        ModelMissing: no PSFRGAN file (the message names it and where it goes).
    """
    from engine.devices import resolve_device

    config = models.config
    device, _dtype = resolve_device(config.device, "float32")
    if config.backend in ("auto", "onnxruntime", "tensorrt"):
        from engine.backends.select import onnx_dir_for

        onnx = onnx_dir_for(config) / "face_restorer.onnx"
        if onnx.is_file():
            from engine.backends.ort_backend import OrtRunners
            from engine.errors import EngineError

            try:
                runners = models.get(("ort_restorer", str(onnx), str(device)),
                                     lambda: OrtRunners(onnx.parent, str(device)))
                return FaceRestorer.from_runner(runners.get("face_restorer"))
            except EngineError as exc:  # an explicit, logged fallback
                log.warning("face restoration falls back to torch: %s", exc.user_message)
    try:
        path = models.runtime_path(RESTORER_ROLE)
    except ModelMissing:
        raise missing_restorer(config.models_dir / RESTORER_FILE) from None
    return models.get(("restorer", str(path), str(device)), lambda: FaceRestorer.load(path, device=str(device)))
