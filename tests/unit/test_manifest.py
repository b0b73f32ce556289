"""The model manifest, models-folder resolution, locating, and the checks of what the folder holds."""

from __future__ import annotations

import hashlib
import json
import os
import struct
import sys
import zipfile
from pathlib import Path

import pytest

from engine.api import ModelStatus
from engine.config import EngineConfig
from engine.errors import EngineError, ModelMissing
from engine.models.folder import resolve_models_dir
from engine.models.locate import bundled_file, find_model, sd15_candidates
from engine.models.manifest import load_manifest, parse_manifest
from engine.models.service import ModelService
from engine.models.verify import HASHES_FILE, HashCache, check_models, safetensors_problem

KNOWN = b"known adapter bytes " * 50
KNOWN_SHA = hashlib.sha256(KNOWN).hexdigest()


def small_manifest(tmp_path: Path, *, adapter_sha: str = KNOWN_SHA) -> Path:
    text = f"""
schema = 1
[[model]]
id = "sd15"
role = "sd15"
kind = "sd15"
path = "sd15"
required = true
min_size = 64
[[model]]
id = "vae"
role = "vae"
kind = "diffusers"
path = "vae/sd-vae-ft-mse"
[[model]]
id = "e4e"
role = "e4e"
kind = "file"
path = "e4e_ffhq_encode.pt"
converted = "e4e_ffhq_encode.safetensors"
required = true
min_size = 100
[[model]]
id = "adapter"
role = "adapter"
kind = "file"
path = "wplus_adapter.bin"
required = true
sha256 = "{adapter_sha}"
[[model]]
id = "landmarks"
role = "landmarks"
kind = "bundled"
path = "shape_predictor_68_face_landmarks.dat"
required = true
"""
    p = tmp_path / "models.toml"
    p.write_text(text)
    return p


def write_safetensors(path: Path, n_floats: int = 16, *, truncate: int = 0) -> None:
    header = json.dumps({"w": {"dtype": "F32", "shape": [n_floats], "data_offsets": [0, 4 * n_floats]}}).encode()
    data = struct.pack("<Q", len(header)) + header + b"\x00" * (4 * n_floats)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data[: len(data) - truncate])


def states(models: Path, manifest: Path, **kw) -> dict[str, object]:
    return {s.id: s for s in check_models(EngineConfig(models_dir=models), manifest=load_manifest(manifest), **kw)}


# -- the shipped manifest ---------------------------------------------------------------------------------


def test_shipped_manifest_lists_every_runtime_file():
    man = load_manifest()
    ids = {e.id: e for e in man}
    assert {"sd15", "sd-vae-ft-mse", "e4e", "wplus-adapter", "wplus-adapter-stage1", "parsenet", "dlib-landmarks68"} <= set(ids)
    # the parser only whitens the background: capture, encoding and generation work without it (issue 14)
    assert {e.id for e in man if e.required} == {"sd15", "e4e", "wplus-adapter", "dlib-landmarks68"}
    assert ids["e4e"].path == "e4e_ffhq_encode.pt"
    assert ids["e4e"].converted == "e4e_ffhq_encode.safetensors"
    assert ids["wplus-adapter"].path == "wplus_adapter.bin"
    assert ids["parsenet"].path == "parse_multi_iter_90000.pth"
    for e in man:
        assert e.licence, e.id
        assert e.source_url, e.id
        if e.kind != "bundled":
            assert e.downloads, e.id
    release = "https://github.com/csxmli2016/w-plus-adapter/releases/download/v1/"
    assert ids["e4e"].url == release + "e4e_ffhq_encode.pt"
    assert ids["wplus-adapter"].url == release + "wplus_adapter.bin"
    assert ids["wplus-adapter-stage1"].url == release + "wplus_adapter_stage1.bin"
    assert ids["sd15"].downloads[0].url.startswith("https://huggingface.co/")
    assert [d.rel_path for d in ids["sd-vae-ft-mse"].downloads] == [
        "vae/sd-vae-ft-mse/config.json", "vae/sd-vae-ft-mse/diffusion_pytorch_model.safetensors",
    ]
    assert "non-commercial" in ids["wplus-adapter"].licence
    assert "MIT" in ids["sd-vae-ft-mse"].licence


