"""The losses (probe vs an independent float64 computation) and the random draws vs their stated distributions."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from engine.cli import main
from engine.training import objectives as ob

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _probe_arrays(b=2, h=8, seed=0):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:h] / h
    mask = np.clip(1.5 - 4 * ((yy - 0.4) ** 2 + (xx - 0.5) ** 2) * 4, 0, 1)
    return {
        "latents": rng.standard_normal((b, 4, h, h)).astype(np.float32),
        "noise": rng.standard_normal((b, 4, h, h)).astype(np.float32),
        "timesteps": np.array([17, 801][:b], np.int64),
        "text_embeds": rng.standard_normal((b, 77, 768)).astype(np.float32),
        "wplus": (0.5 * rng.standard_normal((b, 18, 512))).astype(np.float32),
        "wplus_perturbed": (0.5 * rng.standard_normal((b, 18, 512))).astype(np.float32),
        "mask": np.broadcast_to(mask, (b, 1, h, h)).astype(np.float32).copy(),
    }


def _reference_f64(unet, wproj, arrays, sched, lam_d=2.0, lam_p=1.0):
    """The losses written out from REFERENCE.md §6 in float64; the scale-0 target is a plain UNet call."""
    from diffusers import UNet2DConditionModel

    from engine.networks.wplus import wplus_processors

    betas = np.linspace(sched["beta_start"] ** 0.5, sched["beta_end"] ** 0.5, 1000, dtype=np.float64) ** 2
    assert sched["beta_schedule"] == "scaled_linear"
    ac = np.cumprod(1.0 - betas)[arrays["timesteps"]][:, None, None, None]
    x0, eps = arrays["latents"].astype(np.float64), arrays["noise"].astype(np.float64)
    z = torch.from_numpy(np.sqrt(ac) * x0 + np.sqrt(1 - ac) * eps)
    t = torch.from_numpy(arrays["timesteps"])
    text = torch.from_numpy(arrays["text_embeds"].astype(np.float64))

    def eps_hat(w):
        tok = wproj(torch.from_numpy(w.astype(np.float64)))
        return unet(z, t, encoder_hidden_states=torch.cat([text, tok], 1)).sample.numpy()

    with torch.no_grad():
        e = eps_hat(arrays["wplus"])
        e_tilde = eps_hat(arrays["wplus_perturbed"])
        for proc in wplus_processors(unet).values():
            proc.scale = 0.0
        plain = UNet2DConditionModel.from_config(unet.config).double()
        plain.load_state_dict({k: v for k, v in unet.state_dict().items() if ".processor." not in k})
        e0 = plain(z, t, encoder_hidden_states=text).sample.numpy()
    m_bar = np.repeat(1.0 - arrays["mask"].astype(np.float64), 4, axis=1)
    rec = np.mean((e - eps) ** 2)
    dis = np.mean((m_bar * e - m_bar * e_tilde) ** 2)
    pre = np.mean((e - e0) ** 2)
    return {"loss_rec": rec, "loss_disen": dis, "loss_preserve": pre, "loss": rec + lam_d * dis + lam_p * pre}


def test_probe_cli_float32_matches_float64_reference(tiny_sd, tmp_path):
    from diffusers import UNet2DConditionModel

    from engine.networks.wplus import load_wplus_adapter
    from engine.testing.tiny import write_tiny_adapter

    unet = UNet2DConditionModel.from_pretrained(str(tiny_sd / "unet"), local_files_only=True)
    adapter = write_tiny_adapter(tmp_path / "a.bin", unet)
    arrays = _probe_arrays()
    np.savez(tmp_path / "probe.npz", **arrays)
    rc = main(["train", "--stage", "2", "--probe", str(tmp_path / "probe.npz"), "--model", str(tiny_sd),
               "--adapter", str(adapter), "-o", str(tmp_path / "losses.json"), "--device", "cpu"])
    assert rc == 0
    got = json.loads((tmp_path / "losses.json").read_text())
    assert got["lambda_disen"] == 2.0
    assert got["lambda_preserve"] == 1.0
    unet64 = unet.double()
    wproj = load_wplus_adapter(unet64, adapter).double()
    sched = json.loads((tiny_sd / "scheduler" / "scheduler_config.json").read_text())
    ref = _reference_f64(unet64, wproj, arrays, sched)
    for k in ("loss_rec", "loss_disen", "loss_preserve", "loss"):
        assert ref[k] > 1e-4, k  # every term is exercised
        assert got[k] == pytest.approx(ref[k], rel=1e-4), k


@pytest.mark.slow
def test_probe_full_size_rule_unet_matches_float64(fixtures_dir):
    """Full-size SD1.5 UNet with rule weights (run under `flock /tmp/bigmem.lock`)."""
    from diffusers import UNet2DConditionModel

    from engine.networks.wplus import (
        WProj,
        apply_adapter_state,
        expected_adapter_shapes,
        install_wplus_processors,
    )
    from engine.testing.wbn import fill_module, rule_state_dict
    from engine.training.probe import probe_losses

    cfg = json.loads((fixtures_dir / "sd15_unet_config.json").read_text())
    unet = UNet2DConditionModel.from_config(cfg)
    fill_module(unet)
    install_wplus_processors(unet)
    wproj = WProj()
    fill_module(wproj, "w_proj.")
    adapter = rule_state_dict({f"wplus_adapter.{k}": s for k, s in expected_adapter_shapes(unet).items()})
    apply_adapter_state(unet, wproj, wproj.state_dict(),
                        {k.removeprefix("wplus_adapter."): v for k, v in adapter.items()})
    arrays = _probe_arrays(b=1, h=16, seed=3)
    from engine.networks.sd15 import default_config_dir

    sched = json.loads((default_config_dir() / "scheduler" / "scheduler_config.json").read_text())
    got = probe_losses(unet.eval(), wproj, sched, arrays)
    unet = unet.double()
    ref = _reference_f64(unet, wproj.double(), arrays, sched)
    for k in ("loss_rec", "loss_disen", "loss_preserve", "loss"):
        assert got[k] == pytest.approx(ref[k], rel=1e-4), k


def test_probe_rejects_bad_npz(tiny_sd, tmp_path, capsys):
    arrays = _probe_arrays()
    arrays["wplus"] = arrays["wplus"][:, :9]
    np.savez(tmp_path / "p.npz", **arrays)
    rc = main(["train", "--stage", "2", "--probe", str(tmp_path / "p.npz"), "--model", str(tiny_sd),
               "--adapter", "x.bin", "-o", str(tmp_path / "l.json"), "--device", "cpu"])
    assert rc == 1
    assert "probe 'wplus' has shape (2, 9, 512), expected (2, 18, 512)" in capsys.readouterr().err


def test_add_noise_is_the_ddpm_forward_process(tiny_sd):
    from diffusers import DDPMScheduler

    sched = json.loads((tiny_sd / "scheduler" / "scheduler_config.json").read_text())
    x0, eps = torch.randn(3, 4, 8, 8), torch.randn(3, 4, 8, 8)
    t = torch.tensor([0, 500, 999])
    ours = ob.add_noise(x0, eps, t, ob.ddpm_alphas_cumprod(sched))
    theirs = DDPMScheduler.from_config(sched).add_noise(x0, eps, t)
    assert torch.allclose(ours, theirs, atol=1e-6)


def _binom_ok(count, n, p, z=4.5):
    return abs(count - n * p) <= z * np.sqrt(n * p * (1 - p))


def test_drop_rates_are_5_5_5_percent():
    rng = np.random.default_rng(1)
    n = 200_000
    draws = [ob.draw_drop(u) for u in rng.random(n)]
    w_only = sum(1 for d in draws if d == (True, False))
    t_only = sum(1 for d in draws if d == (False, True))
    both = sum(1 for d in draws if d == (True, True))
    for c in (w_only, t_only, both):
        assert _binom_ok(c, n, 0.05)
    assert ob.draw_drop(0.0) == (True, False)
    assert ob.draw_drop(0.151) == (False, False)


@pytest.fixture(scope="module")
def sampler():
    return ob.PerturbationSampler.from_resources()


def test_perturbation_kinds_and_direction_draws_match_the_paper(sampler):
    rng = np.random.default_rng(7)
    n = 6000
    plans = [sampler.plan(rng, 4) for _ in range(n)]
    kinds = np.bincount([p.kind for p in plans], minlength=5)
    for c, p in zip(kinds, ob.PERTURBATION_PROBS, strict=True):
        assert _binom_ok(c, n, p)
    mix = np.array([p.scalar for p in plans if p.kind == ob.MIX])
    assert mix.min() >= -40
    assert mix.max() <= 40
    assert abs(mix.mean()) < 4.5 * 40 / np.sqrt(3 * len(mix))
    ks = np.array([p.scalar * 10 for p in plans if p.kind == ob.SCALED_CODE])
    assert np.allclose(ks, np.round(ks))
    assert ks.min() >= -60
    assert ks.max() <= 60
    kn = np.array([p.scalar * 10 for p in plans if p.kind == ob.SCALED_NOISE])
    assert kn.min() >= -80
    assert kn.max() <= 80
    assert len(set(kn.round().astype(int))) > 100
    draws = [d for p in plans for d in p.d1 + p.d2]
    listed = sum(1 for d in draws if d.list_index >= 0)
    assert _binom_ok(listed, len(draws), 0.6)
    s = np.array([d.strength for d in draws])
    assert s.min() >= -60
    assert s.max() <= 60
    # uniform on (−60, 60): deciles within 4.5σ of 10 %
    hist = np.histogram(s, bins=10, range=(-60, 60))[0]
    assert all(_binom_ok(h, len(s), 0.1) for h in hist)
    assert len({d.list_index for d in draws if d.list_index >= 0}) == 17
    assert len({d.ganspace for d in draws if d.ganspace >= 0}) == len(sampler.configs)
    blends = np.concatenate([p.blend for p in plans if p.kind == ob.TWO_DIRECTIONS])
    assert blends.min() >= 0
    assert blends.max() <= 1
    assert abs(blends.mean() - 0.5) < 0.03


def test_perturbation_formulas(sampler):
    rng = np.random.default_rng(3)
    w = 0.5 * rng.standard_normal((4, 18, 512))
    dropped = np.array([False, False, True, False])
    w[dropped] = 0
    perm = np.array([2, 0, 3, 1])
    ws = w[perm]
    p = ob.PerturbationPlan(ob.MIX, perm, 7.5, None)
    assert np.allclose(sampler.apply(p, w, dropped)[~dropped], (ws + (w - ws) * 7.5)[~dropped])
    assert not sampler.apply(p, w, dropped)[2].any()
    p = ob.PerturbationPlan(ob.SCALED_CODE, perm, -3.2, None)
    assert np.allclose(sampler.apply(p, w, dropped)[0], ws[0] - 3.2 * w[0])
    z = rng.standard_normal((4, 18, 512))
    p = ob.PerturbationPlan(ob.SCALED_NOISE, perm, 2.0, z)
    assert np.allclose(sampler.apply(p, w, dropped)[3], ws[3] + (w.mean() + w.std() * z[3]) * 2.0)
    # list direction: adds strength·d on all 18 rows
    d_list = ob.DirectionDraw(2, -1, 12.0)
    gs = next(i for i, c in enumerate(sampler.configs) if c[1] == 0)
    d_gs = ob.DirectionDraw(-1, gs, -33.0)
    p = ob.PerturbationPlan(ob.ONE_DIRECTION, perm, 0.0, None, (d_list, d_gs, d_list, d_gs))
    out = sampler.apply(p, w, dropped)
    assert np.allclose(out[0], w[0] + 12.0 * sampler.att[2])
    k, _start, end = sampler.configs[gs]
    coord = (out[1][0] - sampler.mean) @ sampler.comp[k] / sampler.std[k]
    assert coord == pytest.approx(-33.0, abs=1e-5)  # GANSpace sets the absolute coordinate
    assert np.array_equal(out[1][end:], w[1][end:])
    p = ob.PerturbationPlan(ob.TWO_DIRECTIONS, perm, 0.0, None, (d_list,) * 4, (d_gs,) * 4, np.full(4, 0.25))
    out = sampler.apply(p, w, dropped)
    assert np.allclose(out[3], w[3] + 0.25 * sampler.direction_delta(w[3], d_list)
                       + 0.75 * sampler.direction_delta(w[3], d_gs))


def test_att_direction_list_uses_the_shipped_files(sampler):
    from engine.resources import resource_path

    age_ig = np.load(resource_path("directions") / "interfacegan" / "age.npy").reshape(512)
    assert np.allclose(sampler.att[0], np.repeat(age_ig[None], 18, 0))
    angry = np.load(resource_path("directions") / "latent_directions" / "emotion_angry.npy").reshape(18, 512)
    assert np.array_equal(sampler.att[4], angry)
    assert np.array_equal(sampler.att[15], angry)
