"""Resumable model download against a local Range-capable HTTP server on 127.0.0.1."""

from __future__ import annotations

import hashlib
import json
import os

import pytest

from engine.cancel import CancelToken
from engine.errors import Cancelled, ModelCorrupt
from engine.models.fetch import DownloadFailed, fetch
from engine.models.folder import QUARANTINE_DIR
from engine.models.manifest import DownloadFile, ModelEntry
from engine.models.verify import HASHES_FILE
from engine.testing.range_server import RangeServerState, closed_port, range_server

PAYLOAD = bytes((i * 7 + 3) % 251 for i in range(300_000))
SHA = hashlib.sha256(PAYLOAD).hexdigest()


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch):
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)


def entry(url: str, *, sha256: str = SHA, size: int = 0, rel: str = "adapter.bin") -> ModelEntry:
    return ModelEntry(
        id="test-adapter", role="adapter", kind="file", path=rel, required=True,
        downloads=(DownloadFile(rel, url, size, sha256),),
    )


def test_fresh_download_verifies_and_records(tmp_path):
    state = RangeServerState(files={"/a.bin": PAYLOAD})
    seen = []
    with range_server(state) as base:
        paths = fetch(entry(f"{base}/a.bin"), tmp_path, progress=seen.append, chunk_size=64 * 1024)
    assert paths == [tmp_path / "adapter.bin"]
    assert (tmp_path / "adapter.bin").read_bytes() == PAYLOAD
    assert not (tmp_path / "adapter.bin.part").exists()
    assert seen[-1].step == seen[-1].total == len(PAYLOAD)
    assert [p.step for p in seen] == sorted(p.step for p in seen)
    assert seen[-1].eta_s == 0.0
    rec = json.loads((tmp_path / HASHES_FILE).read_text())["files"]["adapter.bin"]
    assert rec["recorded_sha256"] == SHA
    assert rec["recorded_by"] == "fetch"


def test_interrupted_download_resumes_in_the_same_call(tmp_path):
    state = RangeServerState(files={"/a.bin": PAYLOAD}, drop_after={"/a.bin": 100_000})
    with range_server(state) as base:
        fetch(entry(f"{base}/a.bin"), tmp_path, chunk_size=16 * 1024)
    assert (tmp_path / "adapter.bin").read_bytes() == PAYLOAD
    # first request without Range; the second asks only for what is missing
    assert state.requests == [("/a.bin", ""), ("/a.bin", "bytes=100000-")]


def test_interruption_keeps_part_file_and_a_later_call_resumes(tmp_path):
    state = RangeServerState(files={"/a.bin": PAYLOAD}, drop_after={"/a.bin": 123_456})
    with range_server(state) as base:
        with pytest.raises(DownloadFailed, match="interrupted 1 times; 123,456 bytes are kept") as err:
            fetch(entry(f"{base}/a.bin"), tmp_path, retries=0, chunk_size=16 * 1024)
        assert "again to resume" in err.value.hint
        assert not (tmp_path / "adapter.bin").exists()
        assert (tmp_path / "adapter.bin.part").read_bytes() == PAYLOAD[:123_456]
        seen = []
        fetch(entry(f"{base}/a.bin"), tmp_path, progress=seen.append, retries=0)
    assert (tmp_path / "adapter.bin").read_bytes() == PAYLOAD
    assert not (tmp_path / "adapter.bin.part").exists()
    assert state.requests[-1] == ("/a.bin", "bytes=123456-")
    assert seen[0].step > 123_456
    assert seen[-1].total == len(PAYLOAD)


def test_server_ignoring_range_restarts_from_zero(tmp_path):
    state = RangeServerState(files={"/a.bin": PAYLOAD}, ignore_range=True)
    (tmp_path / "adapter.bin.part").write_bytes(b"\xff" * 5000)  # stale bytes that must not survive
    with range_server(state) as base:
        fetch(entry(f"{base}/a.bin"), tmp_path)
    assert (tmp_path / "adapter.bin").read_bytes() == PAYLOAD
    assert state.requests == [("/a.bin", "bytes=5000-")]