def test_bundled_dlib_models_are_found_without_importing_their_package():
    sys.modules.pop("face_recognition_models", None)
    p = bundled_file("shape_predictor_68_face_landmarks.dat")
    assert p is not None
    assert p.stat().st_size > 90_000_000
    assert "face_recognition_models" not in sys.modules
    assert bundled_file("no_such_model.dat") is None


@pytest.mark.parametrize(
    ("patch", "message"),
    [
        ({"model": [{"id": "a", "role": "r", "kind": "file", "path": "a"}] * 2}, "appears twice"),
        ({"model": [{"id": "a", "role": "r", "kind": "blob", "path": "a"}]}, "kind 'blob'"),
        ({"model": [{"id": "a", "role": "r", "kind": "file", "path": "../a"}]}, "inside the models folder"),
        ({"model": [{"id": "a", "role": "r", "kind": "file", "path": "a", "sha256": "abc"}]}, "not a sha256"),
        ({"model": [{"id": "a", "role": "r", "kind": "file", "path": "a", "size": -1}]}, "non-negative integer"),
        ({"model": [{"role": "r", "kind": "file", "path": "a"}]}, "has no 'id'"),
        ({"schema": 2, "model": []}, "schema 2"),
    ],
)
def test_invalid_manifests_are_refused_with_the_reason(patch, message):
    with pytest.raises(EngineError, match=message):
        parse_manifest(patch)


def test_unknown_id_lists_known_ids():
    with pytest.raises(EngineError) as err:
        load_manifest().by_id("e5e")
    assert "e4e" in err.value.hint


# -- models folder resolution ---------------------------------------------------------------------------


def test_models_dir_rules_in_order(tmp_path, monkeypatch):
    env = {"WPLUS_MODELS_DIR": str(tmp_path / "env")}
    p, why = resolve_models_dir(str(tmp_path / "cli"), str(tmp_path / "settings"), environ=env)
    assert p == tmp_path / "cli"
    assert "--models-dir" in why
    p, why = resolve_models_dir(None, str(tmp_path / "settings"), environ=env)
    assert p == tmp_path / "env"
    assert "WPLUS_MODELS_DIR" in why
    p, why = resolve_models_dir("", str(tmp_path / "settings"), environ={"WPLUS_MODELS_DIR": " "})
    assert p == tmp_path / "settings"
    assert "settings" in why

    app = tmp_path / "app"
    (app / "models").mkdir(parents=True)
    monkeypatch.setattr(sys, "frozen", True, raising=False)
    monkeypatch.setattr(sys, "executable", str(app / "wplus-studio"))
    p, why = resolve_models_dir(None, None, environ={}, cwd=tmp_path)
    assert p == app / "models"
    assert "beside the application" in why

    (app / "models").rmdir()
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    p, why = resolve_models_dir(None, None, environ={}, cwd=tmp_path)
    assert p == tmp_path / "xdg" / "WPlusStudio" / "models"
    assert "user data folder" in why
    assert not p.exists()  # resolving creates nothing


def test_models_dir_expands_user(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))
    p, _ = resolve_models_dir("~/weights")
    assert p == tmp_path / "weights"


# -- checks ------------------------------------------------------------------------------------------------


def test_empty_folder_reports_missing_with_how_to_get_them(tmp_path):
    man = small_manifest(tmp_path)
    st = states(tmp_path / "models", man)
    assert st["sd15"].status == ModelStatus.MISSING
    assert "no SD1.5 model" in st["sd15"].message
    assert st["e4e"].status == ModelStatus.MISSING
    assert "wplus models import" in st["e4e"].message
    assert st["landmarks"].status == ModelStatus.OK  # bundled with face-recognition-models
    assert st["vae"].required is False


