"""Which models folder the engine uses, and why (one rule for the CLI, `wplus-export` and the app).

First match wins:

1. `--models-dir` (the CLI option or the app's command line);
2. the `WPLUS_MODELS_DIR` environment variable;
3. the folder saved in the app's settings (passed in by the desktop);
4. a `models/` folder in the current directory, if it exists (as the README's examples assume);
5. a `models/` folder beside the frozen executable, or at the root of a source checkout, if it exists;
6. the user data folder (platformdirs: e.g. `~/.local/share/WPlusStudio/models`).

Nothing is created here. Relative paths are taken relative to the current directory. Also here: the
folder's hidden subfolders (`.quarantine/` for refused files, `.converted/` for safetensors copies of
pickles that are not the manifest's own files, see `engine.models.converted`).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import sys
import time
from collections.abc import Mapping
from pathlib import Path

log = logging.getLogger(__name__)

APP_NAME = "WPlusStudio"
ENV_MODELS_DIR = "WPLUS_MODELS_DIR"
QUARANTINE_DIR = ".quarantine"
CONVERTED_DIR = ".converted"


def user_path(value: str | os.PathLike[str], cwd: Path | None = None) -> Path:
    """A path the user typed: `~` and `$VARS` expanded, relative to the current directory, made absolute."""
    p = Path(os.path.expandvars(os.path.expanduser(str(value).strip())))
    return p if p.is_absolute() else (cwd or Path.cwd()) / p


def _given(value: str | os.PathLike[str] | None, cwd: Path | None) -> Path | None:
    if value is None or str(value).strip() == "":
        return None
    return user_path(value, cwd)


def user_data_models_dir() -> Path:
    import platformdirs

    return Path(platformdirs.user_data_dir(APP_NAME, appauthor=False)) / "models"


def user_cache_dir() -> Path:
    import platformdirs

    return Path(platformdirs.user_cache_dir(APP_NAME, appauthor=False))


def resolve_models_dir(
    cli_value: str | os.PathLike[str] | None,
    settings_value: str | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> tuple[Path, str]:
    """Pick the models folder (the rules are in the module docstring).

    Args:
        cli_value: `--models-dir` as typed (relative to `cwd`), or None.
        settings_value: the folder saved in the app settings, or None.
        environ: the environment (default `os.environ`).
        cwd: the current directory (default `Path.cwd()`).

    Returns:
        (absolute folder, a sentence saying which rule chose it and why), for the UI and `models list`.
    """
    env = os.environ if environ is None else environ
    if (p := _given(cli_value, cwd)) is not None:
        return p, "chosen by --models-dir"
    if (p := _given(env.get(ENV_MODELS_DIR), cwd)) is not None:
        return p, f"chosen by the {ENV_MODELS_DIR} environment variable"
    if (p := _given(settings_value, cwd)) is not None:
        return p, "chosen in the app settings"
    here = (cwd or Path.cwd()) / "models"
    if here.is_dir():
        return here, "the models folder in the current directory"
    if getattr(sys, "frozen", False):
        beside = Path(sys.executable).resolve().parent / "models"
        if beside.is_dir():
            return beside, "a models folder beside the application"
    else:
        checkout = Path(__file__).resolve().parents[2] / "models"
        if checkout.is_dir():
            return checkout, "the models folder of this source checkout"
    return user_data_models_dir(), (
        f"the default in your user data folder (no --models-dir, no {ENV_MODELS_DIR}, no saved setting, "
        "no models folder in the current directory or beside the application)"
    )


def writable_subdir(models_dir: Path, name: str, cache_dir: Path | None = None) -> Path:
    """`<models>/<name>` when the models folder exists and can be written, else a folder of the user
    cache dir (an unplugged or read-only drive gets nothing written to it).

    The cache-dir variant is tagged with the models folder so two folders never share it.
    """
    models_dir = Path(models_dir)
    if (models_dir / name).is_dir() and os.access(models_dir / name, os.W_OK):
        return models_dir / name
    if models_dir.is_dir() and os.access(models_dir, os.W_OK):
        return models_dir / name
    return fallback_subdir(models_dir, name, cache_dir)


def fallback_subdir(models_dir: Path, name: str, cache_dir: Path | None = None) -> Path:
    """The user-cache folder `writable_subdir` uses for `<models>/<name>` when the models folder is read-only."""
    tag = hashlib.sha1(str(Path(models_dir).resolve()).encode()).hexdigest()[:12]
    return (cache_dir or user_cache_dir()) / f"{name.lstrip('.')}-{tag}"


def quarantine(path: Path, models_dir: Path, reason: str) -> Path:
    """Move a bad file to `<models>/.quarantine/` (never deleted: the user may want to inspect it)."""
    qdir = models_dir / QUARANTINE_DIR
    qdir.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    name = Path(path).name.removesuffix(".part")
    target = qdir / f"{name}.{stamp}"
    n = 1
    while target.exists():
        n += 1
        target = qdir / f"{name}.{stamp}-{n}"
    os.replace(path, target)
    with contextlib.suppress(OSError):
        (qdir / f"{target.name}.txt").write_text(reason + "\n", "utf-8")
    log.warning("quarantined %s: %s", target, reason)
    return target
