"""The W+ pipeline on tiny real models: diffusers equivalence, delayed-conditioning schedule, inputs, progress."""

from __future__ import annotations

import itertools
import json
import logging

import numpy as np
import pytest
import torch

from engine.api import GenerateRequest, Progress, Scheduler
from engine.cancel import CancelToken
from engine.errors import Cancelled, InvalidInput
from engine.pipeline.generate import WPlusPipeline
from engine.testing.tiny import tiny_wplus

SMALL = {"width": 64, "height": 64}


pytestmark = pytest.mark.usefixtures("one_torch_thread")




@pytest.fixture(scope="module")
def pipe(tiny):
    return WPlusPipeline.from_files(tiny / "sd15", tiny / "wplus_adapter.bin", device="cpu", dtype="float32")


@pytest.fixture(scope="module")
def reference(tiny):
    """diffusers' own StableDiffusionPipeline on the same tiny weights (UNet with its stock processors)."""
    from diffusers import StableDiffusionPipeline

    from engine.networks.sd15 import load_sd15

    c = load_sd15(tiny / "sd15")
    ref = StableDiffusionPipeline(
        vae=c.vae, text_encoder=c.text_encoder, tokenizer=c.tokenizer, unet=c.unet, scheduler=None,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    ref.set_progress_bar_config(disable=True)
    return ref, c.scheduler_config


def _diffusers_images(reference, req: GenerateRequest) -> np.ndarray:
    from engine.pipeline.schedulers import make_scheduler

    ref, sched_cfg = reference
    ref.scheduler = make_scheduler(req.scheduler, sched_cfg)
    if req.freeu:
        ref.unet.enable_freeu(s1=0.6, s2=0.4, b1=1.1, b2=1.2)
    else:
        ref.unet.disable_freeu()
    return ref(
        req.prompt, negative_prompt=req.negative_prompt, num_inference_steps=req.steps, guidance_scale=req.guidance,
        height=req.height, width=req.width, generator=torch.Generator().manual_seed(req.seed), output_type="np",
    ).images


@pytest.mark.parametrize("scheduler", list(Scheduler))
def test_scale_zero_equals_diffusers_stable_diffusion(pipe, reference, scheduler):
    req = GenerateRequest(prompt="a portrait photo", seed=7, steps=4, scheduler=scheduler, scale=0.0,
                          wplus=tiny_wplus(3), **SMALL)
    ours, _, _ = pipe.render_float(req)
    ref = _diffusers_images(reference, req)
    assert ours[0].shape == ref[0].shape == (64, 64, 3)
    assert np.abs(ours[0] - ref[0]).max() <= 1e-5
    # the identity really is ignored at scale 0, and really used otherwise
    plain, _, _ = pipe.render_float(req.replace(wplus=None))
    assert np.array_equal(plain[0], ours[0])
    with_id, _, _ = pipe.render_float(req.replace(scale=1.0, start_ratio=0.0))
    assert np.abs(with_id[0] - ours[0]).max() > 1e-3


def test_freeu_and_low_guidance_match_diffusers(pipe, reference):
    req = GenerateRequest(seed=3, steps=3, freeu=True, guidance=1.0, wplus=None, **SMALL)
    ours, _, _ = pipe.render_float(req)
    assert np.abs(ours[0] - _diffusers_images(reference, req)[0]).max() <= 1e-5
    off, _, _ = pipe.render_float(req.replace(freeu=False))
    assert np.abs(off[0] - ours[0]).max() > 1e-4


def test_same_request_twice_gives_identical_pixels(pipe):
    req = GenerateRequest(seed=11, steps=4, wplus=tiny_wplus(1), scheduler=Scheduler.EULER_ANCESTRAL, **SMALL)
    pipe.clear_caches()
    a = pipe.render(req)
    pipe.clear_caches()
    b = pipe.render(req)
    assert a.images[0].dtype == np.uint8
    assert a.images[0].shape == (64, 64, 3)
    assert np.array_equal(a.images[0], b.images[0])


def test_variations_use_consecutive_seeds(pipe):
    req = GenerateRequest(seed=40, steps=3, n=2, wplus=tiny_wplus(2), **SMALL)
    res = pipe.render(req)
    assert res.seeds == (40, 41)
    assert len(res.images) == 2
    assert not np.array_equal(res.images[0], res.images[1])
    second = pipe.render(req.replace(seed=41, n=1))
    assert np.array_equal(second.images[0], res.images[1])


def test_initial_noise_is_diffusers_cpu_generator_noise(pipe):
    latents, _ = pipe.initial_latents(23, 64, 96, 1.0)
    expected = torch.randn((1, 4, 8, 12), generator=torch.Generator().manual_seed(23))
    assert torch.equal(latents, expected)


class RecordingRunners:
    """The real runners, with the UNet runner wrapped to record the W+ scale it is called with."""

    def __init__(self, inner):
        self.inner = inner
        self.device, self.dtype = inner.device, inner.dtype
        self.scales: list[float] = []

    def get(self, component):
        runner = self.inner.get(component)
        if component != "unet":
            return runner

        def record(**inputs):
            self.scales.append(float(inputs["wplus_scale"]))
            return runner(**inputs)

        return record

    def set_freeu(self, enabled):
        self.inner.set_freeu(enabled)


def test_delayed_conditioning_schedule_matches_official_fixture(pipe, fixtures_dir):
    expected = json.loads((fixtures_dir / "pipeline_schedule.json").read_text())
    rec = RecordingRunners(pipe.runners)
    recorder = WPlusPipeline(rec, pipe.tokenizer, pipe.scheduler_config, model_id="recording", step_cache_size=0)
    for name, case in expected.items():
        steps = int(name.split(",")[0].split("=")[1])
        ratio = float(name.split("ratio=")[1])
        req = GenerateRequest(steps=steps, start_ratio=ratio, scale=0.8, wplus=tiny_wplus(0), guidance=1.0, **SMALL)
        assert req.start_step == case["start_embed_step"]
        rec.scales.clear()
        observe = max(len(case["first_scales"]), case["steps_with_wplus_scale_0"] + 3)
        token = CancelToken()

        def stop_after(p: Progress, token=token, observe=observe):
            if p.stage == "denoise" and p.step >= observe:
                token.cancel()  # the long cases only need their first steps observed

        if observe < steps:
            with pytest.raises(Cancelled):
                recorder.render(req, token=token, progress=stop_after)
        else:
            recorder.render(req)
            assert len(rec.scales) == steps
        seen = rec.scales
        assert seen[: len(case["first_scales"])] == pytest.approx(case["first_scales"])
        assert sum(1 for s in seen if s == 0) == case["steps_with_wplus_scale_0"]
        assert seen[case["steps_with_wplus_scale_0"]] == pytest.approx(0.8)


def test_no_identity_means_scale_zero_everywhere(pipe):
    rec = RecordingRunners(pipe.runners)
    recorder = WPlusPipeline(rec, pipe.tokenizer, pipe.scheduler_config, step_cache_size=0)
    recorder.render(GenerateRequest(steps=3, start_ratio=0.0, wplus=None, **SMALL))
    assert rec.scales == [0.0, 0.0, 0.0]


def test_bad_wplus_is_refused(pipe):
    bad = tiny_wplus(0)
    bad[0, 3, 7] = np.nan
    with pytest.raises(InvalidInput, match="NaN"):
        GenerateRequest(wplus=bad)
    ok = GenerateRequest(steps=2, wplus=tiny_wplus(0), **SMALL)
    with pytest.raises(InvalidInput, match="NaN or infinite"):
        pipe.render(ok, edited_wplus=bad)
    inf = tiny_wplus(0)
    inf[0, 0, 0] = np.inf
    with pytest.raises(InvalidInput, match="infinite"):
        pipe.render(ok, edited_wplus=inf)
    with pytest.raises(InvalidInput, match="shape"):
        pipe.render(ok, edited_wplus=np.zeros((1, 14, 512), np.float32))


def test_long_prompt_is_truncated_with_a_warning(pipe, caplog):
    long_prompt = "a portrait of a person " * 20 + "zebras"
    with caplog.at_level(logging.WARNING, logger="engine.pipeline.generate"):
        res = pipe.render(GenerateRequest(prompt=long_prompt, steps=2, **SMALL))
    assert len(res.warnings) == 1
    assert "77" in res.warnings[0]
    assert res.warnings[0].endswith("zebras\"")
    assert any("77" in r.message for r in caplog.records)
    short = pipe.render(GenerateRequest(prompt="a portrait", steps=2, **SMALL))
    assert short.warnings == ()


def test_progress_previews_and_cancel_before_decode(pipe):
    seen: list[Progress] = []
    res = pipe.render(GenerateRequest(steps=3, width=64, height=96, **{}), progress=seen.append)
    denoise = [p for p in seen if p.stage == "denoise"]
    assert [p.step for p in denoise] == [1, 2, 3]
    assert all(p.total == 3 for p in denoise)
    assert all(p.preview.shape == (12, 8, 3) and p.preview.dtype == np.uint8 for p in denoise)
    assert all(b.elapsed_s >= a.elapsed_s for a, b in itertools.pairwise(denoise))
    assert res.images[0].shape == (96, 64, 3)

    token = CancelToken()
    calls = []

    def cancel_at_last(p: Progress):
        calls.append(p.stage)
        if p.stage == "denoise" and p.step == 3:
            token.cancel()

    with pytest.raises(Cancelled):
        pipe.render(GenerateRequest(steps=3, seed=99, **SMALL), token=token, progress=cancel_at_last)
    assert "done" not in calls


def test_non_square_sizes_multiple_of_8(pipe):
    res = pipe.render(GenerateRequest(steps=2, width=80, height=64, wplus=tiny_wplus(5), **{}))
    assert res.images[0].shape == (64, 80, 3)
    with pytest.raises(InvalidInput, match="multiple of 8"):
        GenerateRequest(width=70)


def test_tiny_session_renders_through_the_facade(tmp_path):
    from engine.testing.tiny import tiny_session

    session = tiny_session(tmp_path)
    try:
        req = GenerateRequest(steps=2, wplus=tiny_wplus(0), **SMALL)
        res = session.render(req)
        assert res.images[0].shape == (64, 64, 3)
        assert session.render(req).images[0].tobytes() == res.images[0].tobytes()
    finally:
        session.close()
