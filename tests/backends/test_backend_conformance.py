"""Backend conformance, in the style of diffusers' tester mixins: one class of checks, one subclass per backend.

Every check runs on every IO-spec component (SD1.5 parts, e4e, the face parser, the StyleGAN2 preview)
with tiny real models: the same IO names and shapes as the spec, float32 outputs, dynamic batch (and
image size where the spec has one), the W+ scale as a runtime input, agreement with the torch model
within the exporter's tolerances, and refusal of wrong or out-of-profile inputs with a sentence that
names the input. A new backend gets all of it by subclassing `BackendConformance`; a new component
by being declared in `IO_SPEC` (and given a tiny model in conftest).
"""

from __future__ import annotations

import importlib.util
from typing import Any, ClassVar

import pytest
import torch

from engine.backends.base import IO_SPEC
from engine.errors import InvalidInput
from export.components import example_inputs, run_torch
from export.verify import TOLERANCES, Tolerance, compare

COMPONENTS = tuple(IO_SPEC)
SPATIAL = tuple(c for c in COMPONENTS if any("H" in t.dims for t in IO_SPEC[c].inputs))
MULTI_BATCH = tuple(c for c in COMPONENTS if sum(1 for t in IO_SPEC[c].inputs if t.dims[:1] == ("B",)) > 1)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tensorrt_skip_reason() -> str | None:
    """Why the TensorRT class cannot run here (None: it can)."""
    if importlib.util.find_spec("tensorrt") is None:
        return "tensorrt is not importable here (pip install tensorrt; NVIDIA GPUs only)"
    if not torch.cuda.is_available():
        return "TensorRT needs a CUDA GPU; none is visible"
    return None


def _inputs(component: str, profile: Any, *, seed: int = 0, batch: int | None = None,
            side: tuple[int, int] | None = None) -> dict[str, torch.Tensor]:
    """Seeded inputs; `batch` and `side` (latent H, W) override the profile's opt sizes."""
    spec = IO_SPEC[component]
    shapes = {}
    for t in spec.inputs:
        shape = list(profile.shapes(t, "opt"))
        for axis, d in enumerate(t.dims):
            if d == "B" and batch is not None:
                shape[axis] = batch
            elif d == "H" and side is not None:
                shape[axis] = side[0]
            elif d == "W" and side is not None:
                shape[axis] = side[1]
        shapes[t.name] = tuple(shape)
    return example_inputs(component, profile, seed=seed, shapes=shapes)


