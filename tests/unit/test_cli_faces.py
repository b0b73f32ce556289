"""`wplus align`, `wplus likeness` and `wplus encode` error paths, through the real dispatcher."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from engine.cli import main

skimage_data = pytest.importorskip("skimage.data")


@pytest.fixture(scope="module")
def photo(tmp_path_factory):
    p = tmp_path_factory.mktemp("photos") / "astronaut.png"
    Image.fromarray(skimage_data.astronaut()).save(p)
    return p


def test_align_writes_the_official_512_crop(photo, tmp_path, capsys):
    from engine.faces.align import align_face
    from engine.faces.detect import FaceDetector

    out = tmp_path / "aligned.png"
    assert main(["align", str(photo), "-o", str(out)]) == 0
    assert "1 face(s) found" in capsys.readouterr().out
    img = np.asarray(Image.open(out))
    assert img.shape == (512, 512, 3)
    src = skimage_data.astronaut()
    expected, _ = align_face(src, FaceDetector().detect(src)[0].landmarks)
    assert np.array_equal(img, expected)


def test_align_errors(photo, tmp_path, capsys):
    blank = tmp_path / "blank.png"
    Image.fromarray(np.full((200, 200, 3), 127, np.uint8)).save(blank)
    assert main(["align", str(blank), "-o", str(tmp_path / "x.png")]) == 1
    err = capsys.readouterr().err
    assert "No face was found" in err
    assert "hint:" in err
    assert main(["align", str(photo), "-o", str(tmp_path / "x.png"), "--face", "2"]) == 1
    assert "has 1 face" in capsys.readouterr().err
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(b"\xff\xd8\xff garbage")
    assert main(["align", str(corrupt), "-o", str(tmp_path / "x.png")]) == 1
    assert "error:" in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists()


def test_likeness_prints_distance_and_meaning(photo, tmp_path, capsys):
    aligned = tmp_path / "a.png"
    assert main(["align", str(photo), "-o", str(aligned)]) == 0
    capsys.readouterr()
    assert main(["likeness", str(aligned), str(photo)]) == 0
    out = capsys.readouterr().out
    d = float(out.split()[0])
    assert 0 <= d < 0.6
    assert "same person" in out


def test_encode_without_e4e_says_where_it_is_expected(photo, tmp_path, capsys):
    code = main(["--models-dir", str(tmp_path), "encode", str(photo), "-o", str(tmp_path / "w.npy")])
    assert code == 1
    err = capsys.readouterr().err
    assert "e4e face encoder is missing" in err
    assert "hint:" in err
    assert not (tmp_path / "w.npy").exists()


@pytest.mark.slow
def test_encode_full_chain_with_rule_models(photo, tmp_path, fixtures_dir, capsys):
    """Full-size rule-weight e4e + ParseNet through the CLI (≈1–2 min on 2 cores)."""
    import json

    import torch

    from engine.testing.official_files import write_official_e4e
    from engine.testing.wbn import rule_state_dict

    keys = json.loads((fixtures_dir / "e4e_manifest.json").read_text())["keys"]
    e4e = write_official_e4e(tmp_path / "e4e.pt", {e["key"]: tuple(e["shape"]) for e in keys})
    pn = json.loads((fixtures_dir / "parsenet_manifest.json").read_text())["keys"]
    torch.save(rule_state_dict({e["key"]: e["shape"] for e in pn}), tmp_path / "parser.pth")
    out = tmp_path / "w.npy"
    code = main(["--models-dir", str(tmp_path), "--device", "cpu", "encode", "--e4e", str(e4e),
                 "--parser", str(tmp_path / "parser.pth"), str(photo), "-o", str(out),
                 "--save-aligned", str(tmp_path / "al.png")])
    assert code == 0
    assert "whitened: yes" in capsys.readouterr().out
    w = np.load(out)
    assert w.shape == (1, 18, 512)
    assert np.isfinite(w).all()
