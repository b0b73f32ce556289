"""`wplus dataset build` on a real photo with small real networks: files, W+, masks, failures, resume."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
import torch

from engine.errors import InvalidInput
from engine.training.data import TrainDataset, read_manifest
from engine.training.prepare import build_dataset

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def small_chain():
    """A FaceChain with small rule-weight stand-ins for e4e and ParseNet (module level: workers pickle it)."""
    from engine.backends.torch_backend import module_runner
    from engine.faces.chain import FaceChain
    from engine.faces.parse import FaceParser
    from tests.small_faces import small_encoder, small_parsenet

    enc, net = small_encoder(), small_parsenet()
    return FaceChain(lambda: module_runner("face_encoder", enc), lambda: FaceParser(module_runner("face_parser", net)))


@pytest.fixture(scope="module")
def photos(tmp_path_factory, astronaut):
    root = tmp_path_factory.mktemp("photos")
    cv2.imwrite(str(root / "eileen.png"), cv2.cvtColor(astronaut, cv2.COLOR_RGB2BGR))
    (root / "eileen.txt").write_text("an astronaut in a white suit\nwoman smiling, flag behind\n")
    cv2.imwrite(str(root / "blank.png"), np.full((300, 300, 3), 128, np.uint8))
    (root / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    two = np.concatenate([astronaut, astronaut[:, ::-1]], axis=1)
    cv2.imwrite(str(root / "two.png"), cv2.cvtColor(two, cv2.COLOR_RGB2BGR))
    return root


def test_stage1_and_stage2_builds(photos, tmp_path):
    chain = small_chain()
    r1 = build_dataset(photos, tmp_path / "d1", 1, small_chain, workers=2, progress=False)
    assert r1.done == 1
    reasons = {p["photo"].rsplit("/", 1)[-1]: p["reason"] for p in r1.failed}
    assert set(reasons) == {"blank.png", "broken.jpg", "two.png"}
    assert "No face" in reasons["blank.png"]
    assert "2 faces" in reasons["two.png"]
    report = json.loads((tmp_path / "d1" / "report.json").read_text())
    assert len(report["failed"]) == 3
    assert report["added"] == 1
    item = read_manifest(tmp_path / "d1")[0]
    assert item["caption"].startswith("an astronaut")
    aligned = cv2.cvtColor(cv2.imread(str(tmp_path / "d1" / item["image"])), cv2.COLOR_BGR2RGB)
    assert aligned.shape == (512, 512, 3)
    from engine.faces.preprocess import e4e_input

    w1 = np.load(tmp_path / "d1" / item["wplus"])
    assert w1.shape == (1, 18, 512)
    assert np.allclose(w1, chain.encode_input(e4e_input(aligned, None)), atol=1e-6)  # with background

    # resumable: a second run adds nothing and skips the done photo
    again = build_dataset(photos, tmp_path / "d1", 1, small_chain, workers=1, progress=False)
    assert (again.done, again.skipped) == (0, 1)
    assert len(read_manifest(tmp_path / "d1")) == 1
    with pytest.raises(InvalidInput, match="stage-1 dataset"):
        build_dataset(photos, tmp_path / "d1", 2, small_chain, workers=1, progress=False)

    r2 = build_dataset(photos, tmp_path / "d2", 2, small_chain, workers=1, progress=False)
    assert r2.done == 1
    it2 = read_manifest(tmp_path / "d2")[0]
    assert it2["whitened"] is True
    assert it2["mask_source"] == "parser"
    img = cv2.imread(str(tmp_path / "d2" / it2["image"]))
    assert min(img.shape[:2]) == 560
    w2 = np.load(tmp_path / "d2" / it2["wplus"])
    parser = chain._parser()
    assert np.allclose(w2, chain.encode_input(e4e_input(aligned, parser.mask(aligned))), atol=1e-6)  # whitened
    mask = cv2.imread(str(tmp_path / "d2" / it2["mask"]), cv2.IMREAD_GRAYSCALE)
    x0, y0, x1, y1 = (int(v) for v in it2["face_box"])
    assert it2["face_area"] == float((mask > 0).sum()) > 0
    # the face region lies around the detected face
    assert mask[y0:y1, x0:x1].mean() > 3 * mask.mean()
    ds = TrainDataset(tmp_path / "d2", 2, 64, seed=0)
    sample = ds.get(0, 0)
    assert sample["pixel_values"].shape == (3, 64, 64)
    assert sample["mask"].shape == (1, 64, 64)
    assert sample["caption"] in ("an astronaut in a white suit", "woman smiling, flag behind")
    assert 0.0 < sample["mask"].mean() < 1.0
    assert torch.from_numpy(sample["wplus"]).shape == (18, 512)


def chain_without_parser():
    from engine.faces.chain import FaceChain

    chain = small_chain()
    return FaceChain(chain._e4e_loader, None)


def test_stage2_without_parser_uses_the_landmark_hull(photos, tmp_path):
    rep = build_dataset(photos, tmp_path / "d", 2, chain_without_parser, workers=1, progress=False)
    assert rep.done == 1
    item = read_manifest(tmp_path / "d")[0]
    assert item["mask_source"] == "landmarks"
    assert item["whitened"] is False
    mask = cv2.imread(str(tmp_path / "d" / item["mask"]), cv2.IMREAD_GRAYSCALE)
    x0, y0, x1, y1 = (int(v) for v in item["face_box"])
    assert mask[y0:y1, x0:x1].mean() > 150  # the hull covers the detected face box
    assert mask.mean() < 0.5 * mask[y0:y1, x0:x1].mean()
