"""engine.images.load_image on good and bad files: every refusal is an ImageUnreadable with a clear message."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from engine.errors import ImageUnreadable
from engine.images import as_rgb_uint8, load_image


def _png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture
def rgb():
    rng = np.random.default_rng(0)
    return (rng.random((30, 40, 3)) * 255).astype(np.uint8)


def test_rgb_png_round_trip(tmp_path, rgb):
    p = tmp_path / "a.png"
    Image.fromarray(rgb).save(p)
    out = load_image(p)
    assert out.dtype == np.uint8
    assert out.flags.c_contiguous
    assert np.array_equal(out, rgb)
    assert np.array_equal(load_image(p.read_bytes()), rgb)


def test_rgba_drops_alpha(rgb):
    rgba = np.concatenate([rgb, np.zeros((30, 40, 1), np.uint8)], axis=2)
    assert np.array_equal(load_image(_png_bytes(Image.fromarray(rgba, "RGBA"))), rgb)


def test_grayscale_is_replicated(rgb):
    g = rgb[..., 0]
    out = load_image(_png_bytes(Image.fromarray(g, "L")))
    assert out.shape == (30, 40, 3)
    assert all(np.array_equal(out[..., c], g) for c in range(3))


def test_16_bit_grey_png_is_scaled_to_8_bits(tmp_path):
    import cv2

    g = (np.arange(30 * 40).reshape(30, 40) * 50).astype(np.uint16)
    p = tmp_path / "g16.png"
    cv2.imwrite(str(p), g)
    assert Image.open(p).mode.startswith("I;16")
    out = load_image(p)
    assert np.array_equal(out[..., 0], np.rint(g / 257.0).astype(np.uint8))


def test_16_bit_rgb_png_loads(tmp_path):
    import cv2

    a = (np.random.default_rng(1).random((20, 30, 3)) * 65535).astype(np.uint16)
    p = tmp_path / "rgb16.png"
    cv2.imwrite(str(p), a)  # BGR on disk
    out = load_image(p)
    assert np.abs(out.astype(int) - np.rint(a[..., ::-1] / 257.0)).max() <= 1


def test_cmyk_jpeg_is_converted(rgb):
    buf = io.BytesIO()
    Image.fromarray(rgb).convert("CMYK").save(buf, format="JPEG", quality=95)
    out = load_image(buf.getvalue())
    assert out.shape == (30, 40, 3)
    assert np.abs(out.astype(int) - rgb).mean() < 12  # JPEG loss only, not inverted colours


def test_exif_rotated_photo_stands_upright():
    blocks = np.zeros((32, 48, 3), np.uint8)
    blocks[:16, :24] = (255, 0, 0)  # red top-left, blue bottom-right: any rotation or flip is visible
    blocks[16:, 24:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to view"
    buf = io.BytesIO()
    Image.fromarray(blocks).save(buf, format="JPEG", quality=100, subsampling=0, exif=exif.tobytes())
    out = load_image(buf.getvalue())
    assert out.shape == (48, 32, 3)
    upright = np.rot90(blocks, k=-1)
    assert np.abs(out.astype(int) - upright).mean() < 4


def test_corrupt_file_is_refused(tmp_path):
    p = tmp_path / "x.jpg"
    p.write_bytes(b"this is not an image at all")
    with pytest.raises(ImageUnreadable, match="not an image file"):
        load_image(p)


def test_truncated_png_is_refused(rgb):
    data = _png_bytes(Image.fromarray(rgb))
    with pytest.raises(ImageUnreadable, match="damaged or truncated"):
        load_image(data[: len(data) // 2])


def test_truncated_jpeg_is_refused(rgb):
    buf = io.BytesIO()
    Image.fromarray(np.tile(rgb, (10, 10, 1))).save(buf, format="JPEG")
    data = buf.getvalue()
    with pytest.raises(ImageUnreadable, match="damaged or truncated"):
        load_image(data[: len(data) // 2])


def test_missing_file_and_folder(tmp_path):
    with pytest.raises(ImageUnreadable, match="does not exist"):
        load_image(tmp_path / "nope.png")
    with pytest.raises(ImageUnreadable, match="folder"):
        load_image(tmp_path)


def _huge_png_header(w: int, h: int) -> bytes:
    """A PNG whose header claims w×h but carries almost no data: decoding it would need gigabytes."""

    def chunk(tag: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + tag + body + struct.pack(">I", zlib.crc32(tag + body))

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b"")


def test_over_100_megapixels_is_refused_from_the_header():
    with pytest.raises(ImageUnreadable, match="megapixel limit") as exc:
        load_image(_huge_png_header(12_000, 10_000))  # 120 MP, refused before any decode
    assert "Scale it down" in exc.value.hint


def test_over_pil_bomb_limit_is_refused_too():
    with pytest.raises(ImageUnreadable, match=r"megapixel limit|too large"):
        load_image(_huge_png_header(20_000, 20_000))


def test_as_rgb_uint8_normalises_arrays(rgb):
    assert as_rgb_uint8(rgb[..., 0]).shape == (30, 40, 3)
    assert np.array_equal(as_rgb_uint8(np.concatenate([rgb, rgb[..., :1]], axis=2)), rgb)
    assert np.array_equal(as_rgb_uint8(rgb.astype(np.uint16) * 257), rgb)
    assert np.array_equal(as_rgb_uint8(rgb / 255.0), rgb)
    with pytest.raises(ImageUnreadable, match="H×W×3"):
        as_rgb_uint8(np.zeros((4, 4, 2), np.uint8))
    with pytest.raises(ImageUnreadable, match="NaN"):
        as_rgb_uint8(np.full((4, 4, 3), np.nan))
