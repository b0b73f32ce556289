"""Learning on tiny models (CPU): stage 1 lowers held-out L_rec; stage 2 lowers the background change under an
identity swap relative to its stage-1 start. ~1 min on 2 busy cores, so opt-in (slow); numbers in docs/TRAINING.md."""

from __future__ import annotations

import pytest

from engine.training.evaluate import learning_experiment


@pytest.mark.slow
def test_stage1_then_stage2_learn_what_the_paper_says(tmp_path, one_torch_thread):
    r = learning_experiment(tmp_path)
    print(r)
    assert r["rec_stage1"] < 0.97 * r["rec_initial"]
    assert r["bg_change_stage2"] < 0.95 * r["bg_change_stage1"]
