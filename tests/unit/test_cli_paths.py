"""Paths like every command-line tool: relative to the current directory; the README's examples typed
literally in a folder that holds ./models (tiny models) and a photo."""

from __future__ import annotations

import re
import shlex
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from engine.cli import main
from engine.models.folder import resolve_models_dir
from engine.networks.stylegan2.modules import GeneratorShape
from engine.testing.stylegan2 import rule_decoder_state, write_e4e_checkpoint
from engine.testing.tiny import tiny_wplus

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def readme_commands() -> list[list[str]]:
    """The `wplus …` lines of the README's "Command line" block, continuation lines joined."""
    text = (REPO / "README.md").read_text("utf-8")
    block = re.search(r"## Command line\s+```bash\n(.*?)```", text, re.S)
    assert block, "the README has no Command line block"
    joined = block.group(1).replace("\\\n", " ")
    return [shlex.split(line, comments=True) for line in joined.splitlines() if line.strip()]


@pytest.fixture
def workdir(tmp_path, tiny, astronaut, monkeypatch):
    """A folder with ./models (tiny SD1.5 + adapter, a small decoder-only e4e) and photo.jpg; the cwd."""
    shutil.copytree(tiny, tmp_path / "models")
    small = rule_decoder_state(GeneratorShape.reduced(16))
    write_e4e_checkpoint(tmp_path / "models" / "e4e_ffhq_encode.pt", small, encoder=False)
    Image.fromarray(astronaut).save(tmp_path / "photo.jpg", quality=95)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("WPLUS_MODELS_DIR", raising=False)
    return tmp_path


def test_a_models_folder_in_the_current_directory_is_used(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    here, _why = resolve_models_dir(None, None, environ={}, cwd=tmp_path)
    assert here != tmp_path / "models"  # not there yet
    (tmp_path / "models").mkdir()
    assert resolve_models_dir(None, None, environ={}, cwd=tmp_path) == (
        tmp_path / "models", "the models folder in the current directory")
    # the saved setting and the environment still win over it; a relative --models-dir is from the cwd
    assert resolve_models_dir(None, "/s", environ={}, cwd=tmp_path)[0] == Path("/s")
    assert resolve_models_dir("m2", None, environ={}, cwd=tmp_path)[0] == tmp_path / "m2"


# The generate line at its literal 512², 30 steps takes minutes on 2 cores even with the tiny UNet: the fast
# run appends overrides (argparse keeps the last value), the slow run types it exactly.
FAST = ["--steps", "2", "--width", "64", "--height", "64"]


@pytest.mark.parametrize("literal", [pytest.param(True, marks=pytest.mark.slow), False], ids=["literal", "fast"])
def test_readme_examples_typed_literally(workdir, capsys, literal):
    commands = readme_commands()
    assert [c[1] for c in commands] == ["align", "encode", "edit", "generate", "preview", "likeness", "info"]
    assert all(c[0] == "wplus" for c in commands)
    run = {c[1]: c[1:] for c in commands}

    def wplus(args: list[str], expect: int = 0) -> tuple[str, str]:
        code = main(args)
        out, err = capsys.readouterr()
        assert code == expect, err
        return out, err

    wplus(run["align"])
    assert Image.open(workdir / "aligned.png").size == (512, 512)

    # --e4e models/e4e_ffhq_encode.pt is ./models/e4e_ffhq_encode.pt (here: a decoder-only file, so the
    # encoder part is refused — by the name of the file in ./models, converted there once)
    _, err = wplus(run["encode"], expect=1)
    assert f"{workdir / 'models' / 'e4e_ffhq_encode.safetensors'} does not have the e4e" in err
    assert "models/models" not in err
    np.save(workdir / "me.npy", tiny_wplus(5))  # what encode writes with the full-size e4e

    wplus(run["edit"])
    assert np.load(workdir / "me_older.npy").shape == (1, 18, 512)

    out, _ = wplus(run["generate"] + ["--quiet"] + ([] if literal else FAST))
    assert out.strip() == "space.png"
    assert Image.open(workdir / "space.png").size == ((512, 512) if literal else (64, 64))

    wplus(run["preview"])  # the e4e's decoder from ./models
    assert Image.open(workdir / "face.png").size == (256, 256)

    # the tiny SD1.5 paints no face: likeness reads both files and says so about the second one
    _, err = wplus(run["likeness"], expect=1)
    assert "No face was found in the second image." in err

    out, _ = wplus(run["info"])
    assert f"Models folder: {workdir / 'models'} (the models folder in the current directory)" in out


def test_user_paths_are_relative_to_the_current_directory_and_never_fall_back(workdir, capsys):
    np.save(workdir / "w.npy", tiny_wplus(1))
    (workdir / "some" / "dir").mkdir(parents=True)
    code = main(["generate", "--model", "some/dir/sd15", "--wplus", "w.npy", "--steps", "1", "--width", "64",
                 "--height", "64", "--out", "x.png"])
    assert code == 1
    err = capsys.readouterr().err
    assert f"The Stable Diffusion 1.5 model {workdir / 'some' / 'dir' / 'sd15'} does not exist." in err
    assert "relative path is taken from the current directory" in err
    assert not (workdir / "x.png").exists()

    # a relative --models-dir and a relative --adapter outside it, both from the current directory
    shutil.move(workdir / "models", workdir / "some" / "weights")
    shutil.move(workdir / "some" / "weights" / "wplus_adapter.bin", workdir / "adapter.bin")
    code = main(["--models-dir", "some/weights", "generate", "--adapter", "adapter.bin", "--wplus", "w.npy",
                 "--steps", "2", "--width", "64", "--height", "64", "--out", "x.png", "--quiet"])
    assert code == 0, capsys.readouterr().err
    # the pickle the user named is converted once into the models folder's .converted/, not beside it
    assert list((workdir / "some" / "weights" / ".converted").rglob("adapter.safetensors"))
    assert not (workdir / "adapter.safetensors").exists()


def test_out_into_a_missing_folder_creates_it(workdir, capsys):
    np.save(workdir / "w.npy", tiny_wplus(2))
    code = main(["generate", "--wplus", "w.npy", "--steps", "2", "--width", "64", "--height", "64", "--n", "2",
                 "--out", "new/deeper/pic.png", "--quiet"])
    assert code == 0, capsys.readouterr().err
    assert sorted(p.name for p in (workdir / "new" / "deeper").iterdir()) == ["pic-0.png", "pic-1.png"]
    assert main(["edit", "w.npy", "--set", "age=1", "-o", "edits/w2.npy"]) == 0
    assert (workdir / "edits" / "w2.npy").is_file()
    assert main(["preview", "w.npy", "-o", "previews/f.png", "--size", "256"]) == 0
    assert Image.open(workdir / "previews" / "f.png").size == (256, 256)
