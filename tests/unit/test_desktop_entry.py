"""The desktop entry and the Windows "Open with" registration shipped in the bundle (packaging/share/)."""

from __future__ import annotations

import configparser
import subprocess
import sys

from tests.conftest import REPO

SHARE = REPO / "packaging" / "share"


def test_desktop_entry_opens_photos_with_one_file_argument():
    entry = configparser.ConfigParser(interpolation=None)
    entry.optionxform = str  # keys are case-sensitive
    entry.read(SHARE / "wplus-studio.desktop", encoding="utf-8")
    d = entry["Desktop Entry"]
    assert d["Type"] == "Application"
    assert d["Exec"] == "@EXEC@ %f"
    assert set(d["MimeType"].rstrip(";").split(";")) == {"image/jpeg", "image/png", "image/webp", "image/bmp"}
    assert d["Terminal"] == "false"


def test_install_script_fills_in_the_bundle_paths(tmp_path):
    bundle = tmp_path / "WPlusStudio"
    share = bundle / "_internal" / "share"
    share.mkdir(parents=True)
    for name in ("wplus-studio.desktop", "install-desktop-entry.sh"):
        (share / name).write_bytes((SHARE / name).read_bytes())
    exe = bundle / "wplus-studio"
    exe.write_text("#!/bin/sh\n")
    exe.chmod(0o755)
    out = subprocess.run(["sh", str(share / "install-desktop-entry.sh")], capture_output=True, text=True,
                         env={"XDG_DATA_HOME": str(tmp_path / "data"), "HOME": str(tmp_path), "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr
    text = (tmp_path / "data" / "applications" / "wplus-studio.desktop").read_text("utf-8")
    assert f'Exec="{exe}" %f' in text
    assert f"Icon={bundle}/_internal/resources/icons/app.svg" in text
    assert "@" not in text


def test_the_bundle_ships_the_registration_files():
    sys.path.insert(0, str(REPO / "packaging"))
    try:
        import spec_support
    finally:
        sys.path.remove(str(REPO / "packaging"))
    plan = spec_support.bundle_plan(REPO)
    assert (str(SHARE), "share") in plan.datas
    cmd = (SHARE / "register-windows.cmd").read_text("utf-8")
    assert '\\"%EXE%\\" \\"%%1\\"' in cmd  # the file reaches the app as its one argument
    for ext in (".jpg", ".jpeg", ".png", ".webp", ".bmp"):
        assert ext in cmd


def test_files_on_the_command_line_reach_the_app_relative_to_the_current_directory(tmp_path, monkeypatch):
    import desktop.app
    from desktop.__main__ import main

    seen = []
    monkeypatch.setattr(desktop.app, "run", lambda options: seen.append(options) or 0)
    monkeypatch.chdir(tmp_path)
    assert main(["photo.jpg", "--debug"]) == 0
    assert seen[0].open_files == (tmp_path / "photo.jpg",)
    assert seen[0].debug
    assert main([]) == 0
    assert seen[1].open_files == ()
