"""`--backend` on the CLI, the self-test rendering on the backend it names, and no import cycles in backends."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

from engine.cli import build_parser
from engine.cli.common import config_from_args

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    "argv",
    [
        ["generate", "--out", "x.png"],
        ["encode", "photo.jpg", "-o", "w.npy"],
        ["preview", "w.npy", "-o", "face.png"],
    ],
)
def test_backend_option_reaches_the_config(argv):
    parser = build_parser()
    assert config_from_args(parser.parse_args(argv)).backend == "auto"
    for backend in ("torch", "onnxruntime", "tensorrt", "auto"):
        args = parser.parse_args([*argv, "--backend", backend])
        assert config_from_args(args).backend == backend


def test_unknown_backend_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(["generate", "--out", "x.png", "--backend", "cuda"])
    assert exc.value.code == 2
    assert "invalid choice: 'cuda'" in capsys.readouterr().err


def test_no_import_cycles_in_backends():
    """Function-level imports count too: a cycle hidden in a function is still a cycle."""
    folder = REPO / "engine" / "backends"
    deps: dict[str, set[str]] = {}
    for path in folder.glob("*.py"):
        names: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module:
                names.add(node.module)
            elif isinstance(node, ast.Import):
                names.update(a.name for a in node.names)
        deps[path.stem] = {n.rsplit(".", 1)[1] for n in names if n.startswith("engine.backends.")}
    assert deps["select"] >= {"ort_backend", "trt_backend"}  # the scan sees function-level imports

    def reach(start: str) -> set[str]:
        seen: set[str] = set()
        todo = list(deps.get(start, ()))
        while todo:
            m = todo.pop()
            if m not in seen:
                seen.add(m)
                todo.extend(deps.get(m, ()))
        return seen

    cycles = sorted(m for m in deps if m in reach(m))
    assert cycles == []


def _clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WPLUS_")}
    env.update(QT_QPA_PLATFORM="offscreen", HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    return env


def test_self_test_refuses_a_backend_that_falls_back(tmp_path, monkeypatch):
    """Without its exports the pipeline would run on torch: the step fails and says why."""
    import desktop.selftest as selftest
    import export.prepare

    monkeypatch.setattr(export.prepare, "prepare_backend", lambda *a, **k: [])
    with pytest.raises(selftest._Failed, match=r"did not open on onnxruntime: Running on torch \(cpu\) instead of "
                                                r"onnxruntime: onnxruntime is unavailable: ONNX Runtime needs "
                                                r"exported models"):
        selftest._step_render(tmp_path, "onnxruntime")


@pytest.mark.skipif(__import__("importlib").util.find_spec("tensorrt") is not None,
                    reason="tensorrt is installed here")
def test_self_test_fails_at_the_backend_step_without_tensorrt():
    code = "from desktop.selftest import run_self_test; raise SystemExit(run_self_test(backend='tensorrt'))"
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=_clean_env(), capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 1
    assert "[FAIL] backend: tensorrt cannot run here: TensorRT is not installed" in proc.stdout
    assert "[ ok ] render" not in proc.stdout


@pytest.mark.slow
def test_self_test_renders_on_onnxruntime():
    """Exports the tiny models and renders from the exports (minutes on a busy 2-core machine)."""
    pytest.importorskip("onnxruntime")
    code = "from desktop.selftest import run_self_test; raise SystemExit(run_self_test(backend='onnxruntime'))"
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=_clean_env(), capture_output=True, text=True,
                          timeout=1200)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "[ ok ] backend: onnxruntime" in proc.stdout
    assert "2 steps rendered on onnxruntime (cpu)" in proc.stdout
    assert "self-test passed" in proc.stdout
