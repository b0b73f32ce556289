"""Tiny SD1.5 and small synthetic datasets shared by the training tests."""

from __future__ import annotations

import pytest

from engine.testing.tiny import write_tiny_sd15
from engine.training.synthetic import write_synthetic_dataset


@pytest.fixture(scope="session")
def tiny_sd(tmp_path_factory):
    return write_tiny_sd15(tmp_path_factory.mktemp("train-sd") / "sd15")


@pytest.fixture(scope="session")
def data1(tmp_path_factory):
    return write_synthetic_dataset(tmp_path_factory.mktemp("train-d1") / "d", 1, 8)


@pytest.fixture(scope="session")
def data2(tmp_path_factory):
    return write_synthetic_dataset(tmp_path_factory.mktemp("train-d2") / "d", 2, 8)


@pytest.fixture(scope="session")
def stage1_adapter(tiny_sd, data1, tmp_path_factory):
    from engine.training.loop import TrainConfig, train

    out = tmp_path_factory.mktemp("train-s1") / "run"
    res = train(TrainConfig(stage=1, model=str(tiny_sd), data=str(data1), out=str(out), steps=2, batch=2,
                            resolution=64, save_every=2, cpu=True, quiet=True))
    return res.adapter
