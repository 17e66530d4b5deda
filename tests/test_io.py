"""The bad-input table for image loading: every row is built here and must give RGB or one InputError line."""

from __future__ import annotations

import io
import struct
import subprocess
import sys
import textwrap
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from emojidiff.errors import InputError
from emojidiff.io import MAX_SIDE, load_image


def _one_line_error(path, match: str) -> str:
    with pytest.raises(InputError, match=match) as exc:
        load_image(path, "test image")
    msg = str(exc.value)
    assert "\n" not in msg and "test image" in msg and str(Path(path).name) in msg
    return msg


def _gradient(w: int = 64, h: int = 48) -> np.ndarray:
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([x * 255 // max(w - 1, 1), y * 255 // max(h - 1, 1), np.full_like(x, 90)], -1).astype(np.uint8)


def test_missing_path(tmp_path):
    _one_line_error(tmp_path / "nope.png", "does not exist")


def test_directory(tmp_path):
    d = tmp_path / "photos.jpg"
    d.mkdir()
    _one_line_error(d, "is a directory")


def test_zero_byte(tmp_path):
    p = tmp_path / "empty.jpg"
    p.write_bytes(b"")
    _one_line_error(p, "empty")


@pytest.mark.parametrize(
    "content,kind",
    [(b"hello, this is not a picture\n", "text file"), (b"%PDF-1.4 ...", "PDF"), (b"PK\x03\x04junk", "ZIP")],
)
def test_non_image_with_image_extension(tmp_path, content, kind):
    p = tmp_path / "face.png"
    p.write_bytes(content)
    msg = _one_line_error(p, "not an image")
    assert kind in msg


@pytest.mark.parametrize("fmt,suffix", [("JPEG", ".jpg"), ("PNG", ".png")])
def test_truncated(tmp_path, fmt, suffix):
    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (128, 128, 3), dtype=np.uint8)).save(buf, fmt)
    p = tmp_path / f"cut{suffix}"
    p.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    _one_line_error(p, "corrupt or truncated")


def test_corrupt_header(tmp_path):
    buf = io.BytesIO()
    Image.fromarray(_gradient()).save(buf, "PNG")
    data = bytearray(buf.getvalue())
    data[16:24] = b"\xff" * 8  # IHDR width/height garbage (and CRC now wrong)
    p = tmp_path / "bad.png"
    p.write_bytes(bytes(data))
    with pytest.raises(InputError) as exc:
        load_image(p, "test image")
    assert "\n" not in str(exc.value)


def test_animated_gif_first_frame(tmp_path):
    frames = [Image.new("RGB", (32, 32), c) for c in [(255, 0, 0), (0, 255, 0), (0, 0, 255)]]
    p = tmp_path / "anim.gif"
    frames[0].save(p, save_all=True, append_images=frames[1:], duration=100, loop=0)
    notes: list[str] = []
    img = load_image(p, notes=notes)
    assert img.mode == "RGB" and img.size == (32, 32)
    r, g, b = np.asarray(img)[16, 16]
    assert r > 200 and g < 50 and b < 50  # the first (red) frame
    assert any("first of 3 frames" in n for n in notes)


def test_cmyk_jpeg(tmp_path):
    p = tmp_path / "cmyk.jpg"
    Image.new("RGB", (40, 30), (200, 30, 40)).convert("CMYK").save(p, "JPEG", quality=95)
    assert Image.open(p).mode == "CMYK"
    img = load_image(p)
    assert img.mode == "RGB"
    r, g, b = np.asarray(img, dtype=int)[15, 20]
    assert abs(r - 200) < 20 and abs(g - 30) < 20 and abs(b - 40) < 20


def test_16bit_gray_png(tmp_path):
    p = tmp_path / "deep.png"
    arr = np.linspace(0, 65535, 64 * 64).reshape(64, 64).astype(np.uint16)
    Image.fromarray(arr).save(p)
    assert Image.open(p).mode.startswith("I")
    img = load_image(p)
    a = np.asarray(img)
    assert img.mode == "RGB" and a[0, 0, 0] == 0 and a[-1, -1, 0] == 255  # full range kept, not clipped


def _png_chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)


def _write_png_rgb16(path: Path, rgb16: np.ndarray) -> None:
    h, w, _ = rgb16.shape
    raw = b"".join(b"\x00" + rgb16[y].astype(">u2").tobytes() for y in range(h))
    ihdr = struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", zlib.compress(raw))
        + _png_chunk(b"IEND", b"")
    )


def test_16bit_rgb_png(tmp_path):
    p = tmp_path / "deep_rgb.png"
    arr = np.zeros((16, 16, 3), np.uint16)
    arr[..., 0] = 65535
    arr[..., 2] = 32768
    _write_png_rgb16(p, arr)
    a = np.asarray(load_image(p), dtype=int)
    assert a.shape == (16, 16, 3) and a[0, 0, 0] == 255 and a[0, 0, 1] == 0 and abs(a[0, 0, 2] - 128) <= 1


def test_alpha_flattened_on_white(tmp_path):
    p = tmp_path / "alpha.png"
    rgba = np.zeros((20, 20, 4), np.uint8)
    rgba[..., 0] = 255
    rgba[:10, :, 3] = 255  # top half opaque red, bottom half fully transparent
    Image.fromarray(rgba, "RGBA").save(p)
    notes: list[str] = []
    a = np.asarray(load_image(p, notes=notes))
    assert tuple(a[2, 2]) == (255, 0, 0) and tuple(a[15, 2]) == (255, 255, 255)
    assert any("transparency" in n for n in notes)


def test_palette_with_transparency(tmp_path):
    p = tmp_path / "pal.gif"
    im = Image.new("P", (8, 8), 1)
    im.putpalette([0, 0, 0, 10, 200, 10] + [0] * 762)
    im.info["transparency"] = 0
    im.save(p, transparency=0)
    assert np.asarray(load_image(p)).shape == (8, 8, 3)


