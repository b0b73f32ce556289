"""`wplus models …`: output, exit codes and error messages (run in-process through engine.cli.main)."""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import pytest

from engine.api import Progress
from engine.cli import main
from engine.cli.models import TerminalProgress
from engine.testing.range_server import RangeServerState, closed_port, range_server

ADAPTER = b"cli adapter " * 100
ADAPTER_SHA = hashlib.sha256(ADAPTER).hexdigest()


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch):
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.delenv("WPLUS_MODELS_DIR", raising=False)


def write_manifest(tmp_path: Path, url: str = "http://127.0.0.1:9/adapter.bin") -> Path:
    p = tmp_path / "models.toml"
    p.write_text(
        f"""
schema = 1
[[model]]
id = "adapter"
role = "adapter"
kind = "file"
path = "wplus_adapter.bin"
required = true
sha256 = "{ADAPTER_SHA}"
licence = "S-Lab License 1.0 (non-commercial)"
source_url = "https://example.invalid/adapter"
url = "{url}"
[[model]]
id = "stage1"
role = "adapter_stage1"
kind = "file"
path = "wplus_adapter_stage1.bin"
licence = "S-Lab License 1.0 (non-commercial)"
"""
    )
    return p


def run(tmp_path: Path, *args: str, manifest: Path | None = None) -> int:
    man = manifest or write_manifest(tmp_path)
    return main(["--models-dir", str(tmp_path / "models"), "models", "--manifest", str(man), *args])


def test_list_shows_folder_reason_and_states(tmp_path, capsys):
    assert run(tmp_path, "list", "--licences") == 0
    out = capsys.readouterr().out
    assert f"models folder: {tmp_path / 'models'} (chosen by --models-dir)" in out
    assert "adapter" in out
    assert "missing" in out
    assert "missing required models: adapter" in out
    assert "S-Lab License 1.0" in out


def test_list_json(tmp_path, capsys):
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "wplus_adapter.bin").write_bytes(ADAPTER)
    assert run(tmp_path, "list", "--json") == 0
    data = json.loads(capsys.readouterr().out)
    assert data["chosen_because"] == "chosen by --models-dir"
    states = {m["id"]: m["status"] for m in data["models"]}
    assert states == {"adapter": "unverified", "stage1": "missing"}


def test_verify_exit_codes(tmp_path, capsys):
    assert run(tmp_path, "verify") == 1
    err = capsys.readouterr().err
    assert "1 model(s) missing or damaged: adapter" in err
    assert "Traceback" not in err
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "wplus_adapter.bin").write_bytes(ADAPTER)
    assert run(tmp_path, "verify") == 0  # the optional stage1 may be missing
    assert "sha256 verified" in capsys.readouterr().out
    assert run(tmp_path, "verify", "stage1") == 1  # named explicitly: it must be there
    (tmp_path / "models" / "wplus_adapter.bin").write_bytes(ADAPTER[::-1])
    assert run(tmp_path, "verify") == 1
    assert "does not match the published" in capsys.readouterr().out


def test_fetch_from_a_local_server(tmp_path, capsys):
    state = RangeServerState(files={"/adapter.bin": ADAPTER}, drop_after={"/adapter.bin": 500})
    with range_server(state) as base:
        man = write_manifest(tmp_path, f"{base}/adapter.bin")
        assert run(tmp_path, "fetch", manifest=man) == 0
        out = capsys.readouterr().out
        assert "adapter: downloading — licence: S-Lab License 1.0" in out
        assert (tmp_path / "models" / "wplus_adapter.bin").read_bytes() == ADAPTER
        assert run(tmp_path, "fetch", manifest=man) == 0
        assert "adapter: already present" in capsys.readouterr().out
    assert len(state.requests) == 2  # one interrupted, one resumed; the second run asked nothing


def test_fetch_without_network_is_a_clear_error(tmp_path, capsys):
    man = write_manifest(tmp_path, f"http://127.0.0.1:{closed_port()}/adapter.bin")
    assert run(tmp_path, "fetch", manifest=man) == 1
    err = capsys.readouterr().err
    assert "error: adapter: Download failed:" in err
    assert "hint: On an offline machine" in err
    assert "Traceback" not in err
    assert not (tmp_path / "models" / "wplus_adapter.bin").exists()


def test_import_folder_and_errors(tmp_path, capsys):
    src = tmp_path / "usb"
    src.mkdir()
    (src / "renamed.bin").write_bytes(ADAPTER)
    assert run(tmp_path, "import", str(src)) == 0
    out = capsys.readouterr().out
    assert "copied: adapter ←" in out
    assert "(recognised by sha256)" in out
    empty = tmp_path / "empty"
    empty.mkdir()
    assert run(tmp_path, "import", str(empty)) == 1
    assert "no model files recognised" in capsys.readouterr().err
    assert run(tmp_path, "import", str(tmp_path / "nowhere")) == 1
    err = capsys.readouterr().err
    assert "does not exist" in err
    assert "Traceback" not in err


