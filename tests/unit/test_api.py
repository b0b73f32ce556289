"""The pure request types: validation, the official delayed-conditioning formula, edit state."""

from __future__ import annotations

import json

import numpy as np
import pytest

from engine.api import EditState, GenerateRequest, Progress, Scheduler, validate_wplus
from engine.errors import InvalidInput


def test_start_step_matches_the_official_schedule(fixtures_dir):
    schedule = json.loads((fixtures_dir / "pipeline_schedule.json").read_text())
    for key, entry in schedule.items():
        steps = int(key.split(",")[0].split("=")[1])
        ratio = float(key.split(",")[1].split("=")[1])
        req = GenerateRequest(steps=steps, start_ratio=ratio, scale=0.8)
        assert req.start_step == entry["start_embed_step"]
        scales = [req.wplus_scale_at(i) for i in range(steps)]
        assert sum(1 for s in scales if s == 0) == entry["steps_with_wplus_scale_0"]
        assert scales[: len(entry["first_scales"])] == pytest.approx(entry["first_scales"])


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"width": 500}, "multiple of 8"),
        ({"height": 32}, "multiple of 8"),
        ({"steps": 0}, "steps"),
        ({"n": 0}, "variations"),
        ({"seed": -1}, "seed"),
        ({"guidance": float("nan")}, "guidance"),
        ({"start_ratio": 150.0}, "percentage"),
    ],
)
def test_invalid_requests_are_refused_with_a_reason(changes, message):
    with pytest.raises(InvalidInput, match=message):
        GenerateRequest(**changes)


def test_wplus_validation_refuses_nan_and_wrong_shapes():
    w = np.zeros((1, 18, 512), np.float64)
    assert validate_wplus(w).dtype == np.float32
    assert validate_wplus(np.zeros((18, 512))).shape == (1, 18, 512)
    bad = w.copy()
    bad[0, 3, 7] = np.nan
    with pytest.raises(InvalidInput, match="NaN"):
        validate_wplus(bad)
    with pytest.raises(InvalidInput, match="1×18×512"):
        validate_wplus(np.zeros((1, 14, 512)))
    with pytest.raises(InvalidInput, match="NaN"):
        GenerateRequest(wplus=np.full((1, 18, 512), np.inf))


def test_edit_state_drops_zeros_and_is_order_independent():
    a = EditState.from_mapping({"age": 2.0, "smile": 0.0, "pose": -1.0})
    b = EditState().with_value("pose", -1.0).with_value("age", 2.0)
    assert a == b
    assert a.get("smile") == 0.0
    assert not a.is_identity
    assert a.with_value("age", 0).with_value("pose", 0).is_identity


def test_progress_eta_extrapolates_linearly():
    p = Progress(stage="denoise", step=5, total=20, elapsed_s=2.0)
    assert p.eta_s == pytest.approx(6.0)
    assert p.fraction == pytest.approx(0.25)
    assert Progress(stage="denoise", step=0, total=20).eta_s is None


def test_scheduler_names_are_their_serialized_values():
    assert GenerateRequest(scheduler="dpmpp_2m_karras").scheduler is Scheduler.DPMPP_2M_KARRAS
    with pytest.raises(ValueError):
        GenerateRequest(scheduler="plms")
