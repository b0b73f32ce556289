"""Step cache: resumed slider re-renders are bit-identical to uncached runs, invalidate on every keyed field,
and a cancelled run never leaves a corrupt entry."""

from __future__ import annotations

import numpy as np
import pytest

from engine.api import EditState, GenerateRequest, Progress, Scheduler
from engine.cancel import CancelToken
from engine.errors import Cancelled
from engine.pipeline.cache import LRU
from engine.pipeline.generate import WPlusPipeline
from engine.testing.tiny import tiny_wplus

pytestmark = pytest.mark.usefixtures("one_torch_thread")




@pytest.fixture(scope="module")
def pipe(tiny):
    return WPlusPipeline.from_files(tiny / "sd15", tiny / "wplus_adapter.bin", device="cpu", dtype="float32")


# 6 steps, ratio 50 → W+ off for steps 0..3, the prefix the cache keeps.
BASE = GenerateRequest(prompt="a portrait", seed=5, steps=6, start_ratio=50.0, width=64, height=64,
                       wplus=tiny_wplus(1), scale=1.0)


def _uncached(pipe, req, edited=None):
    saved = pipe.step_cache
    pipe.step_cache = type(saved)(0)
    try:
        return pipe.render_float(req, edited)
    finally:
        pipe.step_cache = saved


@pytest.mark.parametrize("scheduler", list(Scheduler))
def test_resumed_render_is_bit_identical(pipe, scheduler):
    pipe.step_cache.clear()
    req_a = BASE.replace(scheduler=scheduler)
    first, _, t1 = pipe.render_float(req_a)
    assert t1["steps_cached"] == 0
    assert t1["steps_run"] == 6
    # a slider move: another identity, another scale; the prefix comes from the cache
    req_b = req_a.replace(wplus=tiny_wplus(2), scale=0.7)
    cached, _, t2 = pipe.render_float(req_b)
    assert t2["steps_cached"] == 4
    assert t2["steps_run"] == 2
    fresh, _, _ = _uncached(pipe, req_b)
    assert np.array_equal(cached[0], fresh[0])
    assert not np.array_equal(cached[0], first[0])
    # going back to A from the cache equals the first render too
    again, _, t3 = pipe.render_float(req_a)
    assert t3["steps_cached"] == 4
    assert np.array_equal(again[0], first[0])


def test_edits_resume_from_cache(pipe):
    pipe.step_cache.clear()
    pipe.render_float(BASE)
    edited = BASE.wplus + 0.3
    req = BASE.replace(edits=EditState.from_mapping({"smile": 1.0}))
    out, _, t = pipe.render_float(req, edited)
    assert t["steps_cached"] == 4
    assert np.array_equal(out[0], _uncached(pipe, req, edited)[0][0])


@pytest.mark.parametrize(
    "change",
    [
        {"prompt": "another prompt"},
        {"negative_prompt": "blurry"},
        {"seed": 6},
        {"width": 72},
        {"height": 80},
        {"steps": 7},
        {"scheduler": Scheduler.DDIM},
        {"guidance": 5.0},
        {"freeu": True},
        {"start_ratio": 20.0},
    ],
)
def test_every_keyed_field_invalidates(pipe, change):
    pipe.step_cache.clear()
    pipe.render_float(BASE)
    _, _, t = pipe.render_float(BASE.replace(**change))
    assert t["steps_cached"] == 0


def test_each_variation_has_its_own_entry(pipe):
    pipe.step_cache.clear()
    req = BASE.replace(n=2)
    first = pipe.render(req)
    moved = pipe.render(req.replace(scale=0.5))
    assert moved.timings["steps_cached"] == 8
    fresh = _uncached(pipe, req.replace(scale=0.5))[0]
    for k in range(2):
        assert np.array_equal(moved.images[k], (fresh[k] * 255).round().astype(np.uint8))
    assert not np.array_equal(first.images[0], moved.images[0])


def test_model_identity_is_part_of_the_key(pipe):
    pipe.step_cache.clear()
    pipe.render_float(BASE)
    other = WPlusPipeline(pipe.runners, pipe.tokenizer, pipe.scheduler_config, model_id="other-weights")
    other.step_cache = pipe.step_cache  # the same cache, another model: must not hit
    _, _, t = other.render_float(BASE)
    assert t["steps_cached"] == 0


@pytest.mark.parametrize("scheduler", [Scheduler.EULER_ANCESTRAL, Scheduler.DPMPP_2M_KARRAS])
def test_cancel_mid_way_leaves_no_corrupt_entry(pipe, scheduler):
    pipe.step_cache.clear()
    req = BASE.replace(scheduler=scheduler)

    def cancel_at(step):
        token = CancelToken()

        def progress(p: Progress):
            if p.stage == "denoise" and p.step == step:
                token.cancel()

        return token, progress

    token, progress = cancel_at(2)  # before the prefix is complete: nothing may be stored
    with pytest.raises(Cancelled):
        pipe.render_float(req, token=token, progress=progress)
    assert len(pipe.step_cache) == 0

    token, progress = cancel_at(5)  # after the prefix: a complete entry exists
    with pytest.raises(Cancelled):
        pipe.render_float(req, token=token, progress=progress)
    assert len(pipe.step_cache) == 1
    resumed, _, t = pipe.render_float(req)
    assert t["steps_cached"] == 4
    assert np.array_equal(resumed[0], _uncached(pipe, req)[0][0])


def test_cache_memory_is_bounded(pipe):
    small = WPlusPipeline(pipe.runners, pipe.tokenizer, pipe.scheduler_config, model_id="x", step_cache_size=2)
    for seed in range(3):
        small.render_float(BASE.replace(seed=seed, steps=2, start_ratio=50.0))
    assert len(small.step_cache) == 2
    lru: LRU[int] = LRU(2)
    lru.put("a", 1)
    lru.put("b", 2)
    assert lru.get("a") == 1
    lru.put("c", 3)
    assert "a" in lru
    assert "b" not in lru


def test_text_embeddings_and_uncond_tokens_are_computed_once(pipe):
    calls = {"text_encoder": 0, "identity_proj": 0}

    class Counting:
        device, dtype = pipe.runners.device, pipe.runners.dtype

        def get(self, name):
            runner = pipe.runners.get(name)
            if name not in calls:
                return runner

            def count(**kw):
                calls[name] += 1
                return runner(**kw)

            return count

        def set_freeu(self, enabled):
            pipe.runners.set_freeu(enabled)

    p = WPlusPipeline(Counting(), pipe.tokenizer, pipe.scheduler_config, model_id="counting")
    req = BASE.replace(steps=2)
    p.render_float(req)
    assert calls == {"text_encoder": 2, "identity_proj": 2}  # prompt, negative; uncond zeros, W+
    p.render_float(req.replace(scale=0.3))
    assert calls == {"text_encoder": 2, "identity_proj": 2}
    p.render_float(req.replace(wplus=tiny_wplus(9)))
    assert calls == {"text_encoder": 2, "identity_proj": 3}  # one projection per new W+