def test_convert(tmp_path, capsys):
    import torch
    src = tmp_path / "parse_multi_iter_90000.pth"
    torch.save({"w": torch.arange(6.0)}, src)
    assert main(["models", "convert", str(src), "-o", str(tmp_path / "out.safetensors")]) == 0
    assert "wrote" in capsys.readouterr().out
    from safetensors.torch import load_file

    assert torch.equal(load_file(tmp_path / "out.safetensors")["w"], torch.arange(6.0))
    (tmp_path / "garbage.pth").write_bytes(b"not a checkpoint")
    assert main(["models", "convert", str(tmp_path / "garbage.pth")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ")
    assert "Traceback" not in err


def test_usage_errors_exit_2(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["models", "frobnicate"])
    assert exc.value.code == 2
    assert main(["models"]) == 2


def test_progress_line():
    line = TerminalProgress.render(Progress("downloading wplus_adapter.bin", 50_000_000, 100_000_000, 10.0))
    assert "[############------------]  50.0%" in line
    assert "50.0 MB/100.0 MB" in line
    assert "5.0 MB/s" in line
    assert "ETA 0:10" in line
    stream = io.StringIO()  # not a terminal: plain lines, no carriage returns
    bar = TerminalProgress(stream)
    bar(Progress("importing x", 10, 10_000))
    bar(Progress("importing x", 10_000, 10_000))
    bar.finish()
    assert stream.getvalue() == "importing x …\nimporting x: 10.0 KB\n"


# -- clean ---------------------------------------------------------------------------------------------


def _own_bytes(folder: Path) -> int:
    """Bytes of the files only this folder holds (a hard link to a user's file frees nothing)."""
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file() and not f.is_symlink() and f.stat().st_nlink == 1)


def test_clean_removes_copies_of_gone_or_changed_sources_and_nothing_else(tmp_path, capsys):
    import os

    import torch

    from engine.models.converted import converted_copy

    models, work = tmp_path / "models", tmp_path / "work"
    models.mkdir()
    work.mkdir()
    for name in ("kept", "deleted", "changed"):
        torch.save({"w": torch.arange(64.0)}, work / f"{name}.pth")
    copies = {name: converted_copy(work / f"{name}.pth", models).parent for name in ("kept", "deleted", "changed")}
    vae = work / "my-vae"  # a diffusers folder: its config is hard-linked into the copy
    vae.mkdir()
    (vae / "config.json").write_text('{"mine": 1}')
    torch.save({"w": torch.arange(32.0)}, vae / "diffusion_pytorch_model.bin")
    copies["folder"] = converted_copy(vae, models).parent
    old = models / ".converted" / "0123456789ab"  # made before copies recorded their source
    old.mkdir()
    (old / "x.safetensors").write_bytes(b"x" * 100)
    # user files: beside the store, inside it under other names, and a link to a user's folder
    (models / "e4e_ffhq_encode.safetensors").write_bytes(b"user")
    (models / ".converted" / "README.txt").write_text("mine")
    (models / ".converted" / "notes").mkdir()
    (models / ".converted" / "notes" / "n.txt").write_text("mine")
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "p.safetensors").write_bytes(b"p")
    (models / ".converted" / "abcdef012345").symlink_to(precious, target_is_directory=True)

    (work / "deleted.pth").unlink()
    torch.save({"w": torch.arange(65.0)}, work / "changed.pth")
    st = (vae / "config.json").stat()
    os.utime(vae / "config.json", ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    stale = [copies["deleted"], copies["changed"], copies["folder"], old]
    expected = sum(_own_bytes(d) for d in stale)
    assert expected < sum(f.stat().st_size for d in stale for f in d.rglob("*") if f.is_file())  # the link

    capsys.readouterr()
    assert run(tmp_path, "clean", "--dry-run") == 0
    out = capsys.readouterr().out
    assert all(d.exists() for d in copies.values())
    assert out.count("would remove: ") == 4
    assert f"({expected:,} bytes) would be freed" in out

    assert run(tmp_path, "clean") == 0
    out = capsys.readouterr().out
    assert {d for d in copies.values() if d.exists()} == {copies["kept"]}
    assert not old.exists()
    assert "removed 4 converted copies, " in out
    assert f"({expected:,} bytes) freed" in out
    assert f"source gone: {work / 'deleted.pth'}" in out
    assert f"source changed: {work / 'changed.pth'}" in out
    assert "unknown source" in out
    # nothing outside the TAG folders was touched
    assert (vae / "config.json").read_text() == '{"mine": 1}'
    assert (vae / "diffusion_pytorch_model.bin").is_file()
    assert (models / "e4e_ffhq_encode.safetensors").read_bytes() == b"user"
    assert (models / ".converted" / "README.txt").read_text() == "mine"
    assert (models / ".converted" / "notes" / "n.txt").read_text() == "mine"
    assert (precious / "p.safetensors").read_bytes() == b"p"
    assert (models / ".converted" / "abcdef012345").is_symlink()

    kept = _own_bytes(copies["kept"])
    assert run(tmp_path, "clean", "--all") == 0
    out = capsys.readouterr().out
    assert not copies["kept"].exists()
    assert "removed 1 converted copy, " in out
    assert f"({kept:,} bytes) freed" in out
    assert (work / "kept.pth").is_file()
    # rebuilt on demand
    assert converted_copy(work / "kept.pth", models).is_file()


def test_clean_without_converted_copies(tmp_path, capsys):
    (tmp_path / "models").mkdir()
    assert run(tmp_path, "clean") == 0
    assert "no converted copies" in capsys.readouterr().out
