"""Suite-wide fixtures: offline guarantee, the official fixtures, deterministic threads."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

REPO = Path(__file__).resolve().parents[1]
# Outputs of the official code, kept in the repository (tests/fixtures/official/README.md).
FIXTURES = REPO / "tests" / "fixtures" / "official"


def pytest_collection_modifyitems(config, items):
    run_slow = os.environ.get("WPLUS_SLOW") == "1" or "slow" in (config.getoption("-m") or "")
    skip_slow = pytest.mark.skip(reason="slow (full-size) test: set WPLUS_SLOW=1 or pass -m slow")
    for item in items:
        if "slow" in item.keywords and not run_slow:
            item.add_marker(skip_slow)


@pytest.fixture(autouse=True)
def _no_network(monkeypatch, request):
    """The app must never reach the network; only loopback is allowed (local test servers)."""
    real_connect = socket.socket.connect

    def guarded(sock, address):
        host = address[0] if isinstance(address, tuple) else address
        if (isinstance(host, str) and (host.startswith("127.") or host in ("localhost", "::1"))) or sock.family == socket.AF_UNIX:
            return real_connect(sock, address)
        raise RuntimeError(f"network access attempted in a test: {address!r}")

    monkeypatch.setattr(socket.socket, "connect", guarded)


@pytest.fixture(scope="session", autouse=True)
def _log_dir(tmp_path_factory) -> Iterator[Path]:
    """CLIs run in-process log to a temporary folder, never into the user's log folder."""
    from engine.logs import LOG_DIR_ENV

    folder = tmp_path_factory.mktemp("logs")
    before = os.environ.get(LOG_DIR_ENV)
    os.environ[LOG_DIR_ENV] = str(folder)
    yield folder
    if before is None:
        os.environ.pop(LOG_DIR_ENV, None)
    else:
        os.environ[LOG_DIR_ENV] = before


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    """The official fixtures; their absence fails (a fidelity test must never pass by skipping)."""
    if not (FIXTURES / "SHA256SUMS").is_file():
        pytest.fail(f"the official fixtures are missing from {FIXTURES} (they are part of the repository)")
    return FIXTURES


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models run on one intra-op thread: on 2 shared cores, OpenMP overhead dominates their tiny ops."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny(tmp_path_factory) -> Path:
    """A models folder with engine.testing.tiny's SD1.5 + adapter, written once per test session."""
    from engine.testing.tiny import cached_tiny_models

    return cached_tiny_models(tmp_path_factory.getbasetemp())


@pytest.fixture(scope="session")
def astronaut():
    """A real face photo that ships in a package: scikit-image's astronaut (public domain), 512×512 RGB."""
    from skimage import data

    return data.astronaut()


@pytest.fixture(scope="session")
def detector():
    """dlib's HOG detector + 68 landmarks, loaded once (the model load takes ~1 s)."""
    from engine.faces.detect import FaceDetector

    return FaceDetector()
