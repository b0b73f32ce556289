"""Take docs/screenshots/main_window.png: the real app under Xvfb on the real engine with tiny models.

What is real: the window, the engine session (engine.session.Session on engine.testing.tiny's tiny
SD1.5 + W+ adapter with random weights — so the generated picture is texture, not a portrait), the
camera panel's still source with engine.faces' live face box and landmarks, the FFHQ alignment of
the captured face. What stands in: the W+ code (the e4e fixture of ../shared/fixtures), because the
e4e weights are not on this machine. The face is scikit-image's `astronaut.png` (NASA, public domain).

Usage: docs/screenshots/shoot.sh  (runs this under xvfb-run at 1440×900)
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))


def main() -> int:
    import numpy as np
    import skimage
    from PySide6.QtWidgets import QApplication  # noqa: TID251 - drives the GUI

    from desktop.app import AppOptions, StudioApp
    from desktop.camera.sources import read_image_rgb
    from engine.api import EditState, Identity
    from engine.testing.tiny import tiny_config, write_tiny_models

    out = Path(sys.argv[1]) if len(sys.argv) > 1 else REPO / "docs" / "screenshots" / "main_window.png"
    face_path = Path(skimage.__file__).parent / "data" / "astronaut.png"
    fixture_wplus = Path(os.environ.get("WPLUS_SHARED", REPO.parent / "shared")) / "fixtures" / "e4e_expected.npy"
    tmp = Path(tempfile.mkdtemp(prefix="wplus-shot-"))
    models = Path(os.environ.get("WPLUS_TINY_MODELS", tmp / "models"))
    if not (models / "wplus_adapter.bin").is_file():
        write_tiny_models(models)
    cfg = tiny_config(models)

    def factory(_c):
        from engine.session import Session

        return Session(cfg)

    qapp = QApplication.instance() or QApplication([])
    app = StudioApp(AppOptions(models_dir=models, settings_path=tmp / "settings.ini", log_dir=tmp / "logs",
                               data_dir=tmp / "data", session_factory=factory), qapp)
    app.settings.setValue("consent/accepted", "true")
    w = app.window
    w.move(0, 0)
    w.resize(1440, 900)
    w.show()

    def pump(seconds: float, until=None) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end and not (until and until()):
            qapp.processEvents()
            time.sleep(0.01)

    pump(180, lambda: bool(app.studio.catalog))
    # the camera panel: the photo as a still source, tracked by engine.faces
    w.camera_panel.picker.addItem("astronaut.png (still)", f"file:{face_path}")
    w.camera_panel.picker.setCurrentIndex(w.camera_panel.picker.count() - 1)
    w.camera_panel.toggle.setChecked(True)
    pump(30, lambda: w.camera_panel.view.analysis is not None and w.camera_panel.view.analysis.box is not None)

    # the identity: the photo aligned by the real FFHQ recipe; W+ from the e4e fixture (see docstring)
    from engine.faces.align import align_face
    from engine.faces.detect import FaceDetector

    photo = read_image_rgb(face_path)
    box = FaceDetector().detect(photo)[0]
    aligned, _ = align_face(photo, box.landmarks)
    wplus = np.load(fixture_wplus).astype(np.float32).reshape(1, 18, 512)
    older = app.library.add(Identity("", "Model sheet", np.roll(wplus, 7, axis=2),
                                     np.ascontiguousarray(aligned[:, ::-1])))
    entry = app.library.add(Identity("", "Eileen (astronaut.png)", wplus, aligned, source=str(face_path)))
    del older
    app.studio.select_identity(entry.identity.id)
    app.studio.generation.update(prompt="portrait of a woman as an astronaut, oil painting, dramatic light",
                                 width=256, height=256, steps=12, seed=23)
    app.edits.set_state(EditState.from_mapping({}))
    for seed in (23, 24, 25):
        app.studio.generation.update(seed=seed)
        gen = app.studio.generate()
        pump(600, lambda g=gen: app.studio.shown is not None and app.studio.shown.gen == g)
    sliders = list(w.edit_panel.sliders)
    if len(sliders) >= 3:
        app.edits.set_state(EditState.from_mapping({sliders[0]: 1.5, sliders[2]: -1.0}))
    gen = app.studio.generate()
    pump(600, lambda: app.studio.shown is not None and app.studio.shown.gen == gen)
    pump(3, lambda: bool(w.result_view.likeness_label.text()))
    w.banner.dismiss()  # the StyleGAN2 preview has no weights here; its error would cover the top
    w.result_view.image.set_caption(w.result_view.image._caption + " · tiny random SD1.5 weights")
    pump(1.0)
    shot = qapp.primaryScreen().grabWindow(0, 0, 0, 1440, 900)
    out.parent.mkdir(parents=True, exist_ok=True)
    ok = shot.save(str(out), "PNG")
    print(f"saved {out}: {ok} ({shot.width()}×{shot.height()})")
    app.shutdown()
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
