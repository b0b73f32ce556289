"""The GUI and the CLI read a photo the same way and give the same W+ for it.

GUI path: the desktop's file decode (`EngineClient.load_image` on its I/O thread, or a still-image camera
source) → the real engine session opened by the bridge → `encode`. CLI path: `wplus encode PHOTO -o W.npy`.
"""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from engine.images import load_image


@pytest.fixture
def sideways_photo(tmp_path, astronaut):
    """The astronaut stored rotated, with the EXIF orientation tag that stands it upright (as phones do)."""
    p = tmp_path / "phone.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display"
    Image.fromarray(np.ascontiguousarray(np.rot90(astronaut, 1))).save(p, quality=95, exif=exif)
    return p


def _gui_decode(qtbot, path):
    from desktop.engine_client import EngineClient
    from engine.config import EngineConfig
    from tests.qt.fakes import FakeSession

    client = EngineClient(EngineConfig(models_dir=path.parent / "models"), lambda _cfg: FakeSession())
    client.start()
    try:
        with qtbot.waitSignal(client.image_loaded, timeout=20_000) as got:
            client.load_image(path)
        return got.args[1]
    finally:
        client.close()


def test_the_gui_decodes_a_photo_to_the_pixels_the_cli_reads(qtbot, sideways_photo, tmp_path):
    from desktop.camera.sources import StillSource

    gui = _gui_decode(qtbot, sideways_photo)
    cli = load_image(sideways_photo)  # what `wplus encode` reads
    assert gui.shape == cli.shape == (512, 512, 3)  # upright: EXIF honoured on both paths
    np.testing.assert_array_equal(gui, cli)
    np.testing.assert_array_equal(StillSource(sideways_photo, fps=0).read(), cli)
    # one pixel limit: what the engine refuses, the GUI refuses with the same message
    from engine.errors import ImageUnreadable

    big = tmp_path / "big.png"
    Image.new("L", (12_000, 9_000)).save(big)  # 108 MP > the engine's 100 MP limit
    with pytest.raises(ImageUnreadable, match="megapixel limit"):
        StillSource(big)


@pytest.mark.slow
def test_gui_and_cli_give_the_same_wplus_for_the_same_photo(qtbot, sideways_photo, tmp_path):
    """Full-size e4e with rule weights (a 1.07 GB encoder-only safetensors file): ≈1 min on 2 cores."""
    import torch
    from safetensors.torch import save_file

    from desktop.engine_client import EngineClient
    from engine.cli import main
    from engine.config import EngineConfig
    from engine.networks.e4e import e4e_layout
    from engine.testing.official_files import rule_tensors

    models = tmp_path / "models"
    models.mkdir()
    shapes = {f"encoder.{k}": s for k, s in e4e_layout().items()}
    shapes["latent_avg"] = (18, 512)
    tensors = rule_tensors(shapes, stylegan_file=True)
    save_file(tensors, str(models / "e4e_ffhq_encode.safetensors"), metadata={"wplus_layout": "e4e"})
    del tensors
    torch.set_num_threads(min(2, torch.get_num_threads()))

    client = EngineClient(EngineConfig(models_dir=models, device="cpu"))  # the real session factory
    client.start()
    try:
        pixels = _gui_decode(qtbot, sideways_photo)
        with qtbot.waitSignal(client.identity_ready, timeout=300_000) as got:
            client.encode(pixels, name="phone")
        gui_wplus = got.args[1].wplus
    finally:
        client.close()

    out = tmp_path / "w.npy"
    assert main(["--models-dir", str(models), "--device", "cpu", "encode", str(sideways_photo), "-o", str(out)]) == 0
    cli_wplus = np.load(out)
    assert gui_wplus.shape == cli_wplus.shape == (1, 18, 512)
    assert np.isfinite(cli_wplus).all()
    np.testing.assert_array_equal(gui_wplus, cli_wplus)
