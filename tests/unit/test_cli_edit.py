"""`wplus edit` end to end through the `wplus` dispatcher."""

from __future__ import annotations

import zipfile

import numpy as np
import pytest
import torch

from engine.cli import main
from engine.edits.directions import DirectionLibrary
from engine.edits.wplus_files import read_wplus


@pytest.fixture
def w(tmp_path):
    arr = (0.14 + 0.47 * np.random.default_rng(7).standard_normal((1, 18, 512))).astype(np.float32)
    path = tmp_path / "w.npy"
    np.save(path, arr)
    return arr, path


def test_edit_npy(tmp_path, w, capsys):
    arr, path = w
    out = tmp_path / "sub" / "w2.npy"
    assert main(["edit", str(path), "--set", "age=2", "--set", "smile=-1", "-o", str(out)]) == 0
    expected = DirectionLibrary.load_default().apply(arr, {"age": 2.0, "smile": -1.0})
    np.testing.assert_array_equal(np.load(out), expected)
    assert "age=+2" in capsys.readouterr().out
    assert [p.name for p in out.parent.iterdir()] == ["w2.npy"]  # no temporary file left behind


def test_edit_official_pth(tmp_path, w):
    arr, _ = w
    pth = tmp_path / "1.pth"
    torch.save(torch.from_numpy(arr).requires_grad_(True), pth)  # like the official CUDA-saved files
    out = tmp_path / "o.npy"
    assert main(["edit", str(pth), "--set", "lipstick=5", "-o", str(out)]) == 0
    np.testing.assert_array_equal(np.load(out), DirectionLibrary.load_default().apply(arr, {"lipstick": 5.0}))
    np.testing.assert_array_equal(read_wplus(pth), arr)


def _as_if_saved_on_cuda(src, dst):
    """Rewrite a torch.save zip so its storage says 'cuda:0', like the official W+ files."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", compression=zipfile.ZIP_STORED) as zout:
        for info in zin.infolist():
            data = zin.read(info.filename)
            if info.filename.endswith("data.pkl"):
                assert data.count(b"X\x03\x00\x00\x00cpu") == 1
                data = data.replace(b"X\x03\x00\x00\x00cpu", b"X\x06\x00\x00\x00cuda:0")
            zout.writestr(info, data)


def test_edit_cuda_saved_official_pth(tmp_path, w):
    arr, _ = w
    cpu, cuda = tmp_path / "cpu.pth", tmp_path / "1.pth"
    torch.save(torch.from_numpy(arr).requires_grad_(True), cpu)
    _as_if_saved_on_cuda(cpu, cuda)
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="CUDA"):
            torch.load(cuda, weights_only=True)  # what a loader without map_location would hit
    out = tmp_path / "o.npy"
    assert main(["edit", str(cuda), "--set", "age=1", "-o", str(out)]) == 0
    np.testing.assert_array_equal(np.load(out), DirectionLibrary.load_default().apply(arr, {"age": 1.0}))


def test_edit_towards(tmp_path, w):
    arr, path = w
    other = tmp_path / "b.npy"
    b = np.zeros((1, 18, 512), np.float32)
    np.save(other, b)
    out = tmp_path / "mix.npy"
    assert main(["edit", str(path), "--towards", str(other), "-t", "0.5", "-o", str(out)]) == 0
    np.testing.assert_allclose(np.load(out), 0.5 * arr, atol=1e-7, rtol=0)


def test_edit_list(capsys):
    assert main(["edit", "--list"]) == 0
    text = capsys.readouterr().out
    assert "Expression" in text
    assert "smile_gs" in text
    assert "race_" not in text


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--set", "smiel=1"], "Unknown edit 'smiel'"),
        (["--set", "smiel=0"], "Unknown edit 'smiel'"),
        (["--set", "age"], "Cannot read the edit 'age'"),
        (["--set", "age=nan"], "Cannot read the edit"),
        (["--set", "race_black=1"], "not available"),
    ],
)
def test_edit_errors_exit_1_with_a_message(tmp_path, w, capsys, argv, message):
    _, path = w
    out = tmp_path / "x.npy"
    assert main(["edit", str(path), *argv, "-o", str(out)]) == 1
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_edit_refuses_bad_files(tmp_path, w, capsys):
    _, path = w
    assert main(["edit", str(path), "--set", "age=1", "-o", str(tmp_path / "x.pth")]) == 1
    assert ".npy" in capsys.readouterr().err
    bad = tmp_path / "bad.npy"
    np.save(bad, np.zeros((2, 18, 512), np.float32))
    assert main(["edit", str(bad), "-o", str(tmp_path / "y.npy")]) == 1
    assert "1×18×512" in capsys.readouterr().err
    assert main(["edit", str(tmp_path / "missing.npy"), "-o", str(tmp_path / "y.npy")]) == 1
    assert "not found" in capsys.readouterr().err
