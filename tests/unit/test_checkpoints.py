"""Safe loading, layout checks and safetensors conversion (engine.models.safe_load / convert) and the
e4e / W+ adapter checkpoint loaders beside their networks."""

from __future__ import annotations

import json
import pickle

import pytest
import torch
from safetensors import safe_open

from engine.errors import ModelCorrupt, ModelMissing, UnsafeCheckpoint
from engine.models.convert import convert_to_safetensors
from engine.models.safe_load import check_layout, load_state, load_tensor_file
from engine.networks.e4e import e4e_layout, load_e4e_checkpoint
from engine.networks.wplus import load_adapter_checkpoint, sd15_adapter_layout


class _Payload:
    """Unpickling this calls open(marker, 'w'): a file appears if the pickle's code ever runs."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _tiny_adapter(cross: int = 8, hidden: tuple[int, ...] = (4, 6)) -> dict:
    g = torch.Generator().manual_seed(0)
    w_proj = {f"proj_{i}.weight": torch.randn(cross, n, generator=g) for i, n in enumerate((2048, 2048, 2048, 3072))}
    w_proj["norm.weight"] = torch.randn(cross, generator=g)
    w_proj["norm.bias"] = torch.randn(cross, generator=g)
    adapter = {}
    for j, c in enumerate(hidden):
        i = 2 * j + 1
        adapter[f"{i}.to_k_wplus.weight"] = torch.randn(c, cross, generator=g)
        adapter[f"{i}.to_v_wplus.weight"] = torch.randn(c, cross, generator=g)
        adapter[f"{i}.to_q_wplus.weight"] = torch.randn(c, c, generator=g)
    return {"w_proj": w_proj, "wplus_adapter": adapter}


def _cheap_e4e_state() -> dict[str, torch.Tensor]:
    """Every encoder key with its real shape, backed by one element (stride 0), so no GB are allocated."""
    one = torch.zeros(1)
    return {
        f"encoder.{k}": (torch.zeros((), dtype=torch.int64) if k.endswith("num_batches_tracked") else one.expand(s))
        for k, s in e4e_layout().items()
    }


# -- refusing code --------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".pt", ".pth", ".bin", ".ckpt"])
@pytest.mark.parametrize("legacy", [False, True])
def test_pickle_with_code_is_refused_and_never_runs(tmp_path, suffix, legacy):
    marker = tmp_path / "marker"
    path = tmp_path / f"evil{suffix}"
    payload = {"w_proj": {"x": _Payload(str(marker))}, "wplus_adapter": {}}
    torch.save(payload, path, _use_new_zipfile_serialization=not legacy)
    for load in (load_state, load_adapter_checkpoint, load_e4e_checkpoint):
        with pytest.raises(UnsafeCheckpoint) as info:
            load(path)
        assert str(path) in info.value.user_message
        assert "refused for safety" in info.value.user_message
    with pytest.raises(UnsafeCheckpoint):
        convert_to_safetensors(path, tmp_path / "out.safetensors")
    assert not (tmp_path / "out.safetensors").exists()
    assert not marker.exists()


def test_raw_pickle_with_code_is_refused(tmp_path):
    marker = tmp_path / "marker"
    path = tmp_path / "raw.pth"
    path.write_bytes(pickle.dumps({"a": _Payload(str(marker))}, protocol=2))
    with pytest.raises(UnsafeCheckpoint):
        load_state(path)
    assert not marker.exists()


def test_refused_checkpoint_is_a_model_corrupt_error(tmp_path):
    # callers that handle ModelCorrupt (the GUI's model panel) also handle refused pickles
    assert issubclass(UnsafeCheckpoint, ModelCorrupt)


# -- damaged files --------------------------------------------------------------------------------


@pytest.mark.parametrize("legacy", [False, True])
@pytest.mark.parametrize("fraction", [0.0, 0.02, 0.5, 0.97])
def test_truncated_pickle_is_corrupt(tmp_path, legacy, fraction):
    good = tmp_path / "good.pt"
    torch.save(_tiny_adapter(), good, _use_new_zipfile_serialization=not legacy)
    data = good.read_bytes()
    bad = tmp_path / "bad.pt"
    bad.write_bytes(data[: int(len(data) * fraction)])
    with pytest.raises(ModelCorrupt) as info:
        load_adapter_checkpoint(bad)
    assert not isinstance(info.value, UnsafeCheckpoint)
    assert str(bad) in info.value.user_message


@pytest.mark.parametrize("cut", [0, 5, 40, -10])
def test_truncated_safetensors_is_corrupt(tmp_path, cut):
    src = tmp_path / "a.pt"
    torch.save(_tiny_adapter(), src)
    st = convert_to_safetensors(src, tmp_path / "a.safetensors")
    data = st.read_bytes()
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(data[:cut])
    with pytest.raises(ModelCorrupt) as info:
        load_state(bad)
    assert str(bad) in info.value.user_message


def test_garbage_and_missing_and_unknown_type(tmp_path):
    garbage = tmp_path / "g.bin"
    garbage.write_bytes(bytes(range(256)) * 10)
    with pytest.raises(ModelCorrupt, match=r"g\.bin"):
        load_state(garbage)
    with pytest.raises(ModelMissing, match=r"nope\.pt"):
        load_state(tmp_path / "nope.pt")
    odd = tmp_path / "weights.onnx"
    odd.write_bytes(b"x")
    with pytest.raises(ModelCorrupt, match=r"unknown model file type"):
        load_state(odd)
    tensor_only = tmp_path / "t.pt"
    torch.save(torch.zeros(3), tensor_only)
    with pytest.raises(ModelCorrupt, match=r"not a dictionary"):
        load_state(tensor_only)


# -- layouts --------------------------------------------------------------------------------------


def test_check_layout_names_file_layout_and_first_key():
    expected = {"a.weight": (2, 3), "b.weight": (4,), "c.bias": (1,)}
    ok = {"a.weight": torch.zeros(2, 3), "b.weight": torch.zeros(4), "c.bias": torch.zeros(1)}
    check_layout(ok, expected, "f.pt", "Toy")

    missing = {k: v for k, v in ok.items() if k != "b.weight"}
    with pytest.raises(ModelCorrupt) as info:
        check_layout(missing, expected, "f.pt", "Toy")
    msg = info.value.user_message
    assert "f.pt" in msg
    assert "Toy" in msg
    assert "'b.weight' is missing" in msg

    shaped = dict(ok, **{"a.weight": torch.zeros(3, 2)})
    shaped["c.bias"] = torch.zeros(5)  # also wrong, but after a.weight
    with pytest.raises(ModelCorrupt, match=r"'a\.weight' has shape \[3, 2\], expected \[2, 3\]"):
        check_layout(shaped, expected, "f.pt", "Toy")

    extra = dict(ok, zzz=torch.zeros(1))
    with pytest.raises(ModelCorrupt, match=r"unexpected key 'zzz'"):
        check_layout(extra, expected, "f.pt", "Toy")

    with pytest.raises(ModelCorrupt, match=r"'c\.bias' is a str"):
        check_layout(dict(ok, **{"c.bias": "nope"}), expected, "f.pt", "Toy")


def test_e4e_wrong_layout_names_first_key(tmp_path):
    state = _cheap_e4e_state()
    latent_avg = torch.zeros(18, 512)
    path = tmp_path / "e4e.pt"

    torch.save({"state_dict": state, "latent_avg": latent_avg, "opts": {"stylegan_size": 1024}}, path)
    ckpt = load_e4e_checkpoint(path)
    assert len(ckpt.encoder_state) == 621
    assert ckpt.decoder_state == {}
    assert ckpt.opts == {"stylegan_size": 1024}

    broken = {k: v for k, v in state.items() if k != "encoder.body.7.shortcut_layer.1.running_var"}
    broken["encoder.styles.9.linear.weight"] = torch.zeros(1).expand(512, 256)
    torch.save({"state_dict": broken, "latent_avg": latent_avg, "opts": {}}, path)
    with pytest.raises(ModelCorrupt) as info:
        load_e4e_checkpoint(path)
    msg = info.value.user_message
    assert str(path) in msg
    assert "e4e" in msg
    assert "'body.7.shortcut_layer.1.running_var' is missing" in msg

    torch.save({"state_dict": state, "latent_avg": torch.zeros(14, 512), "opts": {}}, path)
    with pytest.raises(ModelCorrupt, match=r"latent_avg.*\[14, 512\]"):
        load_e4e_checkpoint(path)

    torch.save(_tiny_adapter(), path)
    with pytest.raises(ModelCorrupt, match=r"'state_dict' and 'latent_avg' are required"):
        load_e4e_checkpoint(path)


def test_adapter_layouts(tmp_path):
    path = tmp_path / "a.bin"
    official = _tiny_adapter()
    torch.save(official, path)
    ckpt = load_adapter_checkpoint(path)
    assert ckpt.cross_attention_dim == 8
    assert ckpt.processor_indices == (1, 3)
    with pytest.raises(ModelCorrupt, match=r"'1\.to_k_wplus\.weight' has shape"):
        load_adapter_checkpoint(path, expected_adapter=sd15_adapter_layout())

    bad = _tiny_adapter()
    bad["wplus_adapter"]["3.to_q_wplus.weight"] = torch.zeros(6, 5)
    torch.save(bad, path)
    with pytest.raises(ModelCorrupt, match=r"a\.bin.*'3\.to_q_wplus\.weight' has shape \[6, 5\], expected \[6, 6\]"):
        load_adapter_checkpoint(path)

    bad = _tiny_adapter()
    del bad["wplus_adapter"]["1.to_v_wplus.weight"]
    torch.save(bad, path)
    with pytest.raises(ModelCorrupt, match=r"'1\.to_v_wplus\.weight' is missing"):
        load_adapter_checkpoint(path)

    bad = _tiny_adapter()
    bad["w_proj"]["proj_3.weight"] = torch.zeros(8, 2048)
    torch.save(bad, path)
    with pytest.raises(ModelCorrupt, match=r"w_proj.*'proj_3\.weight' has shape \[8, 2048\], expected \[8, 3072\]"):
        load_adapter_checkpoint(path)

    bad = _tiny_adapter()
    bad["wplus_adapter"]["1.to_out_wplus.weight"] = torch.zeros(4, 4)
    torch.save(bad, path)
    with pytest.raises(ModelCorrupt, match=r"unexpected key 'wplus_adapter\.1\.to_out_wplus\.weight'"):
        load_adapter_checkpoint(path)


def test_sd15_adapter_layout_matches_manifest(fixtures_dir):
    manifest = json.loads((fixtures_dir / "wplus_adapter_manifest.json").read_text())
    expected = {e["key"]: tuple(e["shape"]) for e in manifest["wplus_adapter"]}
    assert sd15_adapter_layout() == expected


# -- conversion -----------------------------------------------------------------------------------


def test_adapter_conversion_round_trip(tmp_path):
    official = _tiny_adapter()
    src = tmp_path / "wplus_adapter.bin"
    torch.save(official, src)
    dst = convert_to_safetensors(src, tmp_path / "wplus_adapter.safetensors")
    with safe_open(str(dst), framework="pt") as fh:
        assert fh.metadata()["wplus_layout"] == "wplus_adapter"
        keys = set(fh.keys())
    assert keys == {f"w_proj.{k}" for k in official["w_proj"]} | {f"wplus_adapter.{k}" for k in official["wplus_adapter"]}
    a, b = load_adapter_checkpoint(src), load_adapter_checkpoint(dst)
    for part in ("w_proj", "wplus_adapter"):
        sa, sb = getattr(a, part), getattr(b, part)
        assert sorted(sa) == sorted(sb)
        for k in sa:
            assert torch.equal(sa[k], sb[k])


def test_e4e_style_conversion_keeps_everything_needed(tmp_path):
    # small tensors under e4e's top-level layout: flattening and metadata, independent of the real shapes
    g = torch.Generator().manual_seed(1)
    state = {
        "encoder.input_layer.0.weight": torch.randn(4, 3, 3, 3, generator=g),
        "encoder.input_layer.1.num_batches_tracked": torch.tensor(7),
        "decoder.style.1.weight": torch.randn(5, 5, generator=g),
        "decoder.noises.noise_0": torch.randn(1, 1, 4, 4, generator=g),
    }
    opts = {"encoder_type": "Encoder4Editing", "stylegan_size": 1024, "lr": 1e-4, "exp_dir": None}
    src = tmp_path / "e4e.pt"
    torch.save({"state_dict": state, "latent_avg": torch.randn(18, 512, generator=g), "opts": opts,
                "global_step": 100, "optimizer": {"state": {}}}, src)
    dst = convert_to_safetensors(src, tmp_path / "e4e.safetensors")
    tensors = load_state(dst)
    assert set(tensors) == {*state, "latent_avg"}
    for k, v in state.items():
        assert tensors[k].dtype == v.dtype
        assert torch.equal(tensors[k], v)
    with safe_open(str(dst), framework="pt") as fh:
        meta = fh.metadata()
    assert meta["wplus_layout"] == "e4e"
    assert json.loads(meta["opts"]) == opts


def test_conversion_handles_dtypes_views_and_shared_storage(tmp_path):
    base = torch.arange(24, dtype=torch.float32).reshape(4, 6)
    state = {
        "t": base.t(),  # non-contiguous view
        "shared": base,  # shares storage with "t"
        "row": base[1],  # offset view
        "half": torch.linspace(-2, 2, 7, dtype=torch.float16),
        "bf": torch.linspace(-2, 2, 5, dtype=torch.bfloat16),
        "f64": torch.linspace(-1, 1, 3, dtype=torch.float64),
        "count": torch.tensor(3, dtype=torch.int64),
        "flags": torch.tensor([True, False, True]),
        "bytes": torch.arange(9, dtype=torch.uint8).reshape(3, 3),
        "empty": torch.zeros(0, 4),
    }
    src = tmp_path / "parsenet.pth"
    torch.save(state, src)
    dst = convert_to_safetensors(src, tmp_path / "parsenet.safetensors")
    # read back with the safetensors library itself, an independent reader of our streamed writer
    with safe_open(str(dst), framework="pt") as fh:
        assert fh.metadata()["wplus_layout"] == "state_dict"
        back = {k: fh.get_tensor(k) for k in fh.keys()}  # noqa: SIM118
    assert set(back) == set(state)
    for k, v in state.items():
        assert back[k].dtype == v.dtype, k
        assert back[k].shape == v.shape, k
        assert torch.equal(back[k], v), k


def test_conversion_refuses_non_safetensors_target_and_is_atomic(tmp_path):
    src = tmp_path / "a.pt"
    torch.save(_tiny_adapter(), src)
    with pytest.raises(ValueError, match=r"safetensors"):
        convert_to_safetensors(src, tmp_path / "a.pt2")
    bad = tmp_path / "bad.pt"
    torch.save({"w_proj": {"x": 3}, "wplus_adapter": {}}, bad)
    with pytest.raises(ModelCorrupt, match=r"not a tensor"):
        convert_to_safetensors(bad, tmp_path / "bad.safetensors")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.pt", "bad.pt"]


def test_official_wplus_file_loads_as_tensor(tmp_path):
    w = torch.randn(1, 18, 512, requires_grad=True)  # the official files were saved with requires_grad
    path = tmp_path / "1.pth"
    torch.save(w, path)
    got = load_tensor_file(path)
    assert not got.requires_grad
    assert torch.equal(got, w.detach())


def test_wrapped_state_dict_conversion_keeps_only_weights(tmp_path):
    weights = {"model.diffusion_model.conv_in.weight": torch.randn(4, 4, 3, 3), "first_stage_model.x": torch.ones(2)}
    src = tmp_path / "model.ckpt"
    torch.save({"state_dict": weights, "global_step": 470000, "epoch": 3}, src)
    back = load_state(convert_to_safetensors(src, tmp_path / "model.safetensors"))
    assert set(back) == set(weights)
    for k, v in weights.items():
        assert torch.equal(back[k], v)
