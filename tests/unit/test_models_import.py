"""Importing model files from a folder or a .zip: by official name, by folder layout, by sha256."""

from __future__ import annotations

import hashlib
import json
import struct
import zipfile
from pathlib import Path

import pytest

from engine.api import ModelStatus
from engine.cancel import CancelToken
from engine.config import EngineConfig
from engine.errors import Cancelled, EngineError
from engine.models.importer import import_models
from engine.models.manifest import load_manifest
from engine.models.verify import HASHES_FILE, HashCache, check_models

ADAPTER = b"adapter weights " * 64
ADAPTER_SHA = hashlib.sha256(ADAPTER).hexdigest()
PARSER = b"parser weights " * 64


def manifest(tmp_path: Path) -> object:
    p = tmp_path / "models.toml"
    p.write_text(
        f"""
schema = 1
[[model]]
id = "sd15"
role = "sd15"
kind = "sd15"
path = "sd15"
required = true
aliases = ["v1-5-pruned-emaonly.safetensors"]
min_size = 64
[[model]]
id = "vae"
role = "vae"
kind = "diffusers"
path = "vae/sd-vae-ft-mse"
[[model]]
id = "adapter"
role = "adapter"
kind = "file"
path = "wplus_adapter.bin"
required = true
min_size = 100
sha256 = "{ADAPTER_SHA}"
[[model]]
id = "parser"
role = "parser"
kind = "file"
path = "parse_multi_iter_90000.pth"
converted = "parse_multi_iter_90000.safetensors"
required = true
[[model]]
id = "e4e"
role = "e4e"
kind = "file"
path = "e4e_ffhq_encode.pt"
converted = "e4e_ffhq_encode.safetensors"
required = true
"""
    )
    return load_manifest(p)


