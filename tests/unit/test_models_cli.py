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
