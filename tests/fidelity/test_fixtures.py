"""The official fixtures in the repository are complete and unchanged (SHA256SUMS pins every file)."""

from __future__ import annotations

import hashlib


def test_every_fixture_matches_its_recorded_hash(fixtures_dir):
    lines = (fixtures_dir / "SHA256SUMS").read_text().splitlines()
    recorded = dict(reversed(line.split(maxsplit=1)) for line in lines if line.strip())
    assert len(recorded) == 34
    present = {p.name for p in fixtures_dir.iterdir()} - {"README.md", "SHA256SUMS"}
    assert present == set(recorded), "fixture files and SHA256SUMS disagree"
    for name, digest in recorded.items():
        assert hashlib.sha256((fixtures_dir / name).read_bytes()).hexdigest() == digest, name
