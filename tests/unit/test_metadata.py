"""PNG metadata: A1111 text + W+ Studio JSON; a saved PNG regenerates the identical image; atomic output;
and the `wplus generate` / `wplus info` commands on tiny models."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from engine.api import EditState, GenerateRequest, Scheduler
from engine.errors import InvalidInput
from engine.pipeline.generate import WPlusPipeline
from engine.pipeline.metadata import CHUNK_KEY, read_metadata, read_request, save_png
from engine.testing.tiny import tiny_wplus

pytestmark = pytest.mark.usefixtures("one_torch_thread")




@pytest.fixture(scope="module")
def pipe(tiny):
    return WPlusPipeline.from_files(tiny / "sd15", tiny / "wplus_adapter.bin", device="cpu", dtype="float32")


REQ = GenerateRequest(prompt="a woman wearing a spacesuit", seed=31, steps=3, scheduler=Scheduler.DPMPP_2M_KARRAS,
                      guidance=6.5, scale=0.8, start_ratio=34.0, width=64, height=72, n=2, freeu=True,
                      wplus=tiny_wplus(4), edits=EditState.from_mapping({"smile": 1.5, "age": -2.0}),
                      identity_name="Ada")


def test_png_metadata_regenerates_the_identical_image(pipe, tmp_path):
    edited = REQ.wplus + 0.1  # what the session would pass after applying the edits
    result = pipe.render(REQ, edited_wplus=edited)
    path = save_png(tmp_path / "out-1.png", result.images[1], result, 1)
    with Image.open(path) as im:
        assert im.text["parameters"].startswith("a woman wearing a spacesuit\nNegative prompt: monochrome")
        assert "Steps: 3, Sampler: DPM++ 2M Karras, CFG scale: 6.5, Seed: 32, Size: 64x72" in im.text["parameters"]
        pixels = np.asarray(im.convert("RGB"))
    assert np.array_equal(pixels, result.images[1])

    req = read_request(path)
    assert req.seed == 32
    assert req.n == 1
    assert req.edits == REQ.edits
    assert req.identity_name == "Ada"
    assert np.array_equal(req.wplus, REQ.wplus)  # the unedited W+ round-trips exactly
    for field in ("prompt", "negative_prompt", "steps", "guidance", "scheduler", "scale", "start_ratio", "width",
                  "height", "freeu"):
        assert getattr(req, field) == getattr(REQ, field), field
    meta = read_metadata(path)
    assert meta["variation"] == {"index": 1, "base_seed": 31, "of": 2}
    assert meta["models"] == dict(result.model_hashes)
    assert any(k.startswith("adapter:") for k in meta["models"])
    again = pipe.render(req, edited_wplus=edited)
    assert np.array_equal(again.images[0], pixels)


def test_png_without_our_chunk_is_refused_clearly(tmp_path):
    p = tmp_path / "plain.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(p)
    with pytest.raises(InvalidInput, match="no W\\+ Studio metadata") as err:
        read_request(p)
    assert "plain.png" in err.value.user_message


def test_failed_save_leaves_no_partial_file(pipe, tmp_path):
    result = pipe.render(REQ.replace(n=1, steps=2))
    target = tmp_path / "keep.png"
    save_png(target, result.images[0], result, 0)
    before = target.read_bytes()
    with pytest.raises(InvalidInput):
        save_png(target, result.images[0].astype(np.float32), result, 0)
    with pytest.raises(InvalidInput):
        save_png(tmp_path / "new.png", result.images[0][..., :2], result, 0)
    assert target.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.png"]


def test_cli_generate_variations_and_from_png(tiny, tmp_path, capsys):
    from engine.cli import main

    np.save(tmp_path / "face.npy", tiny_wplus(6))
    common = ["--models-dir", str(tiny), "--device", "cpu"]
    rc = main([*common, "generate", "--wplus", str(tmp_path / "face.npy"), "--prompt", "a photo", "--seed", "4",
               "--steps", "2", "--width", "64", "--height", "64", "--n", "2", "--scheduler", "euler_a", "--quiet",
               "--out", str(tmp_path / "img.png")])
    assert rc == 0
    outs = [tmp_path / "img-0.png", tmp_path / "img-1.png"]
    assert capsys.readouterr().out.split() == [str(p) for p in outs]
    meta = read_metadata(outs[1])
    assert meta["request"]["seed"] == 5
    assert meta["request"]["identity_name"] == "face"
    rc = main([*common, "generate", "--from-png", str(outs[1]), "--quiet", "--out", str(tmp_path / "again.png")])
    assert rc == 0
    a = np.asarray(Image.open(outs[1]).convert("RGB"))
    b = np.asarray(Image.open(tmp_path / "again.png").convert("RGB"))
    assert np.array_equal(a, b)


def test_cli_generate_reports_user_errors(tiny, tmp_path, capsys):
    from engine.cli import main

    bad = tiny_wplus(0)
    bad[0, 0, 0] = np.nan
    np.save(tmp_path / "bad.npy", bad)
    rc = main(["--models-dir", str(tiny), "--device", "cpu", "generate", "--wplus", str(tmp_path / "bad.npy"),
               "--steps", "2", "--width", "64", "--height", "64", "--out", str(tmp_path / "x.png")])
    assert rc == 1
    assert "NaN" in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists()
    rc = main(["--models-dir", str(tmp_path / "empty"), "--device", "cpu", "generate", "--steps", "2",
               "--out", str(tmp_path / "y.png")])
    assert rc == 1
    assert "missing" in capsys.readouterr().err.lower()


def test_cli_info_lists_versions_backends_and_models(tiny, capsys):
    from engine.cli import main

    assert main(["--models-dir", str(tiny), "info"]) == 0
    out = capsys.readouterr().out
    assert "torch" in out
    assert "diffusers" in out
    assert "Device:" in out
    assert str(tiny) in out
    assert CHUNK_KEY not in out
