"""TensorRT around the library: cache keys, profiles from the IO spec, the engine cache and its refusals.

None of this needs TensorRT or a GPU; the build and the runtime themselves are in tests/gpu.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json

import pytest

from engine.backends.base import IO_SPEC
from engine.backends.profiles import ShapeProfile
from engine.backends.trt_build import (
    EngineCache,
    EngineKey,
    GpuInfo,
    build_engine,
    engine_key,
    ensure_engine,
    profile_shapes,
    tensorrt_module,
)
from engine.errors import BackendUnavailable, EngineMismatch, ModelCorrupt, ModelMissing

HAS_TRT = importlib.util.find_spec("tensorrt") is not None
RTX4090 = GpuInfo("NVIDIA GeForce RTX 4090", "8.9")
RTX3090 = GpuInfo("NVIDIA GeForce RTX 3090", "8.6")


def _key(**changes) -> EngineKey:
    base = EngineKey("unet", "ab" * 32, "10.7.0", RTX4090.name, RTX4090.compute_capability, "fp16",
                     ShapeProfile.static(512, 512).key())
    return dataclasses.replace(base, **changes)


def test_profiles_from_the_io_spec():
    shapes = profile_shapes("unet", ShapeProfile.dynamic(256, 512, 1024, max_batch=2))
    assert list(shapes) == [t.name for t in IO_SPEC["unet"].inputs]
    assert shapes["sample"] == ((1, 4, 32, 32), (2, 4, 64, 64), (4, 4, 128, 128))
    assert shapes["timestep"] == ((1,), (2,), (4,))
    assert shapes["text_embeds"] == ((1, 77, 768), (2, 77, 768), (4, 77, 768))
    assert shapes["wplus_scale"] == ((1,), (1,), (1,))
    static = profile_shapes("vae_decoder", ShapeProfile.static(512, 768, batch=1))
    assert static["latent"] == ((1, 4, 64, 96), (2, 4, 64, 96), (2, 4, 64, 96))
    face = profile_shapes("face_encoder", ShapeProfile.static())
    assert face["image"] == ((1, 3, 256, 256), (2, 3, 256, 256), (2, 3, 256, 256))


def test_key_digest_is_stable_and_covers_every_field():
    assert _key().digest() == _key().digest()
    assert _key().file_name().startswith("unet-fp16-")
    variants = [
        _key(onnx_sha256="cd" * 32), _key(trt_version="10.8.0"), _key(gpu_name=RTX3090.name),
        _key(compute_capability="8.6"), _key(precision="fp32"), _key(profile=ShapeProfile.dynamic().key()),
        _key(component="vae_decoder"),
    ]
    digests = {v.digest() for v in variants}
    assert len(digests) == len(variants)
    assert _key().digest() not in digests


def test_mismatch_reasons_are_spelled_out():
    built = _key(gpu_name=RTX3090.name, compute_capability="8.6", trt_version="10.3.0")
    why = built.mismatches(_key())
    assert any("built on NVIDIA GeForce RTX 3090 (compute capability 8.6); this GPU is NVIDIA GeForce RTX 4090 (8.9)"
               in w for w in why)
    assert any("built with TensorRT 10.3.0; TensorRT 10.7.0 is installed" in w for w in why)
    assert _key().mismatches(_key()) == []
    assert "the ONNX export it was built from has changed" in _key(onnx_sha256="00").mismatches(_key())[0]


def test_cache_store_lookup_and_refuse_foreign_engine(tmp_path):
    cache = EngineCache(tmp_path)
    key = _key()
    plan = cache.store(key, b"engine-bytes", seconds=12.3)
    assert plan.name == key.file_name()
    assert cache.lookup(key) == plan
    record = json.loads(cache.record_path(plan).read_text())
    assert record["key"]["gpu_name"] == RTX4090.name
    assert record["size"] == len(b"engine-bytes")

    here = _key(gpu_name=RTX3090.name, compute_capability="8.6")
    assert cache.lookup(here) is None
    with pytest.raises(EngineMismatch, match=r"cannot be used here: it was built on NVIDIA GeForce RTX 4090") as err:
        cache.check(plan, here)
    assert "python -m export trt" in err.value.hint
    with pytest.raises(EngineMismatch, match=r"built with TensorRT 10\.7\.0; TensorRT 10\.8\.0 is installed"):
        cache.check(plan, _key(trt_version="10.8.0"))
    assert any("RTX 4090" in r for r in cache.stale_reasons(here))


def test_damaged_cache_entries(tmp_path):
    cache = EngineCache(tmp_path)
    key = _key()
    plan = cache.store(key, b"0123456789")
    plan.write_bytes(b"01234")
    with pytest.raises(ModelCorrupt, match="truncated or was replaced"):
        cache.check(plan, key)
    assert cache.lookup(key) is None
    cache.record_path(plan).unlink()
    with pytest.raises(ModelCorrupt, match="no readable build record"):
        cache.check(plan, key)
    with pytest.raises(ModelMissing, match="There is no TensorRT engine"):
        cache.check(tmp_path / "nothing.plan", key)


def test_engine_key_from_an_export(exported):
    key = engine_key(exported / "unet.onnx", "unet", "fp16", ShapeProfile.static(64, 64), trt_version="10.7.0",
                     gpu=RTX4090)
    record = json.loads((exported / "unet.onnx.json").read_text())
    assert key.onnx_sha256 == record["onnx_sha256"]
    assert (key.gpu_name, key.compute_capability, key.trt_version) == (RTX4090.name, "8.9", "10.7.0")
    with pytest.raises(EngineMismatch, match="holds the unet component, not vae_decoder"):
        engine_key(exported / "unet.onnx", "vae_decoder", "fp16", ShapeProfile.static(), trt_version="10", gpu=RTX4090)
    with pytest.raises(ValueError, match="precision"):
        engine_key(exported / "unet.onnx", "unet", "int8", ShapeProfile.static(), trt_version="10", gpu=RTX4090)


def test_no_build_allowed_refuses_with_the_reason(exported, tmp_path):
    cache = EngineCache(tmp_path)
    profile = ShapeProfile.static(64, 64)
    old = engine_key(exported / "unet.onnx", "unet", "fp16", profile, trt_version="10.3.0", gpu=RTX3090)
    cache.store(old, b"x")
    now = dataclasses.replace(old, trt_version="10.7.0", gpu_name=RTX4090.name, compute_capability="8.9")
    with pytest.raises(EngineMismatch, match=r"No usable TensorRT engine for unet: .*built on NVIDIA GeForce RTX 3090"):
        ensure_engine(cache, exported / "unet.onnx", "unet", profile, allow_build=False, key=now)
    path, reasons = ensure_engine(cache, exported / "unet.onnx", "unet", profile, allow_build=False, key=old)
    assert path == cache.path_for(old)
    assert reasons == []


@pytest.mark.skipif(HAS_TRT, reason="checks the message when TensorRT is absent")
def test_without_tensorrt_everything_says_so(exported):
    with pytest.raises(BackendUnavailable, match="TensorRT is not installed"):
        tensorrt_module()
    with pytest.raises(BackendUnavailable, match="TensorRT is not installed"):
        build_engine(exported / "unet.onnx", "unet", ShapeProfile.static(64, 64))
    from engine.backends.trt_backend import TrtRunners

    with pytest.raises(BackendUnavailable, match="TensorRT is not installed") as err:
        TrtRunners(exported, exported / "engines", ShapeProfile.static(64, 64))
    assert "torch or ONNX Runtime" in err.value.hint