def test_present_file_without_published_hash_is_recorded_then_compared(tmp_path):
    man = small_manifest(tmp_path)
    models = tmp_path / "models"
    models.mkdir()
    e4e = models / "e4e_ffhq_encode.pt"
    e4e.write_bytes(b"legacy pickle bytes " * 10)
    s = states(models, man)["e4e"]
    assert s.status == ModelStatus.OK
    assert "recorded now" in s.message
    assert "will be converted" in s.message
    rec = json.loads((models / HASHES_FILE).read_text())["files"]["e4e_ffhq_encode.pt"]
    assert rec["recorded_sha256"] == hashlib.sha256(e4e.read_bytes()).hexdigest()
    assert rec["recorded_by"] == "first check"

    s = states(models, man)["e4e"]
    assert s.status == ModelStatus.OK
    assert "unchanged since" in s.message

    e4e.write_bytes(b"LEGACY pickle bytes " * 10)
    os.utime(e4e, ns=(1, 1))  # a different mtime: the cache must not hide the change
    s = states(models, man)["e4e"]
    assert s.status == ModelStatus.CORRUPT
    assert "changed since its sha256 was recorded" in s.message


def test_hash_cache_is_keyed_by_size_and_mtime(tmp_path):
    man = small_manifest(tmp_path)
    models = tmp_path / "models"
    models.mkdir()
    f = models / "e4e_ffhq_encode.pt"
    f.write_bytes(b"a" * 200)
    assert states(models, man)["e4e"].status == ModelStatus.OK
    st = f.stat()
    f.write_bytes(b"b" * 200)  # same size; restore the mtime: the cached hash is trusted (by design)
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert states(models, man)["e4e"].status == ModelStatus.OK
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    assert states(models, man)["e4e"].status == ModelStatus.CORRUPT


def test_published_hash_verifies_or_marks_corrupt(tmp_path):
    man = small_manifest(tmp_path)
    models = tmp_path / "models"
    models.mkdir()
    (models / "wplus_adapter.bin").write_bytes(KNOWN)
    s = states(models, man)["adapter"]
    assert s.status == ModelStatus.OK
    assert "sha256 verified" in s.message
    (models / "wplus_adapter.bin").write_bytes(KNOWN[:-1] + b"!")
    s = states(models, man)["adapter"]
    assert s.status == ModelStatus.CORRUPT
    assert "does not match the published" in s.message
    assert "Replace it" in s.message


def test_too_small_and_truncated_files_are_corrupt(tmp_path):
    man = small_manifest(tmp_path)
    models = tmp_path / "models"
    models.mkdir()
    (models / "e4e_ffhq_encode.pt").write_bytes(b"x" * 50)
    s = states(models, man)["e4e"]
    assert s.status == ModelStatus.CORRUPT
    assert "only 50 B" in s.message

    with zipfile.ZipFile(models / "e4e_ffhq_encode.pt", "w") as zf:
        zf.writestr("archive/data.pkl", b"p" * 500)
    data = (models / "e4e_ffhq_encode.pt").read_bytes()
    (models / "e4e_ffhq_encode.pt").write_bytes(data[: len(data) - 40])
    s = states(models, man)["e4e"]
    assert s.status == ModelStatus.CORRUPT
    assert "incomplete torch checkpoint" in s.message

    write_safetensors(models / "e4e_ffhq_encode.safetensors", 64, truncate=10)
    s = states(models, man)["e4e"]
    assert s.path.endswith("e4e_ffhq_encode.safetensors")
    assert s.status == ModelStatus.CORRUPT
    assert "incomplete download" in s.message


def test_safetensors_header_check(tmp_path):
    good = tmp_path / "good.safetensors"
    write_safetensors(good, 8)
    assert safetensors_problem(good) == ""
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(struct.pack("<Q", 10_000) + b"{}")
    assert "damaged" in safetensors_problem(bad)


def test_quick_check_leaves_unhashed_files_unverified(tmp_path):
    man = small_manifest(tmp_path)
    models = tmp_path / "models"
    models.mkdir()
    (models / "e4e_ffhq_encode.pt").write_bytes(b"y" * 300)
    s = states(models, man, verify=False)["e4e"]
    assert s.status == ModelStatus.UNVERIFIED
    assert "wplus models verify" in s.message
    assert not (models / HASHES_FILE).exists()
    states(models, man)  # hashes and records
    assert states(models, man, verify=False)["e4e"].status == ModelStatus.OK


