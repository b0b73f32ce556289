"""Fixtures shared by the unit tests of the face chain and of restoration (one copy of the small networks)."""

from __future__ import annotations

import pytest

from tests.small_faces import SmallEncoder, small_encoder, small_parsenet


@pytest.fixture(scope="module")
def encoder() -> SmallEncoder:
    """The small e4e stand-in (`tests.small_faces.SmallEncoder`), one per test module."""
    return small_encoder()


@pytest.fixture(scope="module")
def parser():
    """A FaceParser on the small ParseNet stand-in, one per test module."""
    from engine.backends.torch_backend import module_runner
    from engine.faces.parse import FaceParser

    return FaceParser(module_runner("face_parser", small_parsenet()))
