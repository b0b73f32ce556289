"""The accelerate loop on tiny models: what is trained and frozen, resume, Ctrl-C, disk full, bad input, outputs."""

from __future__ import annotations

import errno
import json
import signal

import numpy as np
import pytest
import torch

from engine.errors import InvalidInput, StorageError
from engine.training import loop
from engine.training.loop import TrainConfig, train

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _cfg(model, data, out, **kw):
    base = dict(stage=1, model=str(model), data=str(data), out=str(out), steps=4, batch=2, resolution=64,
                save_every=2, cpu=True, quiet=True, workers=0)
    base.update(kw)
    return TrainConfig(**base)


def _load(model):
    from engine.networks.sd15 import load_sd15

    return load_sd15(model)


def _state(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items() if ".processor." not in k}


def test_stage1_initialisation_is_attn2_qkv(tiny_sd, tmp_path):
    from engine.networks.wplus import wplus_processors

    comps = _load(tiny_sd)
    unet, _wproj, *_ = loop._build_models(_cfg(tiny_sd, "", tmp_path), "cpu", torch.float32, comps)
    procs = wplus_processors(unet)
    assert len(procs) == sum(1 for n in unet.attn_processors if n.endswith("attn2.processor"))
    for name, proc in procs.items():
        attn = unet.get_submodule(name.removesuffix(".processor"))
        assert torch.equal(proc.to_q_wplus.weight, attn.to_q.weight)
        assert torch.equal(proc.to_k_wplus.weight, attn.to_k.weight)
        assert torch.equal(proc.to_v_wplus.weight, attn.to_v.weight)


@pytest.mark.parametrize("stage", [1, 2])
def test_frozen_parameters_stay_bit_identical_and_only_the_paper_s_tensors_train(
        stage, tiny_sd, data1, data2, stage1_adapter, tmp_path):
    from engine.networks.wplus import wplus_processors

    comps = _load(tiny_sd)
    frozen = {n: _state(m) for n, m in (("unet", comps.unet), ("vae", comps.vae), ("text", comps.text_encoder))}
    seen = {}

    def inspect(step, losses):
        if step == 1:
            unet = comps.unet
            seen["grad"] = sorted(n for n, p in unet.named_parameters() if p.requires_grad)
            seen["frozen_grad"] = [n for m in (comps.vae, comps.text_encoder) for n, p in m.named_parameters()
                                   if p.requires_grad or p.grad is not None]
            seen["unet_grads"] = [n for n, p in unet.named_parameters() if p.grad is not None]

    data = data1 if stage == 1 else data2
    init = None if stage == 1 else str(stage1_adapter)
    wproj_before = None
    if stage == 2:
        from engine.networks.wplus import load_adapter_checkpoint

        wproj_before = load_adapter_checkpoint(stage1_adapter).w_proj
    res = train(_cfg(tiny_sd, data, tmp_path / "run", stage=stage, init=init, steps=3, save_every=3),
                on_step=inspect, components=comps)
    assert res.step == 3
    for name, module in (("unet", comps.unet), ("vae", comps.vae), ("text", comps.text_encoder)):
        after = _state(module)
        assert all(torch.equal(after[k], v) for k, v in frozen[name].items()), name
    procs = wplus_processors(comps.unet)
    expected = sorted(f"{n.removesuffix('.processor')}.processor.{k}" for n, p in procs.items()
                      for k, _ in p.named_parameters())
    assert seen["grad"] == expected  # inside the UNet only the 16·3 W+ projections (here 2·3) train
    assert seen["frozen_grad"] == []
    assert seen["unet_grads"] == []
    from engine.networks.wplus import load_adapter_checkpoint

    out = load_adapter_checkpoint(res.adapter)
    if stage == 2:  # WProj frozen: bit-identical to the stage-1 adapter
        assert all(torch.equal(out.w_proj[k], v) for k, v in wproj_before.items())
    else:
        assert not torch.equal(out.w_proj["proj_0.weight"], torch.zeros(1))
    trained = {k: v for k, v in out.wplus_adapter.items()}
    init_q = {n: comps.unet.get_submodule(n.removesuffix(".processor")).to_q.weight for n in procs}
    assert stage == 2 or any(not torch.equal(trained[k], init_q[next(iter(procs))]) for k in trained
                             if k.endswith("to_q_wplus.weight"))


