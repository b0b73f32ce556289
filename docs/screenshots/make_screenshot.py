"""Take docs/screenshots/main_window.png: a REAL capture in the real app under Xvfb.

Everything runs for real — the window, the camera thread playing a still photo, engine.faces' live face
box and landmarks, Capture (Space) → detection → FFHQ alignment → e4e → W+ (the face parser is absent,
so whitening is skipped and the identity panel says so) → the StyleGAN2 reconstruction preview → a slider
edit → generation with the W+ adapter → the result on screen — except the weights, which cannot be on
this machine: the e4e checkpoint (encoder and StyleGAN2 decoder, 1.2 GB, official layout) carries the
deterministic rule-wbn-1/wbn-1d weights of engine.testing, and SD1.5 + the W+ adapter are the tiny
random-weight models of engine.testing.tiny. The face preview and the generated pictures are therefore
coloured noise, honestly. The photo is scikit-image's `astronaut.png` (NASA, public domain).

Usage: docs/screenshots/shoot.sh [out.png]  (runs this under xvfb-run at 1440×900; ≈1–2 min on 2 cores)
Set WPLUS_SHOT_MODELS to a folder to keep (and reuse) the written models.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

PROMPT = "portrait of a woman as an astronaut, oil painting, dramatic light"


def write_models(models: Path, fixtures: Path) -> Path:
    """Tiny SD1.5 + W+ adapter, and the full-size rule-weight e4e checkpoint, into `models` (once)."""
    from engine.testing.official_files import write_official_e4e
    from engine.testing.tiny import write_tiny_models

    marker = models / ".complete"
    if marker.is_file():
        return models
    models.mkdir(parents=True, exist_ok=True)
    write_tiny_models(models)
    keys = json.loads((fixtures / "e4e_manifest.json").read_text())["keys"]
    write_official_e4e(models / "e4e_ffhq_encode.pt", {e["key"]: tuple(e["shape"]) for e in keys})
    marker.write_text("ok", encoding="utf-8")
    return models


def main() -> int:
    import skimage
    from PySide6.QtWidgets import QApplication  # noqa: TID251 - drives the GUI

    from desktop.app import AppOptions, StudioApp
    from engine.testing.tiny import tiny_config

    out = Path(sys.argv[1]) if len(sys.argv) > 1 else REPO / "docs" / "screenshots" / "main_window.png"
    face_path = Path(skimage.__file__).parent / "data" / "astronaut.png"
    fixtures = REPO / "tests" / "fixtures" / "official"
    tmp = Path(tempfile.mkdtemp(prefix="wplus-shot-"))
    models = Path(os.environ.get("WPLUS_SHOT_MODELS", tmp / "models"))
    t0 = time.monotonic()
    write_models(models, fixtures)
    print(f"models ready in {time.monotonic() - t0:.0f} s: {models}")
    cfg = tiny_config(models)  # tiny SD1.5 + adapter; e4e found in the folder by its official name

    def factory(_c):
        from engine.session import Session

        return Session(cfg)

    qapp = QApplication.instance() or QApplication([])
    settings = tmp / "settings.ini"
    app = StudioApp(AppOptions(models_dir=models, settings_path=settings, log_dir=tmp / "logs",
                               data_dir=tmp / "data", session_factory=factory), qapp)
    app.settings.setValue("consent/accepted", "true")
    w = app.window
    w.move(0, 0)
    w.resize(1440, 900)
    w.show()

    def pump(seconds: float, until=None, what: str = "") -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end and not (until and until()):
            qapp.processEvents()
            time.sleep(0.01)
        if what and until is not None and not until():
            raise SystemExit(f"timed out waiting for {what}")

    def fail_on_error(info) -> None:
        print(f"engine error: {info.message} — {info.hint}", file=sys.stderr)

    app.studio.error.connect(fail_on_error)
    pump(180, lambda: bool(app.studio.catalog), "the engine")
    # the camera: the photo as a still source, tracked by engine.faces
    w.camera_panel.picker.addItem("astronaut.png (still)", f"file:{face_path}")
    w.camera_panel.picker.setCurrentIndex(w.camera_panel.picker.count() - 1)
    w.camera_panel.toggle.setChecked(True)
    pump(60, lambda: w.camera_panel.view.analysis is not None and w.camera_panel.view.analysis.box is not None,
         "the face box")
    # Capture (what Space does): detect → align → e4e on the worker; then the exact reconstruction preview
    t0 = time.monotonic()
    w.capture()
    pump(300, lambda: app.studio.identity is not None, "the captured identity")
    pump(120, lambda: w.identity_panel.preview_view.has_image, "the reconstruction preview")
    print(f"capture → identity + reconstruction in {time.monotonic() - t0:.1f} s")
    # a slider moved (committed: one undo step), then a generation with the tiny SD1.5
    app.studio.generation.update(prompt=PROMPT, width=256, height=256, steps=12, seed=23)
    sliders = list(w.edit_panel.sliders)
    age = "age" if "age" in sliders else sliders[0]
    app.edits.set_value(age, 1.5)
    pump(60, lambda: w.identity_panel.preview_view._caption.startswith("edited"), "the edited preview")
    for seed in (23, 24):
        app.studio.generation.update(seed=seed)
        gen = app.studio.generate()
        pump(600, lambda g=gen: app.studio.shown is not None and app.studio.shown.gen == g, "a result")
    pump(5, lambda: bool(w.result_view.likeness_label.text()))
    w.result_view.image.set_caption(w.result_view.image._caption + " · tiny random SD1.5 weights")
    pump(1.0)
    shot = qapp.primaryScreen().grabWindow(0, 0, 0, 1440, 900)
    raw = tmp / "shot.png"
    ok = shot.save(str(raw), "PNG")
    app.shutdown()
    if not ok:
        return 1
    save_small_png(raw, out)
    print(f"saved {out} ({out.stat().st_size / 1024:.0f} KB, {shot.width()}×{shot.height()}); "
          f"identity info: {app.studio.identity.identity.info if app.studio.identity else None}")
    return 0


def save_small_png(src: Path, out: Path) -> None:
    """A 256-colour optimised PNG (the noise pictures do not compress: 1 MB as true colour, ≈350 KB so)."""
    from PIL import Image

    out.parent.mkdir(parents=True, exist_ok=True)
    with Image.open(src) as im:
        im.convert("RGB").quantize(256, method=Image.Quantize.MEDIANCUT).save(out, optimize=True)


if __name__ == "__main__":
    sys.exit(main())
