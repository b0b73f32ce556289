"""`wplus restore` and the `--restore` options of `wplus encode`/`wplus generate`."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from engine.cli import main


@pytest.fixture(scope="module")
def rule_psfrgan(tmp_path_factory):
    from engine.testing.official_files import write_official_psfrgan

    return write_official_psfrgan(tmp_path_factory.mktemp("psfr") / "psfrgan_epoch15_net_G.pth")


def test_restore_with_a_parse_map_reproduces_the_official_output(tmp_path, monkeypatch, rule_psfrgan, fixtures_dir,
                                                                  capsys):
    torch.set_num_threads(min(2, torch.get_num_threads()))
    work = tmp_path / "work"
    work.mkdir()
    shutil.copy(rule_psfrgan, work / "G.pth")
    shutil.copy(fixtures_dir / "align_caseA_expected.png", work / "face.png")
    np.save(work / "map.npy", np.load(fixtures_dir / "psfr_A_input_parse.npy")[0])  # 512×512 uint8
    monkeypatch.chdir(work)  # user paths are relative to the current directory
    code = main(["--models-dir", str(tmp_path / "empty_models"), "--device", "cpu", "restore", "face.png",
                 "-o", "out.png", "--psfrgan", "G.pth", "--parse-map", "map.npy", "--raw", "raw.npy"])
    assert code == 0, capsys.readouterr().err
    assert "out.png" in capsys.readouterr().out
    raw = np.load(work / "raw.npy")
    assert raw.shape == (1, 3, 512, 512)
    assert raw.dtype == np.float32
    center = np.load(fixtures_dir / "psfr_A_center128_expected.npy")
    assert np.abs(raw[:, :, 192:320, 192:320] - center).max() <= 1e-4
    assert raw.max() > 1.5  # before clipping
    got = np.asarray(Image.open(work / "out.png").convert("RGB")).astype(int)
    expected = np.asarray(Image.open(fixtures_dir / "psfr_A_expected.png").convert("RGB")).astype(int)
    assert np.abs(got - expected).max() <= 1


def test_restore_without_the_file_says_which_and_where(tmp_path, fixtures_dir, capsys):
    code = main(["--models-dir", str(tmp_path), "restore", str(fixtures_dir / "align_caseA_expected.png"),
                 "-o", str(tmp_path / "o.png")])
    err = capsys.readouterr().err
    assert code == 1
    assert "psfrgan_epoch15_net_G.pth" in err
    assert str(tmp_path / "psfrgan_epoch15_net_G.pth") in err
    assert "hint:" in err
    assert "--psfrgan" in err
    assert not (tmp_path / "o.png").exists()


def test_restore_without_parser_or_map_names_the_parser(tmp_path, rule_psfrgan, fixtures_dir, capsys):
    code = main(["--models-dir", str(tmp_path), "restore", str(fixtures_dir / "align_caseA_expected.png"),
                 "-o", str(tmp_path / "o.png"), "--psfrgan", str(rule_psfrgan)])
    err = capsys.readouterr().err
    assert code == 1
    assert "parse_multi_iter_90000.pth" in err
    assert "--parse-map" in err


def test_restore_refuses_a_bad_parse_map(tmp_path, rule_psfrgan, fixtures_dir, capsys):
    np.save(tmp_path / "bad.npy", np.full((512, 512), 40, np.uint8))
    code = main(["--models-dir", str(tmp_path), "restore", str(fixtures_dir / "align_caseA_expected.png"),
                 "-o", str(tmp_path / "o.png"), "--psfrgan", str(rule_psfrgan), "--parse-map", str(tmp_path / "bad.npy")])
    assert code == 1
    assert "classes 0–18" in capsys.readouterr().err


def test_encode_restore_without_the_file_says_which_and_where(tmp_path, fixtures_dir, capsys):
    (tmp_path / "e4e_ffhq_encode.pt").write_bytes(b"unused: restoration is checked first")
    code = main(["--models-dir", str(tmp_path), "encode", "--aligned", "--restore",
                 str(fixtures_dir / "align_caseA_expected.png"), "-o", str(tmp_path / "w.npy")])
    err = capsys.readouterr().err
    assert code == 1
    assert str(tmp_path / "psfrgan_epoch15_net_G.pth") in err
    assert not (tmp_path / "w.npy").exists()


def test_generate_restore_needs_an_image(tmp_path, capsys):
    np.save(tmp_path / "w.npy", np.zeros((1, 18, 512), np.float32))
    code = main(["--models-dir", str(tmp_path), "generate", "--wplus", str(tmp_path / "w.npy"), "--restore",
                 "--out", str(tmp_path / "o.png")])
    assert code == 1
    assert "--restore applies to --image" in capsys.readouterr().err


def test_help_lists_restore(capsys):
    with pytest.raises(SystemExit):
        main(["restore", "--help"])
    out = capsys.readouterr().out
    assert "--parse-map" in out
    assert "--raw" in out
    assert "--psfrgan" in out


def test_manifest_lists_psfrgan_as_an_optional_model(tmp_path):
    from engine.config import EngineConfig
    from engine.models.manifest import load_manifest
    from engine.models.verify import check_models

    entry = load_manifest().by_role("restorer")
    assert entry is not None
    assert (entry.id, entry.path, entry.converted) == (
        "psfrgan", "psfrgan_epoch15_net_G.pth", "psfrgan_epoch15_net_G.safetensors")
    assert entry.required is False
    assert "CC BY-NC-SA 4.0" in entry.licence
    assert entry.approx_size == 184_000_000
    assert "PSFRGAN" in entry.source_url
    states = {s.role: s for s in check_models(EngineConfig(models_dir=tmp_path))}
    assert states["restorer"].required is False
    assert states["restorer"].status.name == "MISSING"
