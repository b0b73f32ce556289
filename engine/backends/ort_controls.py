"""ControlNet, LoRA and FreeU on ONNX Runtime: which exported graph serves a request (export/controls.py).

`OrtControls` is mixed into `OrtRunners`. It gives it the same three calls the torch runners have —
`set_loras(specs)`, `set_freeu(enabled)`, `controlnet(path)` — and routes the `unet` component to the right
graph per call: `unet` / `unet_control` (ControlNet residuals as inputs) / their `_freeu` variants, from
the folder of the active LoRA set (`loras/<key>/`, LoRAs fused at export) or the base folder.

When an export lacks what a request needs (a ControlNet not exported, a LoRA set or FreeU variant not
built) the call raises `BackendUnavailable` naming exactly what is missing and the command that makes it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from engine.backends.artifacts import WeightSource, read_artifact
from engine.backends.base import IO_SPEC, controlnet_spec, residual_names, unet_control_spec
from engine.errors import BackendUnavailable

_TORCH_HINT = "or choose the torch backend"


def lora_set_key(items: list[tuple[str, float, float]]) -> str:
    """Folder name of a LoRA set (shared with export/controls.py, which imports it from here)."""
    import hashlib

    text = ";".join(f"{h}@{float(w)!r}/{float(t)!r}" for h, w, t in items)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class UNetRouter:
    """The `unet` runner of an ONNX folder with controls: picks the graph for each call."""

    backend = "onnxruntime"

    def __init__(self, owner: Any) -> None:
        self.owner = owner
        self.spec = IO_SPEC["unet"]

    def __call__(self, **inputs: Any) -> dict[str, Any]:
        control = inputs.pop("control", None)
        name = "unet" + ("_control" if control else "") + ("_freeu" if self.owner._freeu_on() else "")
        runner = self.owner._graph(name)
        if control:
            inputs.update(zip(residual_names(len(control) - 1), control))
        return runner(**inputs)


class OrtControls:
    """Mixin for `OrtRunners` (needs its `onnx_dir`, `providers`, `threads`, `device`)."""

    onnx_dir: Path
    providers: list[str]
    threads: int
    device: Any

    def _base_get(self, component: str) -> Any:  # OrtRunners' plain lookup
        raise NotImplementedError

    def _controls_state(self) -> dict[str, Any]:
        state = self.__dict__.setdefault("_controls", {"freeu": False, "lora_dir": None, "lora_label": "",
                                                       "graphs": {}, "files": {}})
        return state

    def _freeu_on(self) -> bool:
        return bool(self._controls_state()["freeu"])

    def set_freeu(self, enabled: bool) -> None:
        """Use the FreeU-flagged UNet graphs (official factors) from now on; checked when a step runs."""
        self._controls_state()["freeu"] = bool(enabled)

    def set_loras(self, loras: Any, *, fused: bool = True) -> tuple[Any, ...]:
        """Serve text encoder and UNet from the export of exactly this LoRA set (() → the base export).

        Raises:
            BackendUnavailable: no export of this set (names the LoRAs and weights and the command).
        """
        del fused  # exported LoRAs are always fused
        st = self._controls_state()
        if not loras:
            st["lora_dir"], st["lora_label"] = None, ""
            return ()
        from engine.networks.lora import read_lora

        files = []
        for spec in loras:
            p = Path(spec.path)
            k = (str(p), p.stat().st_mtime if p.exists() else 0.0)
            if k not in st["files"]:
                st["files"][k] = read_lora(p)
            files.append(st["files"][k])
        key = lora_set_key([(f.short_hash, s.weight, s.text) for f, s in zip(files, loras)])
        folder = self.onnx_dir / "loras" / key
        label = ", ".join(f"{f.name}:{s.weight:g}" + ("" if s.text == s.weight else f":{s.text:g}")
                          for f, s in zip(files, loras))
        if not (folder / "unet.onnx").is_file():
            args = " ".join(f"--lora {s.path}:{s.weight:g}" + ("" if s.text == s.weight else f":{s.text:g}")
                            for s in loras)
            raise BackendUnavailable(
                f"The ONNX export in {self.onnx_dir} has no build for the LoRA set {label}.",
                f"Export it (python -m export controls --onnx-dir {self.onnx_dir} {args}), {_TORCH_HINT}.",
            )
        st["lora_dir"], st["lora_label"] = folder, label
        return tuple(files)

    def controlnet(self, path: str) -> Any:
        """The runner of the exported graph of the ControlNet at `path` (keyed by its sha256).

        Raises:
            BackendUnavailable: that ControlNet was not exported into this folder.
        """
        st = self._controls_state()
        p = Path(path)
        k = ("cn", str(p), p.stat().st_mtime if p.exists() else 0.0)
        if k not in st["graphs"]:
            if not p.exists():
                from engine.errors import ModelMissing

                raise ModelMissing(f"ControlNet not found: {p}.", "Check the --controlnet path.")
            sha = WeightSource.of_file("controlnet", p).sha256[:16]
            target = self.onnx_dir / "controlnets" / f"{sha}.onnx"
            if not target.is_file():
                raise BackendUnavailable(
                    f"The ONNX export in {self.onnx_dir} has no graph of the ControlNet {p.name}.",
                    f"Export it (python -m export controls --onnx-dir {self.onnx_dir} --controlnet {p}), "
                    f"{_TORCH_HINT}.",
                )
            st["graphs"][k] = self._open(target, "controlnet")
        return st["graphs"][k]

    def _graph(self, name: str) -> Any:
        """The runner of UNet graph `name` from the active LoRA folder or the base folder."""
        st = self._controls_state()
        folder = st["lora_dir"] or self.onnx_dir
        target = folder / f"{name}.onnx"
        if name == "unet" and folder == self.onnx_dir:
            return self._base_get("unet")
        if not target.is_file():
            what = {"unet_control": "UNet graph that takes ControlNet residuals",
                    "unet_freeu": "FreeU variant of the UNet",
                    "unet_control_freeu": "FreeU variant of the ControlNet UNet"}.get(name, name)
            where = f"the LoRA set {st['lora_label']}" if st["lora_dir"] else f"the ONNX export in {self.onnx_dir}"
            flags = ("--freeu " if "freeu" in name else "") + ("--control-unet " if "control" in name else "")
            raise BackendUnavailable(
                f"{where[0].upper()}{where[1:]} has no {what} ({target.name}).",
                f"Export it (python -m export controls --onnx-dir {self.onnx_dir} {flags.strip()}), {_TORCH_HINT}.",
            )
        return self._open(target, "unet_control" if "control" in name else "unet")

    def _graph_runner(self, spec: Any, target: Path, info: Any) -> Any:
        """A runner for one graph file; `OrtRunners` (which owns the sessions) provides it."""
        raise NotImplementedError

    def _open(self, target: Path, component: str) -> Any:
        st = self._controls_state()
        key = ("file", str(target))
        if key not in st["graphs"]:
            info = read_artifact(target, component)
            n = int(dict(info.extra).get("n_down", "0") or 0)
            spec = {"controlnet": controlnet_spec(n) if n else None,
                    "unet_control": unet_control_spec(n) if n else None}.get(component) or IO_SPEC[component]
            st["graphs"][key] = self._graph_runner(spec, target, info)
        return st["graphs"][key]

    def routed(self, component: str) -> Any:
        """The runner for `component` when controls decide it, else None (the plain lookup applies)."""
        st = self._controls_state()
        if component == "unet":
            self._base_get("unet")  # the plain export must exist and be sound: opened (and checked) now, as before
            return UNetRouter(self)
        if component == "text_encoder" and st["lora_dir"] is not None:
            return self._open(st["lora_dir"] / "text_encoder.onnx", "text_encoder")
        return None

    def lora_sets(self) -> list[dict[str, Any]]:
        """The LoRA sets exported into this folder (from each set's loras.json)."""
        out = []
        for f in sorted((self.onnx_dir / "loras").glob("*/loras.json")):
            try:
                out.append({"key": f.parent.name, "loras": json.loads(f.read_text(encoding="utf-8"))})
            except (OSError, ValueError):
                continue
        return out