@pytest.mark.parametrize("orientation,expected_size", [(6, (48, 64)), (8, (48, 64)), (3, (64, 48)), (1, (64, 48))])
def test_exif_orientation_respected(tmp_path, orientation, expected_size):
    arr = np.zeros((48, 64, 3), np.uint8)
    arr[:8, :8] = (255, 0, 0)  # red marker in the stored top-left corner
    im = Image.fromarray(arr)
    exif = im.getexif()
    exif[0x0112] = orientation
    p = tmp_path / f"rot{orientation}.jpg"
    im.save(p, "JPEG", exif=exif.tobytes(), quality=95)
    img = load_image(p)
    assert img.size == expected_size
    a = np.asarray(img, dtype=int)
    h, w = a.shape[:2]
    # where the stored top-left corner lands after applying the orientation
    corner = {1: (0, 0), 3: (h - 1, w - 1), 6: (0, w - 1), 8: (h - 1, 0)}[orientation]
    y, x = corner
    assert a[y, x, 0] > 150 and a[y, x, 1] < 100


def test_grayscale(tmp_path):
    p = tmp_path / "gray.png"
    Image.fromarray(np.full((30, 20), 77, np.uint8), "L").save(p)
    img = load_image(p)
    assert img.mode == "RGB" and tuple(np.asarray(img)[0, 0]) == (77, 77, 77)


def test_one_bit(tmp_path):
    p = tmp_path / "bw.png"
    Image.new("1", (10, 10), 1).save(p)
    assert tuple(np.asarray(load_image(p))[0, 0]) == (255, 255, 255)


def _huge_gray_jpeg(path: Path, w: int, h: int) -> None:
    """A valid baseline JPEG of w x h uniform gray built by hand (a few MB, never held in memory as pixels).

    One Huffman code per table: DC difference 0 and AC end-of-block are both the 1-bit code '0', so each 8x8
    block is 2 zero bits.
    """
    assert w % 8 == 0 and h % 8 == 0
    seg = lambda marker, data: b"\xff" + bytes([marker]) + struct.pack(">H", len(data) + 2) + data  # noqa: E731
    dqt = seg(0xDB, b"\x00" + bytes([1] * 64))
    sof = seg(0xC0, struct.pack(">BHHB", 8, h, w, 1) + bytes([1, 0x11, 0]))
    one_code = bytes([1] + [0] * 15)  # one code of length 1
    dht = seg(0xC4, b"\x00" + one_code + b"\x00" + b"\x10" + one_code + b"\x00")
    sos = seg(0xDA, bytes([1, 1, 0x00, 0, 63, 0]))
    nbits = (w // 8) * (h // 8) * 2
    data = b"\x00" * ((nbits + 7) // 8)
    path.write_bytes(b"\xff\xd8" + dqt + sof + dht + sos + data + b"\xff\xd9")


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="peak memory is read from /proc (Linux)")
def test_huge_jpeg_downscaled_with_bounded_memory(tmp_path):
    p = tmp_path / "huge.jpg"
    _huge_gray_jpeg(p, 20000, 20000)
    # in a fresh process, so that peak RSS measures this load only (a full decode would need >= 400 MB)
    code = textwrap.dedent(
        rf"""
        import re, numpy as np
        from emojidiff.io import load_image
        notes = []
        img = load_image({str(p)!r}, notes=notes)
        a = np.asarray(img)
        # VmHWM: this process's own peak (ru_maxrss would include the parent's peak, inherited through fork+exec)
        status = open("/proc/self/status").read()
        peak = int(re.search(r"VmHWM:\s+(\d+) kB", status).group(1)) // 1024
        print(img.size[0], img.size[1], int(a.min()), int(a.max()), peak)
        print(notes)
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    w, h, lo, hi, peak_mb = map(int, out.stdout.splitlines()[0].split())
    assert max(w, h) <= MAX_SIDE and w == h
    assert 100 <= lo <= hi <= 156  # uniform mid gray
    assert peak_mb < 250, f"peak RSS {peak_mb} MB: the full 20000x20000 image was decoded"
    assert "reduced scale" in out.stdout


def test_huge_png_refused_before_decoding(tmp_path):
    p = tmp_path / "huge.png"
    ihdr = struct.pack(">IIBBBBB", 20000, 20000, 8, 2, 0, 0, 0)
    # header only, and a tiny IDAT: if the loader tried to decode it, it would say 'corrupt', not 'too large'
    p.write_bytes(b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", zlib.compress(b"\x00" * 10)))
    msg = _one_line_error(p, "too large")
    assert "20000x20000" in msg


def test_large_image_downscaled_to_max_side(tmp_path, monkeypatch):
    import emojidiff.io as eio

    monkeypatch.setattr(eio, "MAX_SIDE", 100)
    p = tmp_path / "big.png"
    Image.fromarray(_gradient(300, 150)).save(p)
    notes: list[str] = []
    img = load_image(p, notes=notes)
    assert img.size == (100, 50) and any("downscaled" in n for n in notes)


def test_ordinary_photo_unchanged(tmp_path):
    p = tmp_path / "ok.png"
    arr = _gradient()
    Image.fromarray(arr).save(p)
    notes: list[str] = []
    img = load_image(p, notes=notes)
    assert np.array_equal(np.asarray(img), arr) and notes == []
    # the file is not held open after loading
    p.unlink()
    assert np.asarray(img).shape == arr.shape


def test_tiny_image_loads(tmp_path):
    p = tmp_path / "dot.png"
    Image.new("RGB", (1, 1), (1, 2, 3)).save(p)
    assert load_image(p).size == (1, 1)
