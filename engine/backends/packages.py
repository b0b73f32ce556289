"""Which Python distributions are installed, and the one install conflict the backends must refuse.

Kept below `select` and `ort_backend` (both need it) so neither imports the other for it.
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import Iterable

ORT_CPU = "onnxruntime"
ORT_GPU = "onnxruntime-gpu"
# Other ONNX Runtime builds that install the same `onnxruntime` module.
ORT_VARIANTS = (ORT_CPU, ORT_GPU, "onnxruntime-directml", "onnxruntime-openvino", "onnxruntime-training")


def normalise(name: str) -> str:
    """A distribution name as pip compares them: lower case, '-' for '_'."""
    return name.strip().lower().replace("_", "-")


def installed_distributions() -> list[str]:
    """Names of the installed Python distributions (normalised: lower case, '-')."""
    return sorted({normalise(d.metadata["Name"] or "") for d in importlib.metadata.distributions()} - {""})


def onnxruntime_conflict(distributions: Iterable[str] | None = None) -> str | None:
    """A message when several ONNX Runtime packages are installed together, else None.

    onnxruntime and onnxruntime-gpu install the same `onnxruntime` module; with both, whichever was
    installed last wins file by file and the result may have no CUDA provider or fail to load.

    Args:
        distributions: installed distribution names (defaults to what importlib.metadata finds);
            tests pass a list.
    """
    names = {normalise(d) for d in (installed_distributions() if distributions is None else distributions)}
    found = [v for v in ORT_VARIANTS if v in names]
    if len(found) < 2:
        return None
    keep = ORT_GPU if ORT_GPU in found else found[0]
    drop = [f for f in found if f != keep]
    return (
        f"Both {' and '.join(found)} are installed; they provide the same 'onnxruntime' module and break each "
        f"other. Uninstall {', '.join(drop)} (pip uninstall {' '.join(drop)}), then reinstall {keep} "
        f"(pip install --force-reinstall {keep})."
    )