def test_sd15_diffusers_folder_and_single_files(tmp_path):
    man = small_manifest(tmp_path)
    models = tmp_path / "models"
    sd = models / "sd15"
    sd.mkdir(parents=True)
    write_safetensors(sd / "b-model.safetensors", 64)
    write_safetensors(sd / "a-model.safetensors", 64)
    cfg = EngineConfig(models_dir=models)
    assert sd15_candidates(cfg) == (sd / "a-model.safetensors", sd / "b-model.safetensors")
    s = states(models, man)["sd15"]
    assert s.status == ModelStatus.OK
    assert s.path.endswith("a-model.safetensors")
    assert "1 other model" in s.message

    folder = sd / "my-diffusers"
    (folder / "model_index.json").parent.mkdir()
    (folder / "model_index.json").write_text("{}")
    for comp in ("unet", "vae"):
        (folder / comp).mkdir()
        (folder / comp / "config.json").write_text("{}")
        write_safetensors(folder / comp / "diffusion_pytorch_model.safetensors", 32)
    s = states(models, man)["sd15"]  # the diffusers folder comes first, and it lacks text_encoder
    assert s.path == str(folder)
    assert s.status == ModelStatus.CORRUPT
    assert "text_encoder/config.json missing" in s.message
    (folder / "text_encoder").mkdir()
    (folder / "text_encoder" / "config.json").write_text("{}")
    write_safetensors(folder / "text_encoder" / "model.safetensors", 32)
    s = states(models, man)["sd15"]
    assert s.status == ModelStatus.OK
    assert "diffusers folder my-diffusers" in s.message
    assert find_model(cfg, "sd15", load_manifest(man)) == folder


def test_find_model_prefers_converted_copy_and_config_overrides(tmp_path):
    man = load_manifest(small_manifest(tmp_path))
    models = tmp_path / "models"
    models.mkdir()
    cfg = EngineConfig(models_dir=models)
    assert find_model(cfg, "e4e", man) is None
    (models / "e4e_ffhq_encode.pt").write_bytes(b"z" * 200)
    assert find_model(cfg, "e4e", man) == models / "e4e_ffhq_encode.pt"
    write_safetensors(models / "e4e_ffhq_encode.safetensors")
    assert find_model(cfg, "e4e", man) == models / "e4e_ffhq_encode.safetensors"
    other = tmp_path / "elsewhere.safetensors"
    write_safetensors(other)
    assert find_model(EngineConfig(models_dir=models, e4e=str(other)), "e4e", man) == other
    assert find_model(cfg, "landmarks", man).name == "shape_predictor_68_face_landmarks.dat"


def test_runtime_path_converts_a_pickle_once(tmp_path):
    import torch

    man = load_manifest(small_manifest(tmp_path))
    models = tmp_path / "models"
    models.mkdir()
    service = ModelService(EngineConfig(models_dir=models), man)
    with pytest.raises(ModelMissing, match="expected at"):
        service.runtime_path("e4e")
    state = {"conv.weight": torch.arange(12, dtype=torch.float32).reshape(3, 4)}
    torch.save(state, models / "e4e_ffhq_encode.pt")
    out = service.runtime_path("e4e")
    assert out == models / "e4e_ffhq_encode.safetensors"
    from safetensors.torch import load_file

    assert torch.equal(load_file(out)["conv.weight"], state["conv.weight"])
    cache = HashCache(models)
    assert cache.recorded(out)[2] == "convert"
    assert service.runtime_path("e4e") == out


def test_hashes_go_to_the_cache_dir_when_the_models_folder_cannot_hold_them(tmp_path):
    man = small_manifest(tmp_path)
    elsewhere = tmp_path / "my-e4e.pt"
    elsewhere.write_bytes(b"r" * 200)
    models = tmp_path / "not-created"  # e.g. an unplugged drive: nothing may be written there
    cfg = EngineConfig(models_dir=models, cache_dir=tmp_path / "cache", e4e=str(elsewhere))
    [s] = check_models(cfg, manifest=load_manifest(man), ids=["e4e"])
    assert s.status == ModelStatus.OK
    assert s.path == str(elsewhere)
    assert not models.exists()
    [saved] = (tmp_path / "cache").glob("hashes-*.json")
    assert str(elsewhere) in json.loads(saved.read_text())["files"]
