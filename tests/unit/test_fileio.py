"""Atomic output: a failure never leaves a partial file, a full disk says so."""

from __future__ import annotations

import errno

import pytest

from engine.errors import StorageError
from engine.fileio import atomic_open, atomic_write_bytes


def test_success_replaces_the_target(tmp_path):
    target = tmp_path / "out" / "image.png"
    atomic_write_bytes(target, b"first")
    atomic_write_bytes(target, b"second")
    assert target.read_bytes() == b"second"
    assert sorted(p.name for p in target.parent.iterdir()) == ["image.png"]


def test_failure_midway_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "w.npy"
    target.write_bytes(b"old")

    def crash_midway():
        with atomic_open(target) as fh:
            fh.write(b"half of the new content")
            raise RuntimeError("encoder crashed")

    with pytest.raises(RuntimeError):
        crash_midway()
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["w.npy"]


def test_full_disk_is_a_storage_error_with_advice(tmp_path):
    target = tmp_path / "big.png"

    def disk_full():
        with atomic_open(target):
            raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(StorageError, match="disk is full") as info:
        disk_full()
    assert "Free some space" in info.value.hint
    assert not target.exists()
    assert list(tmp_path.iterdir()) == []
