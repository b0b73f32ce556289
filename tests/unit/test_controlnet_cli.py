"""`wplus generate --control … --controlnet … --lora …`: relative paths, pairs, metadata, re-render from the PNG."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from engine.cli.generate import parse_lora_arg
from engine.errors import InvalidInput
from engine.pipeline.metadata import read_metadata
from engine.testing.tiny import tiny_wplus

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def files(tiny, tmp_path_factory):
    from diffusers import UNet2DConditionModel

    from engine.networks.sd15 import load_sd15
    from engine.testing.controls import build_controlnet, write_a1111_controlnet, write_kohya_lora

    d = tmp_path_factory.mktemp("cli-controls")
    unet = UNet2DConditionModel.from_pretrained(str(tiny / "sd15" / "unet"), local_files_only=True)
    write_a1111_controlnet(d / "control_v11p_sd15_openpose.safetensors", build_controlnet(unet))
    c = load_sd15(tiny / "sd15")
    write_kohya_lora(d / "style.safetensors", c.unet, c.text_encoder)
    pose = np.zeros((64, 64, 3), np.uint8)
    pose[8:56, 30:34] = (255, 0, 0)
    pose[20:24, 10:54] = (0, 255, 0)
    Image.fromarray(pose).save(d / "pose.png")
    np.save(d / "face.npy", tiny_wplus(6))
    return d


def test_generate_with_control_and_lora_from_relative_paths(tiny, files, monkeypatch, capsys):
    from engine.cli import main

    monkeypatch.chdir(files)
    common = ["--models-dir", str(tiny), "--device", "cpu", "generate", "--wplus", "face.npy", "--steps", "2",
              "--width", "64", "--height", "64", "--quiet"]
    rc = main([*common, "--control", "pose.png", "--controlnet", "control_v11p_sd15_openpose.safetensors",
               "--control-scale", "0.7", "--control-end", "0.5", "--control-kind", "openpose",
               "--lora", "style.safetensors:0.6", "--out", "with.png"])
    assert rc == 0, capsys.readouterr().err
    rc = main([*common, "--out", "without.png"])
    assert rc == 0
    meta = read_metadata(files / "with.png")["request"]
    (c,) = meta["controls"]
    assert c["model"] == str(files / "control_v11p_sd15_openpose.safetensors")
    assert (c["scale"], c["start"], c["end"], c["kind"]) == (0.7, 0.0, 0.5, "openpose")
    assert meta["loras"][0]["path"] == str(files / "style.safetensors")
    assert meta["loras"][0]["weight"] == 0.6
    a = np.asarray(Image.open(files / "with.png").convert("RGB"))
    assert not np.array_equal(a, np.asarray(Image.open(files / "without.png").convert("RGB")))
    rc = main(["--models-dir", str(tiny), "--device", "cpu", "generate", "--from-png", "with.png", "--quiet",
               "--out", "again.png"])
    assert rc == 0
    assert np.array_equal(a, np.asarray(Image.open(files / "again.png").convert("RGB")))


def test_control_pairs_and_missing_files_are_reported(tiny, files, monkeypatch, capsys):
    from engine.cli import main

    monkeypatch.chdir(files)
    common = ["--models-dir", str(tiny), "--device", "cpu", "generate", "--steps", "1", "--width", "64",
              "--height", "64", "--quiet", "--out", "x.png"]
    assert main([*common, "--control", "pose.png"]) == 1
    assert "come in pairs" in capsys.readouterr().err
    assert main([*common, "--control", "pose.png", "--controlnet", "control_v11p_sd15_depth.safetensors"]) == 1
    assert "control_v11p_sd15_depth.safetensors" in capsys.readouterr().err
    assert main([*common, "--lora", "nothere.safetensors"]) == 1
    assert "nothere.safetensors" in capsys.readouterr().err
    assert not (files / "x.png").exists()


def test_lora_argument_weights():
    assert parse_lora_arg("a.safetensors").weight == 1.0
    spec = parse_lora_arg("dir/a.safetensors:0.5")
    assert spec.path.endswith("dir/a.safetensors")
    assert spec.weight == 0.5
    assert spec.text_weight is None
    spec = parse_lora_arg("C:/loras/a.safetensors:0.5:0.25")
    assert spec.path.endswith("C:/loras/a.safetensors")
    assert (spec.weight, spec.text_weight) == (0.5, 0.25)
    with pytest.raises(InvalidInput):
        parse_lora_arg(":0.5")
