"""Fixtures of the Qt tests: a whole app on a fake session, with temporary settings, logs and data."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from desktop.logs import remove_logging
from tests.qt.fakes import FakeSession


@pytest.fixture
def make_app(qtbot, tmp_path: Path) -> Iterator[Callable[..., object]]:
    """Build `desktop.app.StudioApp` on a fake session; everything is written under tmp_path."""
    from desktop.app import AppOptions, StudioApp

    apps: list = []

    def build(session: FakeSession | None = None, *, consent: bool = True, show: bool = True,
              metadata: object = None, factory: Callable | None = None, ready_timeout: int = 5000,
              **options) -> StudioApp:
        session = session or FakeSession()
        settings_path = tmp_path / "settings.ini"
        if consent:
            from PySide6.QtCore import QSettings

            s = QSettings(str(settings_path), QSettings.Format.IniFormat)
            s.setValue("consent/accepted", "true")
            s.sync()
        options.setdefault("check_binding", False)
        options.setdefault("preload_faces", False)  # dlib loads only in the tests that use the camera
        opts = AppOptions(models_dir=tmp_path / "models", settings_path=settings_path, log_dir=tmp_path / "logs",
                          data_dir=tmp_path / "data", session_factory=factory or (lambda _cfg: session),
                          metadata=metadata, **options)
        app = StudioApp(opts)
        app.fake = session
        apps.append(app)
        qtbot.addWidget(app.window)
        if show:
            app.window.show()
            qtbot.waitExposed(app.window)
        if opts.start_engine and factory is None:
            qtbot.waitUntil(lambda: app.studio.model_states is not None
                            and (bool(app.studio.catalog) or not session.catalog()), timeout=ready_timeout)
        return app

    yield build
    for app in apps:
        app.shutdown()
        remove_logging(app.log_dir)


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory):
    """The tiny random SD1.5 + W+ adapter of `engine.testing.tiny` (written once per session)."""
    from engine.testing import tiny

    return tiny.cached_tiny_models(tmp_path_factory.getbasetemp())  # shared by the real-engine Qt tests


@pytest.fixture(scope="module")
def decoder_only_models(tiny_models, tmp_path_factory):
    """The tiny models plus an e4e `.safetensors` holding only a reduced StyleGAN2 decoder and latent_avg."""
    import shutil

    import torch
    from safetensors.torch import save_file

    from engine.networks.stylegan2.modules import GeneratorShape
    from engine.testing.stylegan2 import rule_decoder_state

    root = tmp_path_factory.mktemp("dec") / "models"
    shutil.copytree(tiny_models, root)
    flat = {f"decoder.{k}": v.contiguous() for k, v in rule_decoder_state(GeneratorShape.reduced(16)).items()}
    flat["latent_avg"] = torch.zeros(18, 512)
    save_file(flat, str(root / "e4e_ffhq_encode.safetensors"), metadata={"wplus_layout": "e4e", "opts": "{}"})
    return root