def test_complete_part_file_is_finished_without_a_body(tmp_path):
    state = RangeServerState(files={"/a.bin": PAYLOAD})
    (tmp_path / "adapter.bin.part").write_bytes(PAYLOAD)
    with range_server(state) as base:
        fetch(entry(f"{base}/a.bin", size=len(PAYLOAD)), tmp_path)
    assert (tmp_path / "adapter.bin").read_bytes() == PAYLOAD
    assert state.requests == [("/a.bin", f"bytes={len(PAYLOAD)}-")]


def test_wrong_checksum_quarantines_the_file(tmp_path):
    bad = PAYLOAD[:-1] + b"\x00"
    state = RangeServerState(files={"/a.bin": bad})
    with range_server(state) as base, pytest.raises(ModelCorrupt) as err:
        fetch(entry(f"{base}/a.bin"), tmp_path)
    msg = err.value.user_message
    assert "has sha256" in msg
    assert f"expected {SHA[:16]}" in msg
    assert "moved to" in msg
    assert "trusted copy" in err.value.hint
    assert not (tmp_path / "adapter.bin").exists()
    assert not (tmp_path / "adapter.bin.part").exists()
    quarantined = [p for p in (tmp_path / QUARANTINE_DIR).iterdir() if not p.name.endswith(".txt")]
    assert len(quarantined) == 1
    assert quarantined[0].read_bytes() == bad
    assert str(quarantined[0]) in msg


def test_wrong_size_quarantines_the_file(tmp_path):
    state = RangeServerState(files={"/a.bin": PAYLOAD})
    with range_server(state) as base, pytest.raises(DownloadFailed, match=r"offers 300,000 bytes but adapter\.bin should be 300,001"):
        fetch(entry(f"{base}/a.bin", size=len(PAYLOAD) + 1, sha256=""), tmp_path)
    assert not (tmp_path / "adapter.bin").exists()


def test_no_network_is_a_clear_error_and_nothing_is_written(tmp_path):
    url = f"http://127.0.0.1:{closed_port()}/a.bin"
    with pytest.raises(DownloadFailed) as err:
        fetch(entry(url), tmp_path)
    assert "refused the connection" in err.value.user_message
    assert "wplus models import" in err.value.hint
    assert not (tmp_path / "adapter.bin").exists()
    assert not (tmp_path / "adapter.bin.part").exists()


def test_http_404_names_the_url(tmp_path):
    state = RangeServerState(files={})
    with range_server(state) as base, pytest.raises(DownloadFailed, match="HTTP 404"):
        fetch(entry(f"{base}/gone.bin"), tmp_path)
    assert os.listdir(tmp_path) == []


def test_cancel_keeps_part_for_resume(tmp_path):
    state = RangeServerState(files={"/a.bin": PAYLOAD})
    token = CancelToken()

    def progress(p):
        if p.step >= 64 * 1024:
            token.cancel()

    with range_server(state) as base:
        with pytest.raises(Cancelled):
            fetch(entry(f"{base}/a.bin"), tmp_path, progress=progress, token=token, chunk_size=32 * 1024)
        kept = (tmp_path / "adapter.bin.part").stat().st_size
        assert 0 < kept < len(PAYLOAD)
        assert not (tmp_path / "adapter.bin").exists()
        fetch(entry(f"{base}/a.bin"), tmp_path)
    assert state.requests[-1] == ("/a.bin", f"bytes={kept}-")
    assert (tmp_path / "adapter.bin").read_bytes() == PAYLOAD


def test_present_and_verified_file_is_not_downloaded_again(tmp_path):
    (tmp_path / "adapter.bin").write_bytes(PAYLOAD)
    state = RangeServerState(files={"/a.bin": PAYLOAD})
    with range_server(state) as base:
        fetch(entry(f"{base}/a.bin"), tmp_path)
    assert state.requests == []


def test_bundled_and_sourceless_entries_are_refused(tmp_path):
    from engine.errors import EngineError

    bundled = ModelEntry(id="dlib", role="landmarks", kind="bundled", path="x.dat")
    with pytest.raises(EngineError, match="ships with W\\+ Studio"):
        fetch(bundled, tmp_path)
    nourl = ModelEntry(id="manual", role="x", kind="file", path="x.bin", source_url="https://example.org")
    with pytest.raises(EngineError, match="no download address"):
        fetch(nourl, tmp_path)
