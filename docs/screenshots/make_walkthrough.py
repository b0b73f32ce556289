"""Take the README's "first ten minutes" screenshots: the real app on the real engine under Xvfb.

  first_models.png   a models folder without the W+ adapter and the face parser: what works now, what each
                     missing file costs
  first_consent.png  `wplus-studio astronaut.png`: the photo on screen, the consent note asked first
  first_capture.png  after consent: detection → alignment → (no parser: not whitened) → e4e → the identity
                     and its StyleGAN2 reconstruction
  first_render.png   a render in progress (denoising preview, step count, time left), on the CPU
  first_cancel.png   Esc pressed: acknowledged at once ("Cancelling…", buttons off) before the step ends

Weights as in make_screenshot.py: tiny random SD1.5 + W+ adapter (engine.testing.tiny) and the full-size
e4e with deterministic rule weights, so the face preview and the pictures are coloured noise, honestly.
Usage: docs/screenshots/walkthrough.sh   (WPLUS_SHOT_MODELS=DIR keeps and reuses the written models)
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from make_screenshot import PROMPT, save_small_png, write_models  # noqa: E402

W, H = 1440, 900


def main() -> int:
    import skimage
    from PySide6.QtWidgets import QApplication  # noqa: TID251 - drives the GUI

    from desktop.app import AppOptions, StudioApp
    from desktop.views.dialogs import LicenceDialog
    from engine.testing.tiny import tiny_config

    out_dir = Path(sys.argv[1]) if len(sys.argv) > 1 else REPO / "docs" / "screenshots"
    photo = Path(skimage.__file__).parent / "data" / "astronaut.png"
    tmp = Path(tempfile.mkdtemp(prefix="wplus-walk-"))
    models = Path(os.environ.get("WPLUS_SHOT_MODELS", tmp / "models"))
    write_models(models, REPO / "tests" / "fixtures" / "official")
    qapp = QApplication.instance() or QApplication([])

    def pump(seconds: float, until=None, what: str = "") -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end and not (until and until()):
            qapp.processEvents()
            time.sleep(0.01)
        if what and until is not None and not until():
            raise SystemExit(f"timed out waiting for {what}")

    def shoot(name: str, settle: bool = True) -> None:
        """Grab the screen; `settle=False` grabs what is painted now, before queued engine reports arrive."""
        if settle:
            pump(0.5)
        else:
            for widget in qapp.topLevelWidgets():
                if widget.isVisible():
                    widget.repaint()
        raw = tmp / f"{name}.raw.png"
        if not qapp.primaryScreen().grabWindow(0, 0, 0, W, H).save(str(raw), "PNG"):
            raise SystemExit(f"could not grab {name}")
        save_small_png(raw, out_dir / f"{name}.png")
        print(f"saved {out_dir / name}.png")

    def open_app(folder: Path, cfg, tag: str) -> StudioApp:
        def factory(_c):
            from engine.session import Session

            return Session(cfg)

        app = StudioApp(AppOptions(models_dir=folder, settings_path=tmp / f"{tag}.ini", log_dir=tmp / f"logs-{tag}",
                                   data_dir=tmp / f"data-{tag}", session_factory=factory), qapp)
        app.window.move(0, 0)
        app.window.resize(W, H)
        app.window.show()
        app.studio.error.connect(lambda info: print(f"engine error: {info.message}", file=sys.stderr))
        pump(180, lambda: app.studio.model_states is not None and bool(app.studio.catalog), "the engine")
        return app

    # 1. a models folder without the adapter (and, like every folder here, without the parser)
    partial = tmp / "partial-models"
    shutil.copytree(models, partial, ignore=shutil.ignore_patterns("wplus_adapter*", "e4e_*"))
    app = open_app(partial, tiny_config(partial), "partial")
    pump(2)
    shoot("first_models")
    app.window.close()
    app.shutdown()

    # 2. `wplus-studio astronaut.png` on a complete folder (the parser still missing): consent first
    cfg = tiny_config(models)
    app = open_app(models, cfg, "full")
    w = app.window
    app.studio.generation.update(prompt=PROMPT, width=256, height=256, steps=40, seed=23)
    app.open_files([str(photo)])
    pump(30, lambda: w._consent_dialog is not None and w._consent_dialog.isVisible(), "the consent note")
    dlg = w._consent_dialog
    dlg.move(W // 2 - dlg.width() // 2, H // 2 - dlg.height() // 2)
    dlg.agree.setChecked(True)
    shoot("first_consent")

    # 3. consent given: the real capture chain, then the reconstruction preview
    dlg.done(LicenceDialog.DialogCode.Accepted)
    pump(300, lambda: app.studio.identity is not None, "the captured identity")
    pump(120, lambda: w.identity_panel.preview_view.has_image, "the reconstruction preview")
    shoot("first_capture")

    # 4. a render in progress (40 steps at 256² on the CPU)
    app.studio.generate()
    pump(600, lambda: w.result_view.progress.value() >= 3 and w.result_view.image.has_image, "the render")
    shoot("first_render")

    # 5. Esc: acknowledged at once, effective at the next step boundary
    w.act_cancel.trigger()
    shoot("first_cancel", settle=False)
    pump(120, lambda: not app.studio.busy, "the cancel")
    print("after the cancel:", w.status_state.text())
    app.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