def safetensors_bytes(n: int = 32) -> bytes:
    header = json.dumps({"w": {"dtype": "F32", "shape": [n], "data_offsets": [0, 4 * n]}}).encode()
    return struct.pack("<Q", len(header)) + header + bytes(range(256)) * (4 * n // 256) + b"\x01" * (4 * n % 256)


def make_sd15_folder(root: Path) -> None:
    (root / "model_index.json").parent.mkdir(parents=True, exist_ok=True)
    (root / "model_index.json").write_text("{}")
    for comp, weights in (("unet", "diffusion_pytorch_model.safetensors"), ("vae", "diffusion_pytorch_model.safetensors"),
                          ("text_encoder", "model.safetensors")):
        (root / comp).mkdir()
        (root / comp / "config.json").write_text(json.dumps({"c": comp}))
        (root / comp / weights).write_bytes(safetensors_bytes())
    (root / "scheduler").mkdir()
    (root / "scheduler" / "scheduler_config.json").write_text("{}")


def test_folder_with_official_names(tmp_path):
    import torch

    man = manifest(tmp_path)
    src = tmp_path / "usb"
    (src / "weights").mkdir(parents=True)
    (src / "wplus_adapter.bin").write_bytes(ADAPTER)
    torch.save({"conv.weight": torch.ones(2, 3)}, src / "weights" / "parse_multi_iter_90000.pth")
    make_sd15_folder(src / "stable-diffusion-v1-5")
    (src / "sd-vae-ft-mse").mkdir()
    (src / "sd-vae-ft-mse" / "config.json").write_text("{}")
    (src / "sd-vae-ft-mse" / "diffusion_pytorch_model.safetensors").write_bytes(safetensors_bytes())
    (src / "holiday.jpg").write_bytes(b"\xff\xd8 not a model")
    models = tmp_path / "models"

    report = import_models(src, models, manifest=man)

    assert set(report.found_ids) == {"adapter", "parser", "sd15", "vae"}
    assert (models / "wplus_adapter.bin").read_bytes() == ADAPTER
    assert (models / "sd15" / "stable-diffusion-v1-5" / "unet" / "config.json").is_file()
    assert (models / "vae" / "sd-vae-ft-mse" / "diffusion_pytorch_model.safetensors").is_file()
    assert not (models / "holiday.jpg").exists()
    assert report.missing == ("e4e",)
    assert [(i, p.name) for i, p in report.converted] == [("parser", "parse_multi_iter_90000.safetensors")]
    from safetensors.torch import load_file

    assert torch.equal(load_file(models / "parse_multi_iter_90000.safetensors")["conv.weight"], torch.ones(2, 3))
    by = {f.entry_id: f.recognised_by for f in report.imported}
    assert by["adapter"] == "name"
    assert by["sd15"] == "folder"
    assert by["vae"] == "folder"
    assert "still missing (required): e4e" in report.lines()

    st = {s.id: s for s in check_models(EngineConfig(models_dir=models), manifest=man, verify=False)}
    assert st["adapter"].status == ModelStatus.OK
    assert "sha256 verified" in st["adapter"].message
    assert st["parser"].status == ModelStatus.OK
    assert "converted copy in use" in st["parser"].message
    assert st["sd15"].status == ModelStatus.OK
    assert st["vae"].status == ModelStatus.OK
    rec = HashCache(models).recorded(models / "parse_multi_iter_90000.pth")
    assert rec is not None
    assert rec[2] == "import"


def test_renamed_file_is_recognised_by_its_published_hash(tmp_path):
    man = manifest(tmp_path)
    src = tmp_path / "downloads"
    src.mkdir()
    (src / "wplus_adapter (1).bin").write_bytes(ADAPTER)
    (src / "other.bin").write_bytes(b"x" * len(ADAPTER))
    report = import_models(src, tmp_path / "models", manifest=man, convert=False)
    [f] = report.imported
    assert f.entry_id == "adapter"
    assert f.recognised_by == "sha256"
    assert f.action == "copied"
    assert (tmp_path / "models" / "wplus_adapter.bin").read_bytes() == ADAPTER


def test_renamed_file_is_recognised_by_a_recorded_hash_of_another_models_folder(tmp_path):
    man = manifest(tmp_path)
    first = tmp_path / "workstation-a"
    first.mkdir()
    (first / "e4e_ffhq_encode.pt").write_bytes(b"e4e pickle " * 40)
    check_models(EngineConfig(models_dir=first), manifest=man)  # records the hash
    # on the USB copy the file was renamed; the folder's record travels with it
    usb = tmp_path / "usb"
    usb.mkdir()
    (usb / "e4e.pt").write_bytes((first / "e4e_ffhq_encode.pt").read_bytes())
    (usb / HASHES_FILE).write_bytes((first / HASHES_FILE).read_bytes())
    report = import_models(usb, tmp_path / "models", manifest=man, convert=False)
    [f] = report.imported
    assert (f.entry_id, f.recognised_by, f.dest.name) == ("e4e", "sha256", "e4e_ffhq_encode.pt")


def test_zip_with_names_and_hashes(tmp_path):
    man = manifest(tmp_path)
    archive = tmp_path / "models.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("bundle/renamed-adapter.bin", ADAPTER)
        zf.writestr("bundle/parse_multi_iter_90000.safetensors", safetensors_bytes())
        zf.writestr("bundle/sd15/v1-5-pruned-emaonly.safetensors", safetensors_bytes(64))
        zf.writestr("../../evil/e4e_ffhq_encode.pt", b"never extracted")
    models = tmp_path / "models"
    report = import_models(archive, models, manifest=man, link=True)
    got = {f.entry_id: (f.recognised_by, f.action) for f in report.imported}
    assert got == {"adapter": ("sha256", "extracted"), "parser": ("name", "extracted"), "sd15": ("name", "extracted")}
    assert (models / "sd15" / "v1-5-pruned-emaonly.safetensors").is_file()
    assert (models / "parse_multi_iter_90000.safetensors").is_file()
    assert not (tmp_path / "evil").exists()
    assert not (models / "e4e_ffhq_encode.pt").exists()
    assert report.converted == ()  # the safetensors copy came in directly


def test_link_mode_hard_links(tmp_path):
    man = manifest(tmp_path)
    src = tmp_path / "src"
    src.mkdir()
    (src / "wplus_adapter.bin").write_bytes(ADAPTER)
    report = import_models(src, tmp_path / "models", manifest=man, link=True, convert=False)
    [f] = report.imported
    assert f.action == "hard-linked"
    assert (tmp_path / "models" / "wplus_adapter.bin").stat().st_ino == (src / "wplus_adapter.bin").stat().st_ino


def test_damaged_files_are_refused_and_not_placed(tmp_path):
    man = manifest(tmp_path)
    src = tmp_path / "src"
    src.mkdir()
    (src / "wplus_adapter.bin").write_bytes(ADAPTER[:-1] + b"?")  # wrong hash
    (src / "parse_multi_iter_90000.safetensors").write_bytes(safetensors_bytes()[:-7])  # truncated
    (src / "e4e_ffhq_encode.pt").write_bytes(b"")
    models = tmp_path / "models"
    report = import_models(src, models, manifest=man)
    assert report.imported == ()
    reasons = dict((Path(s).name, r) for s, r in report.rejected)
    assert "does not match the published" in reasons["wplus_adapter.bin"]
    assert "incomplete download" in reasons["parse_multi_iter_90000.safetensors"]
    assert not (models / "wplus_adapter.bin").exists()
    assert not (models / "parse_multi_iter_90000.safetensors").exists()
    assert not [p for p in models.rglob("*") if "import-part" in p.name]
    assert any(line.startswith("refused:") for line in report.lines())


def test_second_import_finds_files_already_present(tmp_path):
    man = manifest(tmp_path)
    src = tmp_path / "src"
    src.mkdir()
    (src / "wplus_adapter.bin").write_bytes(ADAPTER)
    import_models(src, tmp_path / "models", manifest=man)
    report = import_models(src, tmp_path / "models", manifest=man)
    assert [f.action for f in report.imported] == ["already present"]


def test_replaced_file_goes_to_quarantine(tmp_path):
    man = manifest(tmp_path)
    models = tmp_path / "models"
    models.mkdir()
    (models / "e4e_ffhq_encode.pt").write_bytes(b"old e4e")
    src = tmp_path / "src"
    src.mkdir()
    (src / "e4e_ffhq_encode.pt").write_bytes(b"new e4e bytes")
    import_models(src, models, manifest=man, convert=False)
    assert (models / "e4e_ffhq_encode.pt").read_bytes() == b"new e4e bytes"
    kept = [p for p in (models / ".quarantine").iterdir() if not p.name.endswith(".txt")]
    assert [p.read_bytes() for p in kept] == [b"old e4e"]


def test_cancel_leaves_no_partial_file(tmp_path):
    man = manifest(tmp_path)
    src = tmp_path / "src"
    src.mkdir()
    (src / "wplus_adapter.bin").write_bytes(ADAPTER)
    token = CancelToken()
    token.cancel()
    with pytest.raises(Cancelled):
        import_models(src, tmp_path / "models", manifest=man, token=token)
    assert not (tmp_path / "models" / "wplus_adapter.bin").exists()
    assert not list((tmp_path / "models").glob(".*import-part"))


def test_bad_sources_are_clear_errors(tmp_path):
    man = manifest(tmp_path)
    with pytest.raises(EngineError, match="does not exist"):
        import_models(tmp_path / "nope", tmp_path / "models", manifest=man)
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(EngineError, match=r"neither a folder nor a \.zip"):
        import_models(tmp_path / "notes.txt", tmp_path / "models", manifest=man)


def test_unsafe_pickle_is_quarantined_not_converted(tmp_path):
    import pickle

    man = manifest(tmp_path)
    src = tmp_path / "src"
    src.mkdir()

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    (src / "parse_multi_iter_90000.pth").write_bytes(pickle.dumps({"x": Evil()}, protocol=2))
    report = import_models(src, tmp_path / "models", manifest=man)
    assert report.imported == ()
    [(where, why)] = report.rejected
    assert where.endswith("parse_multi_iter_90000.pth")
    assert "refused for safety and moved to" in why
    models = tmp_path / "models"
    assert not (models / "parse_multi_iter_90000.safetensors").exists()
    assert not (models / "parse_multi_iter_90000.pth").exists()
    assert len(list((models / ".quarantine").glob("parse_multi_iter_90000.pth.*[0-9]"))) == 1
    assert "parser" in report.missing


def test_sd15_pickles_are_converted_into_converted_on_import_and_reused_by_loads(tmp_path, monkeypatch):
    import torch

    from engine.models.service import ModelService

    man = manifest(tmp_path)
    src = tmp_path / "usb"
    (src / "sd15").mkdir(parents=True)
    ckpt_state = {"model.diffusion_model.x": torch.arange(40.0), "cond_stage_model.transformer.y": torch.ones(3)}
    torch.save({"state_dict": ckpt_state, "global_step": 1}, src / "sd15" / "mine.ckpt")
    vae = src / "sd-vae-ft-mse"
    vae.mkdir()
    (vae / "config.json").write_text("{}")
    torch.save({"decoder.w": torch.arange(50.0)}, vae / "diffusion_pytorch_model.bin")
    models = tmp_path / "models"
    report = import_models(src, models, manifest=man)
    assert report.rejected == ()
    assert (models / "sd15" / "mine.ckpt").is_file()  # the user's file is kept as it came
    converted = dict(report.converted)
    assert converted["sd15"].name == "mine.safetensors"
    assert converted["sd15"].parent.parent == models / ".converted"
    assert converted["vae"].name == "sd-vae-ft-mse"
    assert (converted["vae"] / "diffusion_pytorch_model.safetensors").is_file()
    assert (converted["vae"] / "config.json").read_text() == "{}"
    from engine.models.safe_load import load_state

    got = load_state(converted["sd15"])
    assert set(got) == set(ckpt_state)
    for k, v in ckpt_state.items():
        assert torch.equal(got[k], v)

    def refuse(*_a, **_k):
        raise AssertionError("torch.load was called after the import converted the file")

    monkeypatch.setattr(torch, "load", refuse)
    service = ModelService(EngineConfig(models_dir=models))
    assert service.runtime_path("sd15") == converted["sd15"]
    assert service.optional_runtime_path("vae") == converted["vae"]


def test_diffusers_folder_of_bin_weights_is_converted_on_import(tmp_path):
    import torch

    man = manifest(tmp_path)
    src = tmp_path / "usb"
    make_sd15_folder(src / "old-sd15")
    for comp, st_name, bin_name in (("unet", "diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin"),
                                    ("text_encoder", "model.safetensors", "pytorch_model.bin")):
        (src / "old-sd15" / comp / st_name).unlink()
        torch.save({"w": torch.arange(20.0)}, src / "old-sd15" / comp / bin_name)
    models = tmp_path / "models"
    report = import_models(src, models, manifest=man)
    [(entry_id, out)] = report.converted
    assert entry_id == "sd15"
    assert out.name == "old-sd15"
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*.safetensors")) == [
        "text_encoder/model.safetensors", "unet/diffusion_pytorch_model.safetensors",
        "vae/diffusion_pytorch_model.safetensors"]
    assert (models / "sd15" / "old-sd15" / "unet" / "diffusion_pytorch_model.bin").is_file()
