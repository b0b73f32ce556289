"""engine.models.service.ModelService and engine.devices: one way to locate, convert, load and cache."""

from __future__ import annotations

import os

import pytest
import torch

from engine.config import EngineConfig
from engine.devices import resolve_device
from engine.errors import BackendUnavailable, ModelMissing
from engine.models.service import ModelService
from engine.networks.parsenet import ParseNet, parsenet_layout
from engine.testing.wbn import fill_module


@pytest.fixture(scope="module")
def parser_state():
    net = ParseNet()
    fill_module(net, "test:service_parsenet.")
    return net.state_dict()


def test_devices_agree_about_unavailable_cuda():
    assert resolve_device("cpu", "auto") == (torch.device("cpu"), torch.float32)
    assert resolve_device("cpu", "bfloat16")[1] == torch.bfloat16
    if not torch.cuda.is_available():
        with pytest.raises(BackendUnavailable, match="CUDA is not available"):
            resolve_device("cuda")
        # the service (e4e, parser, preview) refuses it the same way, before reading any file
        with pytest.raises(BackendUnavailable, match="CUDA is not available"):
            ModelService(EngineConfig(device="cuda:0")).load("parser")
    with pytest.raises(BackendUnavailable, match="Unknown dtype"):
        resolve_device("cpu", "float8")


def test_parser_is_converted_once_loaded_once_per_key(tmp_path, parser_state):
    models = tmp_path / "models"
    models.mkdir()
    torch.save(parser_state, models / "parse_multi_iter_90000.pth")
    service = ModelService(EngineConfig(models_dir=models, device="cpu"))
    assert service.find("parser") == models / "parse_multi_iter_90000.pth"
    net = service.load("parser")
    converted = models / "parse_multi_iter_90000.safetensors"
    assert service.find("parser") == converted  # from now on no pickle is read
    assert next(net.parameters()).dtype == torch.float32
    assert set(net.state_dict()) == set(parsenet_layout())
    for k, v in parser_state.items():
        assert torch.equal(net.state_dict()[k], v), k
    assert service.load("parser") is net
    assert service.load("parser", dtype="bfloat16") is not net  # the dtype is part of the key
    mtime = converted.stat().st_mtime_ns
    ModelService(EngineConfig(models_dir=models, device="cpu")).load("parser")
    assert converted.stat().st_mtime_ns == mtime  # converted once, not on every session
    service.drop()
    assert service.load("parser") is not net


def test_a_pickle_the_user_names_is_converted_into_the_models_folder_and_again_when_it_changes(
    tmp_path, parser_state, monkeypatch
):
    models = tmp_path / "models"
    models.mkdir()
    work = tmp_path / "work"
    work.mkdir()
    torch.save(parser_state, work / "mine.pth")
    monkeypatch.chdir(work)
    config = EngineConfig(models_dir=models, parser="mine.pth", device="cpu")
    first = ModelService(config).runtime_path("parser")
    assert first.name == "mine.safetensors"
    assert first.parent.parent == models / ".converted"
    assert not (work / "mine.safetensors").exists()  # nothing is written beside the user's file
    assert ModelService(config).runtime_path("parser") == first
    st = (work / "mine.pth").stat()
    os.utime(work / "mine.pth", ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert ModelService(config).runtime_path("parser") != first


def test_unknown_components_backends_and_missing_files_are_refused(tmp_path):
    service = ModelService(EngineConfig(models_dir=tmp_path, device="cpu"))
    with pytest.raises(ValueError, match="unknown component"):
        service.load("unet")
    with pytest.raises(BackendUnavailable, match="cannot run on the tensorrt backend"):
        service.load("e4e", backend="tensorrt")
    with pytest.raises(ModelMissing, match=r"e4e face encoder is missing \(expected at .*e4e_ffhq_encode\.pt\)") as e:
        service.load("e4e")
    assert "wplus models" in e.value.hint
    assert service.find("parser") is None