def test_written_adapter_has_the_official_layout_and_generates(tiny_sd, stage1_adapter, tmp_path):
    from diffusers import UNet2DConditionModel

    from engine.cli import main
    from engine.networks.wplus import expected_adapter_shapes, load_adapter_checkpoint

    raw = torch.load(stage1_adapter, map_location="cpu", weights_only=True)
    assert set(raw) == {"w_proj", "wplus_adapter"}
    unet = UNet2DConditionModel.from_pretrained(str(tiny_sd / "unet"), local_files_only=True)
    assert {k: tuple(v.shape) for k, v in raw["wplus_adapter"].items()} == expected_adapter_shapes(unet)
    assert all(v.dtype == torch.float32 for v in raw["wplus_adapter"].values())
    st = load_adapter_checkpoint(stage1_adapter.with_suffix(".safetensors"))
    assert all(torch.equal(st.wplus_adapter[k], v) for k, v in raw["wplus_adapter"].items())
    np.save(tmp_path / "w.npy", (0.5 * np.random.default_rng(0).standard_normal((1, 18, 512))).astype(np.float32))
    for adapter in (stage1_adapter, stage1_adapter.with_suffix(".safetensors")):
        out = tmp_path / f"img-{adapter.suffix[1:]}.png"
        rc = main(["generate", "--model", str(tiny_sd), "--adapter", str(adapter), "--wplus", str(tmp_path / "w.npy"),
                   "--steps", "2", "--width", "64", "--height", "64", "--quiet", "--out", str(out),
                   "--device", "cpu", "--dtype", "float32"])
        assert rc == 0
        assert out.stat().st_size > 0


def _adapter_tensors(run):
    from safetensors.torch import load_file

    return load_file(str(run / "wplus_adapter.safetensors"))


def test_resume_after_ctrl_c_continues_bit_exactly(tiny_sd, data2, stage1_adapter, tmp_path):
    kw = dict(stage=2, init=str(stage1_adapter), steps=4, save_every=3)
    train(_cfg(tiny_sd, data2, tmp_path / "a", **kw))

    def ctrl_c(step, losses):
        if step == 2:
            signal.raise_signal(signal.SIGINT)

    part = train(_cfg(tiny_sd, data2, tmp_path / "b", **kw), on_step=ctrl_c)
    assert part.interrupted
    assert part.step == 2
    assert json.loads((tmp_path / "b" / "latest.json").read_text())["step"] == 2
    with pytest.raises(InvalidInput, match="seed=0"):
        train(_cfg(tiny_sd, data2, tmp_path / "b", resume=True, seed=1, **kw))
    done = train(_cfg(tiny_sd, data2, tmp_path / "b", resume=True, **kw))
    assert done.step == 4
    assert not done.interrupted
    a, b = _adapter_tensors(tmp_path / "a"), _adapter_tensors(tmp_path / "b")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    log = [json.loads(x) for x in (tmp_path / "b" / "log.jsonl").read_text().splitlines()]
    full_log = [json.loads(x) for x in (tmp_path / "a" / "log.jsonl").read_text().splitlines()]
    assert [r["loss"] for r in log] == [r["loss"] for r in full_log]


def test_disk_full_while_saving_keeps_the_last_good_checkpoint(tiny_sd, data1, tmp_path, monkeypatch):
    real = loop.write_adapter
    calls = []

    def failing(*a, **k):
        calls.append(1)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(*a, **k)

    monkeypatch.setattr(loop, "write_adapter", failing)
    run = tmp_path / "run"
    with pytest.raises(StorageError, match="checkpoint-2 is kept"):
        train(_cfg(tiny_sd, data1, run, steps=4, save_every=2))
    assert json.loads((run / "latest.json").read_text())["step"] == 2
    assert not list((run / "checkpoints").glob(".*part"))
    from engine.networks.wplus import load_adapter_checkpoint

    load_adapter_checkpoint(run / "wplus_adapter.bin")
    monkeypatch.setattr(loop, "write_adapter", real)
    res = train(_cfg(tiny_sd, data1, run, steps=4, save_every=2, resume=True))
    assert res.step == 4


def _write_dataset(root, stage, lines, wshape=(1, 18, 512)):
    root.mkdir(parents=True)
    (root / "dataset.json").write_text(json.dumps({"format": "wplus-train", "version": 1, "stage": stage}))
    (root / "manifest.jsonl").write_text(lines)
    return root


def test_bad_datasets_are_refused_with_what_is_wrong(tiny_sd, data1, tmp_path):
    from engine.training.data import TrainDataset

    with pytest.raises(InvalidInput, match="does not exist"):
        TrainDataset(tmp_path / "nope", 1, 64)
    with pytest.raises(InvalidInput, match="has no items"):
        TrainDataset(_write_dataset(tmp_path / "empty", 1, ""), 1, 64)
    with pytest.raises(InvalidInput, match=r"damaged manifest.jsonl \(line 1"):
        TrainDataset(_write_dataset(tmp_path / "bad", 1, "{not json\n"), 1, 64)
    with pytest.raises(InvalidInput, match=r"is a stage-1 dataset .* stage 2 needs in-the-wild"):
        TrainDataset(data1, 2, 64)
    wrong = _write_dataset(tmp_path / "wrong", 1, json.dumps({"id": "a", "image": "a.png", "wplus": "a.npy"}))
    np.save(wrong / "a.npy", np.zeros((1, 18, 256), np.float32))
    (wrong / "a.png").write_bytes((data1 / "images" / "s0-00000.png").read_bytes())
    with pytest.raises(InvalidInput, match=r"has shape \(1, 18, 256\)"):
        TrainDataset(wrong, 1, 64)
    with pytest.raises(InvalidInput, match="--init"):
        train(_cfg(tiny_sd, data1, tmp_path / "r", stage=2))
    with pytest.raises(InvalidInput, match="no checkpoint"):
        train(_cfg(tiny_sd, data1, tmp_path / "r2", resume=True))