class BackendConformance:
    """The checks every backend's runners must pass. Subclasses say how to build the runners."""

    backend: ClassVar[str]
    has_profile: ClassVar[bool] = True  # refuses shapes outside the export's profile
    precision: ClassVar[str] = "fp32"  # which tolerance table applies

    def make_runners(self, request: pytest.FixtureRequest) -> Any:
        raise NotImplementedError

    @pytest.fixture(scope="class")
    def runners(self, request: pytest.FixtureRequest) -> Any:
        return self.make_runners(request)

    def tolerance(self, component: str) -> Tolerance:
        return TOLERANCES[self.precision][component]

    def reference(self, models: Any, component: str, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        from engine.backends.torch_modules import component_module

        return run_torch(component, component_module(component, models.modules[component]), inputs)

    def assert_matches(self, component: str, reference: dict[str, Any], got: dict[str, Any]) -> None:
        checks = compare(component, reference, got, tolerance=self.tolerance(component))
        assert all(c.ok for c in checks), [(c.name, c.max_abs, c.limit) for c in checks]
        assert max(c.ref_max_abs for c in checks) > 1e-2  # not a comparison of two near-zero outputs

    # -- the same IO as the spec, the same numbers as torch ----------------------------------------------
    @pytest.mark.parametrize("component", COMPONENTS)
    def test_io_names_shapes_and_dtype(self, runners, models, profile, component):
        spec = IO_SPEC[component]
        runner = runners.get(component)
        assert runner.backend == self.backend
        assert runner.spec == spec
        inputs = _inputs(component, profile)
        out = runner(**inputs)
        ref = self.reference(models, component, inputs)
        assert list(out) == [t.name for t in spec.outputs]
        for t in spec.outputs:
            assert isinstance(out[t.name], torch.Tensor)
            assert out[t.name].dtype == torch.float32
            assert tuple(out[t.name].shape) == tuple(ref[t.name].shape)
            assert bool(torch.isfinite(out[t.name]).all())

    @pytest.mark.parametrize("component", COMPONENTS)
    def test_matches_torch(self, runners, models, profile, component):
        inputs = _inputs(component, profile, seed=1)
        self.assert_matches(component, self.reference(models, component, inputs), runners.get(component)(**inputs))

    # -- dynamic shapes --------------------------------------------------------------------------------
    @pytest.mark.parametrize("component", COMPONENTS)
    def test_dynamic_batch(self, runners, profile, component):
        spec = IO_SPEC[component]
        runner = runners.get(component)
        pair = _inputs(component, profile, seed=2, batch=2)
        one = {t.name: pair[t.name][:1] if t.dims[:1] == ("B",) else pair[t.name] for t in spec.inputs}
        out2, out1 = runner(**pair), runner(**one)
        for t in spec.outputs:
            assert out2[t.name].shape[0] == 2
            assert out1[t.name].shape[0] == 1
            tol = self.tolerance(component)
            diff = float((out2[t.name][:1] - out1[t.name]).abs().max())
            assert diff <= tol.atol + tol.rtol * float(out1[t.name].abs().max())

    @pytest.mark.parametrize("component", SPATIAL)
    @pytest.mark.parametrize("side", [(8, 8), (16, 16), (8, 16)])
    def test_dynamic_image_size(self, runners, models, profile, component, side):
        inputs = _inputs(component, profile, seed=3, batch=1, side=side)
        out = runners.get(component)(**inputs)
        self.assert_matches(component, self.reference(models, component, inputs), out)

    # -- the identity strength is an input, not a weight -----------------------------------------------
    def test_wplus_scale_is_a_runtime_input(self, runners, models, profile):
        runner = runners.get("unet")
        inputs = _inputs("unet", profile, seed=4)
        outs = {}
        for scale in (0.0, 0.5, 1.0):
            ref_inputs = {**inputs, "wplus_scale": torch.full((1,), scale)}
            outs[scale] = runner(**{**inputs, "wplus_scale": scale})  # a Python float, as the pipeline passes it
            self.assert_matches("unet", self.reference(models, "unet", ref_inputs), outs[scale])
        tol = self.tolerance("unet").atol
        assert float((outs[1.0]["noise_pred"] - outs[0.0]["noise_pred"]).abs().max()) > 100 * tol
        assert float((outs[1.0]["noise_pred"] - outs[0.5]["noise_pred"]).abs().max()) > 100 * tol
        for form in (torch.tensor(0.5), torch.tensor([0.5])):
            got = runner(**{**inputs, "wplus_scale": form})["noise_pred"]
            assert float((got - outs[0.5]["noise_pred"]).abs().max()) <= 1e-6

    # -- refusals with a sentence ----------------------------------------------------------------------
    @pytest.mark.parametrize("component", COMPONENTS)
    def test_refuses_a_missing_input(self, runners, profile, component):
        spec = IO_SPEC[component]
        inputs = _inputs(component, profile)
        missing = spec.inputs[0].name
        del inputs[missing]
        with pytest.raises(InvalidInput, match=f"needs the input '{missing}'"):
            runners.get(component)(**inputs)

    @pytest.mark.parametrize("component", COMPONENTS)
    def test_refuses_a_wrong_rank(self, runners, profile, component):
        spec = IO_SPEC[component]
        inputs = _inputs(component, profile)
        name = spec.inputs[0].name
        inputs[name] = inputs[name][None]
        with pytest.raises(InvalidInput, match=f"Input '{name}' of {component} has shape"):
            runners.get(component)(**inputs)

    @pytest.mark.parametrize("component", COMPONENTS)
    def test_refuses_a_wrong_fixed_size(self, runners, profile, component):
        spec = IO_SPEC[component]
        inputs = _inputs(component, profile)
        t = next(t for t in spec.inputs if any(isinstance(d, int) for d in t.dims))
        axis = next(i for i, d in enumerate(t.dims) if isinstance(d, int))
        shape = list(inputs[t.name].shape)
        shape[axis] += 1
        inputs[t.name] = torch.zeros(shape, dtype=inputs[t.name].dtype)
        with pytest.raises(InvalidInput, match=f"Input '{t.name}' of {component} has size {shape[axis]} on axis {axis}"):
            runners.get(component)(**inputs)

    @pytest.mark.parametrize("component", MULTI_BATCH)
    def test_refuses_inputs_that_disagree_on_the_batch(self, runners, profile, component):
        spec = IO_SPEC[component]
        inputs = _inputs(component, profile, batch=2)
        last = [t for t in spec.inputs if t.dims[:1] == ("B",)][-1].name
        inputs[last] = inputs[last][:1]
        with pytest.raises(InvalidInput, match="disagree on dimension B"):
            runners.get(component)(**inputs)

    @pytest.mark.parametrize("component", COMPONENTS)
    def test_batch_outside_the_profile(self, runners, models, profile, component):
        max_batch = profile.range("B").max
        inputs = _inputs(component, profile, seed=5, batch=max_batch + 1)
        runner = runners.get(component)
        if not self.has_profile:
            # torch has no profile: any batch runs, and it is the reference
            self.assert_matches(component, self.reference(models, component, inputs), runner(**inputs))
            return
        with pytest.raises(InvalidInput, match=f"built for batch 1–{max_batch}; this call needs batch {max_batch + 1}"):
            runner(**inputs)

    @pytest.mark.parametrize("component", SPATIAL)
    def test_image_size_outside_the_profile(self, runners, profile, component):
        if not self.has_profile:
            pytest.skip("torch has no shape profile")
        hi = profile.range("H").max
        inputs = _inputs(component, profile, batch=1, side=(hi * 2, hi))
        with pytest.raises(InvalidInput, match=f"image height 64–{hi * 8} px; this call needs image "
                                               f"height {hi * 16} px"):
            runners.get(component)(**inputs)


class TestTorchConformance(BackendConformance):
    """The reference backend: the pipeline's TorchRunners for SD1.5, module runners for the rest."""

    backend = "torch"
    has_profile = False

    def make_runners(self, request):
        from engine.backends.torch_backend import TorchModuleRunners, TorchRunners, module_runner

        models = request.getfixturevalue("models")
        sd = TorchRunners(models.components, models.wproj)
        loaders = {c: (lambda c=c: sd.get(c)) for c in sd.available()}
        for c in COMPONENTS:
            loaders.setdefault(c, lambda c=c: module_runner(c, models.modules[c]))
        return TorchModuleRunners(loaders)


class TestOnnxRuntimeConformance(BackendConformance):
    """ONNX Runtime (CPU here; CUDA with IO binding on an NVIDIA machine) over the exports."""

    backend = "onnxruntime"

    def make_runners(self, request):
        pytest.importorskip("onnxruntime", reason="onnxruntime is not installed")
        from engine.backends.ort_backend import OrtRunners

        return OrtRunners(request.getfixturevalue("onnx_dir"), "cpu")


@pytest.mark.gpu
@pytest.mark.trt
@pytest.mark.skipif(tensorrt_skip_reason() is not None, reason=tensorrt_skip_reason() or "")
class TestTensorRTConformance(BackendConformance):
    """TensorRT engines built (fp32 flag; TF32 kernels allowed, so the fp16 table) from the same exports."""

    backend = "tensorrt"
    precision = "fp16"

    def make_runners(self, request):
        from engine.backends.trt_backend import TrtRunners

        cache = request.getfixturevalue("tmp_path_factory").mktemp("trt_engines")
        return TrtRunners(request.getfixturevalue("onnx_dir"), cache, precision="fp32", device="cuda",
                          allow_build=True)