def _two_process_worker(model, data, init, out):
    from accelerate.state import AcceleratorState, PartialState

    AcceleratorState._reset_state(True)
    PartialState._reset_state()
    torch.set_num_threads(1)
    train(TrainConfig(stage=2, model=model, data=data, out=out, init=init, steps=3, batch=2, resolution=64,
                      save_every=3, quiet=True, workers=0))


def test_two_processes_equal_one_process_with_the_same_global_batch(tiny_sd, data2, stage1_adapter, tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    one = train(_cfg(tiny_sd, data2, tmp_path / "one", stage=2, init=str(stage1_adapter), steps=3, batch=4,
                     save_every=3))
    # accelerate's debug_launcher forks; forking this test process (which by now holds OpenMP and ONNX
    # Runtime threads from earlier tests) can deadlock the children, so the two processes start from a
    # fresh interpreter. The timeout turns a hang into a failure.
    repo = str(Path(__file__).resolve().parents[2])
    args = (str(tiny_sd), str(data2), str(stage1_adapter), str(tmp_path / "two"))
    code = (f"import sys; sys.path.insert(0, {repo!r})\n"
            "from accelerate import debug_launcher\n"
            "from tests.training.test_loop import _two_process_worker\n"
            f"debug_launcher(_two_process_worker, {args!r}, num_processes=2)\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=repo, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    a, b = _adapter_tensors(one.run_dir), _adapter_tensors(tmp_path / "two")
    init = _adapter_tensors_init(stage1_adapter)
    assert a.keys() == b.keys()
    # the same samples, drops, t, ε and perturbations: the (all-reduced) losses agree at every step
    la = [json.loads(x) for x in (one.run_dir / "log.jsonl").read_text().splitlines()]
    lb = [json.loads(x) for x in (tmp_path / "two" / "log.jsonl").read_text().splitlines()]
    for ra, rb in zip(la, lb, strict=True):
        for k in ("loss_rec", "loss_disen", "loss_preserve", "loss"):
            assert rb[k] == pytest.approx(ra[k], rel=1e-5, abs=1e-9), (ra["step"], k)
    # parameters: Adam turns reduction-order rounding on near-zero gradients into lr-sized steps on a few
    # elements, so compare the mean difference with the mean movement (a different batch gives ratio ≈ 1)
    diff = sum(float((a[k] - b[k]).abs().sum()) for k in a)
    moved = sum(float((a[k] - init[k]).abs().sum()) for k in a)
    assert moved > 0
    assert diff / moved < 0.01, diff / moved


def _adapter_tensors_init(path):
    from safetensors.torch import load_file

    return load_file(str(path.with_suffix(".safetensors")))


def test_train_and_dataset_cli(tiny_sd, data1, tmp_path, capsys):
    from engine.cli import main

    rc = main(["train", "--stage", "1", "--model", str(tiny_sd), "--data", str(data1), "--out", str(tmp_path / "r"),
               "--steps", "1", "--batch", "2", "--resolution", "64", "--workers", "0", "--device", "cpu", "--quiet"])
    out = capsys.readouterr()
    assert rc == 0, out.err
    assert "Trained 1 steps" in out.out
    assert (tmp_path / "r" / "wplus_adapter.safetensors").is_file()
    (tmp_path / "photos").mkdir()
    (tmp_path / "models").mkdir()
    rc = main(["dataset", "build", str(tmp_path / "photos"), "-o", str(tmp_path / "d"), "--stage", "1",
               "--models-dir", str(tmp_path / "models"), "--workers", "1"])
    assert rc == 1
    assert "e4e face encoder is missing" in capsys.readouterr().err


def test_mixed_precision_bf16_keeps_float32_master_weights(tiny_sd, data2, stage1_adapter, tmp_path):
    """bf16 autocast on the CPU (the fp16 path of a GPU is the same code); own process: accelerate's state is global."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[2]
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", PYTHONPATH=str(repo))
    cmd = [sys.executable, "-m", "engine", "train", "--stage", "2", "--model", str(tiny_sd), "--data", str(data2),
           "--init", str(stage1_adapter), "--out", str(tmp_path / "r"), "--steps", "2", "--batch", "2",
           "--resolution", "64", "--workers", "0", "--device", "cpu", "--quiet", "--mixed-precision", "bf16",
           "--gradient-checkpointing"]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=repo, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    raw = torch.load(tmp_path / "r" / "wplus_adapter.bin", map_location="cpu", weights_only=True)
    assert {v.dtype for v in raw["wplus_adapter"].values()} == {torch.float32}
    init = torch.load(stage1_adapter, map_location="cpu", weights_only=True)
    assert all(torch.equal(init["w_proj"][k], v) for k, v in raw["w_proj"].items())
    assert any(not torch.equal(init["wplus_adapter"][k], v) for k, v in raw["wplus_adapter"].items())
    log = [json.loads(x) for x in (tmp_path / "r" / "log.jsonl").read_text().splitlines()]
    assert all(np.isfinite(r["loss"]) for r in log)
