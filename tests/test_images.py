"""The one image loader: allowlist, bombs, EXIF orientation, every mode, and torchvision's eval preset."""

from __future__ import annotations

import io
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cnnzoo.artifact import InputSpec
from cnnzoo.errors import UserError
from cnnzoo.images import (
    ALLOWED_FORMATS,
    ImageError,
    ImageTooLarge,
    UnsupportedFormat,
    fit_images,
    normalize,
    open_image,
    preprocess,
    to_mode,
)


def encode(image: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **kw)
    return buf.getvalue()


def gradient(size=(24, 16)) -> Image.Image:
    w, h = size
    x, y = np.meshgrid(np.linspace(0, 255, w), np.linspace(0, 255, h))
    return Image.fromarray(np.stack([x, y, 255 - x], -1).astype(np.uint8), "RGB")


def png_with_header(width: int, height: int) -> bytes:
    """A valid-looking PNG whose IHDR declares width x height but which carries almost no data."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def test_import_is_torch_free():
    code = "import sys, cnnzoo.images; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("fmt", sorted(ALLOWED_FORMATS))
def test_allowed_formats_round_trip(fmt, tmp_path):
    path = tmp_path / f"img.{fmt.lower()}"
    path.write_bytes(encode(gradient(), fmt))
    image = open_image(path)
    assert image.mode == "RGB" and image.size == (24, 16)
    tolerance = {"JPEG": 40, "WEBP": 40, "GIF": 16}.get(fmt, 0)  # lossy codecs; GIF quantises to 256 colours
    assert np.abs(np.asarray(image, np.int16) - np.asarray(gradient(), np.int16)).max() <= tolerance
    # the same bytes as an upload, and as a file object
    assert open_image(path.read_bytes()).size == (24, 16)
    with open(path, "rb") as fp:
        assert open_image(fp, channels=1).mode == "L"


@pytest.mark.parametrize("fmt", ["ICO", "PCX", "PPM", "TGA"])
def test_formats_outside_the_allowlist_are_refused(fmt, tmp_path):
    path = tmp_path / f"img.{fmt.lower()}"
    path.write_bytes(encode(gradient((16, 16)), fmt))
    assert Image.open(path).format == fmt  # Pillow itself would read it
    with pytest.raises(ImageError, match=str(path)) as err:
        open_image(path)
    if fmt in ("ICO", "PCX", "PPM"):  # formats with magic bytes are named in the message
        assert err.type is UnsupportedFormat and fmt in str(err.value)


def test_not_an_image_names_the_file(tmp_path):
    text = tmp_path / "notes.jpg"
    text.write_text("this is not a JPEG\n")
    with pytest.raises(ImageError, match=r"notes\.jpg: not an image"):
        open_image(text)
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(ImageError, match=r"empty\.png"):
        open_image(tmp_path / "empty.png")
    with pytest.raises(ImageError, match="no such file"):
        open_image(tmp_path / "missing.png")
    with pytest.raises(ImageError, match="upload.png: not an image"):
        open_image(b"GIF-ish but not", name="upload.png")
    assert issubclass(ImageError, UserError)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_truncated_image(fmt, tmp_path):
    data = encode(gradient((64, 64)), fmt)
    path = tmp_path / f"cut.{fmt.lower()}"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageError, match=rf"cut\.{fmt.lower()}: truncated or corrupt {fmt}"):
        open_image(path)


def test_decompression_bombs_refused_before_decoding(tmp_path):
    # Pillow's own hard limit (over 179 MP): DecompressionBombError inside Image.open
    path = tmp_path / "bomb.png"
    path.write_bytes(png_with_header(30000, 30000))
    with pytest.raises(ImageTooLarge, match=r"bomb\.png"):
        open_image(path, max_pixels=10**12)
    # Pillow's warning band (89-179 MP) becomes an error too
    with pytest.raises(ImageTooLarge):
        open_image(png_with_header(10000, 10000), max_pixels=10**12)
    # our limit, from the header alone: decoding this one would fail, so passing proves nothing was decoded
    with pytest.raises(ImageTooLarge, match=r"9000x9000 = 81,000,000 pixels exceeds the limit of 67,108,864"):
        open_image(png_with_header(9000, 9000))
    with pytest.raises(ImageTooLarge):
        open_image(encode(gradient((20, 20)), "PNG"), max_pixels=399)
    assert open_image(encode(gradient((20, 20)), "PNG"), max_pixels=400).size == (20, 20)


def test_exif_orientation_applied():
    # a wide image stored with orientation 6 ("rotate 90 CW to display"): it displays tall
    stored = Image.new("RGB", (40, 20), (255, 255, 255))
    stored.paste((255, 0, 0), (0, 0, 10, 20))  # red on the stored left edge
    exif = Image.Exif()
    exif[0x0112] = 6
    image = open_image(encode(stored, "JPEG", exif=exif, quality=95))
    assert image.size == (20, 40)
    r, g, b = image.getpixel((10, 2))  # the left edge rotated clockwise lies along the top
    assert r > 200 and g < 60 and b < 60


def modes() -> dict[str, Image.Image]:
    grey = np.tile(np.arange(0, 256, 16, dtype=np.uint8), (4, 1))  # 4 x 16, 0..240
    rgb = np.stack([grey, 255 - grey, np.full_like(grey, 7)], -1)
    alpha = np.tile(np.array([0, 255] * 8, np.uint8), (4, 1))  # alternate transparent / opaque columns
    palette = Image.fromarray(rgb, "RGB").quantize(colors=16, method=Image.Quantize.MEDIANCUT)
    palette.info["transparency"] = palette.getpixel((0, 0))
    return {
        "1": Image.fromarray(grey > 100).convert("1"),
        "L": Image.fromarray(grey, "L"),
        "LA": Image.merge("LA", [Image.fromarray(grey), Image.fromarray(alpha)]),
        "P": palette,
        "RGBA": Image.merge("RGBA", [*Image.fromarray(rgb, "RGB").split(), Image.fromarray(alpha)]),
        "CMYK": Image.fromarray(rgb, "RGB").convert("CMYK"),
        "I;16": Image.fromarray(grey.astype(np.uint16) * 257),
        "I": Image.fromarray(grey.astype(np.int32) * 1000),
        "F": Image.fromarray(grey.astype(np.float32) / 255.0),
    }


def test_every_mode_converted():
    grey = np.tile(np.arange(0, 256, 16, dtype=np.uint8), (4, 1))
    rgb = np.stack([grey, 255 - grey, np.full_like(grey, 7)], -1)
    opaque = np.arange(16) % 2 == 1
    images = modes()
    for mode, image in images.items():
        assert image.mode == mode
        assert to_mode(image, 3).mode == "RGB" and to_mode(image, 1).mode == "L"
    # 16-bit and 32-bit samples are rescaled by their range, not clipped at 255: I;16 by 0..65535, the int32
    # image (0..240000) by its own maximum, the float image by the [0, 1] convention
    expected = {"I;16": grey, "I": np.arange(0, 256, 17, dtype=np.uint8)[None].repeat(4, 0), "F": grey}
    for mode in ("I;16", "I", "F"):
        np.testing.assert_array_equal(np.asarray(to_mode(images[mode], 1)), expected[mode])
    np.testing.assert_array_equal(np.asarray(to_mode(images["L"], 3))[..., 1], grey)
    np.testing.assert_array_equal(np.asarray(to_mode(images["1"], 1)), np.where(grey > 100, 255, 0))
    # L*a*b* goes through a colour transform (a plain convert would read it as RGB): L*=100, a*=b*=0 is white
    assert min(to_mode(Image.new("LAB", (2, 2), (255, 128, 128)), 3).getpixel((0, 0))) >= 250
    # CMYK -> RGB inverts Pillow's own RGB -> CMYK exactly
    np.testing.assert_array_equal(np.asarray(to_mode(images["CMYK"], 3)), rgb)
    # transparency is composited on white; opaque pixels are kept
    la, rgba, pal = (np.asarray(to_mode(images[m], 3)) for m in ("LA", "RGBA", "P"))
    assert (la[:, ~opaque] == 255).all() and (rgba[:, ~opaque] == 255).all()
    np.testing.assert_array_equal(la[:, opaque, 0], grey[:, opaque])
    np.testing.assert_array_equal(rgba[:, opaque], rgb[:, opaque])
    assert (pal[:, 0] == 255).all()  # the palette index marked transparent
    assert np.abs(pal[:, 1:].astype(int) - rgb[:, 1:]).max() <= 24  # 16-colour quantisation


def test_modes_through_files(tmp_path):
    # the same conversions when the modes come from real files: 16-bit PNG and TIFF, float TIFF, CMYK JPEG,
    # a GIF with a transparent index, a 1-bit BMP
    grey = np.tile(np.arange(0, 256, 16, dtype=np.uint8), (4, 1))
    images = modes()
    cases = [("I;16", "PNG"), ("I;16", "TIFF"), ("F", "TIFF"), ("CMYK", "JPEG"), ("P", "GIF"), ("1", "BMP")]
    cases.append(("LA", "PNG"))
    for mode, fmt in cases:
        path = tmp_path / f"{mode.replace(';', '')}.{fmt.lower()}"
        images[mode].save(path, fmt, **({"quality": 100} if fmt == "JPEG" else {}))
        out = open_image(path)
        expected = np.asarray(to_mode(images[mode], 3), np.int16)
        assert out.mode == "RGB" and np.abs(np.asarray(out, np.int16) - expected).max() <= (8 if fmt == "JPEG" else 0)
    np.testing.assert_array_equal(np.asarray(open_image(tmp_path / "I16.png", channels=1)), grey)


def test_preprocess_matches_torchvision():
    from torchvision import transforms as T

    mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    for size, resize, crop in [((37, 23), 16, (14, 14)), ((20, 30), 12, (12, 10)), ((32, 32), 32, (32, 32))]:
        image = gradient(size)
        reference = T.Compose([T.Resize(resize), T.CenterCrop(crop), T.ToTensor(), T.Normalize(mean, std)])(image)
        ours = preprocess(image, InputSpec(3, *crop, mean, std, "crop", resize))
        assert ours.dtype == np.float32 and ours.shape == (3, *crop)
        np.testing.assert_allclose(ours, reference.numpy(), atol=1e-6, rtol=0)
    grey = preprocess(gradient(), InputSpec(1, 8, 8, [0.5], [0.25], "crop", 8))
    assert grey.shape == (1, 8, 8)
    with pytest.raises(UserError, match="mean and std"):
        InputSpec(3, 8, 8, [0.5], [0.25], "crop", 8)


def test_preprocess_pads_a_crop_larger_than_the_image():
    from torchvision import transforms as T

    image = gradient((30, 20))
    reference = T.Compose([T.Resize(10), T.CenterCrop((13, 17)), T.ToTensor()])(image)
    spec = InputSpec(3, 13, 17, [0, 0, 0], [1, 1, 1], "crop", 10)
    np.testing.assert_allclose(preprocess(image, spec), reference.numpy(), atol=1e-6)


def test_a_sliver_image_is_cropped_within_bounded_memory():
    # A 1 x 100000 PNG (a few hundred bytes, far under the pixel limit) under a 224 crop of 256: resizing the whole
    # image first makes it 256 x 25,600,000 (6.5 G pixels) before the centre crop keeps 224 x 224. Run under a
    # 1.5 GB address-space limit, so that the unbounded resize fails there instead of exhausting the machine.
    # Oracle: a constant image stays that constant through any resize and crop.
    code = """
import resource
resource.setrlimit(resource.RLIMIT_AS, (1536 << 20, 1536 << 20))
import numpy as np
from PIL import Image
from cnnzoo.images import preprocess
from cnnzoo.artifact import InputSpec
spec = InputSpec(3, 224, 224, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), "crop", 256)
for size in ((1, 100000), (100000, 1)):
    out = preprocess(Image.new("RGB", size, (51, 102, 204)), spec)
    want = (np.array([51, 102, 204], np.float32)[:, None, None] / np.float32(255) - np.float32(0.5)) / np.float32(0.25)
    assert out.shape == (3, 224, 224) and np.array_equal(out, np.broadcast_to(want, out.shape)), out[:, 0, 0]
print("ok")
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-1500:]


def test_pad_and_stretch_policies_match_torchvision():
    """"pad": the longer side to resize_size, centred on a zero canvas (torchvision: Resize(max_size) + CenterCrop,
    which pads); "stretch": straight to H x W (Resize((H, W)))."""
    from torchvision import transforms as T

    image = gradient((30, 20))  # 30 wide, 20 high
    padded = preprocess(image, InputSpec(3, 16, 16, [0, 0, 0], [1, 1, 1], "pad", 12))
    reference = T.Compose([T.Resize((8, 12)), T.CenterCrop(16), T.ToTensor()])(image)
    np.testing.assert_allclose(padded, reference.numpy(), atol=1e-6)
    stretched = preprocess(image, InputSpec(3, 9, 13, [0, 0, 0], [1, 1, 1], "stretch"))
    np.testing.assert_allclose(stretched, T.Compose([T.Resize((9, 13)), T.ToTensor()])(image).numpy(), atol=1e-6)


@pytest.mark.parametrize("channels, size, spec", [
    (1, (8, 8), InputSpec(1, 32, 32, [0.3], [0.4], "stretch")),  # the digits
    (1, (28, 28), InputSpec(1, 32, 32, [0.1], [0.3], "pad", 28)),  # MNIST
    (3, (32, 32), InputSpec(3, 32, 32, [0.5, 0.4, 0.3], [0.2, 0.2, 0.2], "crop", 32)),  # CIFAR
    (1, (8, 8), InputSpec(3, 20, 24, [0.5] * 3, [0.25] * 3, "stretch", interpolation="bicubic")),  # grey -> RGB
    (3, (12, 10), InputSpec(1, 16, 16, [0.5], [0.25], "crop", 18)),  # RGB -> grey
])
def test_batch_fitting_equals_the_file_path(channels, size, spec):
    """fit_images (the in-memory datasets) and preprocess (image files) give the same tensor, bit for bit."""
    rng = np.random.default_rng(0)
    batch = rng.integers(0, 256, (3, channels, *size), dtype=np.uint8)
    fitted = fit_images(batch, spec)
    assert fitted.shape == (3, *spec.size) and fitted.dtype == np.uint8
    mode = "L" if channels == 1 else "RGB"
    for image, row in zip(batch, fitted):
        pil = Image.fromarray(image[0] if channels == 1 else image.transpose(1, 2, 0), mode)
        np.testing.assert_array_equal(normalize(row.transpose(1, 2, 0), spec), preprocess(pil, spec))


def test_returned_image_is_detached_from_the_file(tmp_path: Path):
    path = tmp_path / "a.png"
    gradient().save(path)
    image = open_image(path)
    path.unlink()
    assert np.asarray(image).shape == (16, 24, 3)


@pytest.mark.parametrize("channels", [1, 3])
def test_normalize_is_the_float32_formula_bit_for_bit(channels):
    """The table lookup gives exactly ((x / 255) - mean) / std in float32, the torch loaders' operations."""
    rng = np.random.default_rng(0)
    array = rng.integers(0, 256, size=(37, 23, channels), dtype=np.uint8)
    array[0, :channels, :] = 0
    array[1, :channels, :] = 255
    mean, std = (0.485, 0.456, 0.406)[:channels], (0.229, 0.224, 0.225)[:channels]
    spec = InputSpec(channels, 37, 23, mean, std, "stretch", 37)
    x = array.transpose(2, 0, 1).astype(np.float32) / np.float32(255.0)
    expected = (x - np.float32(mean).reshape(-1, 1, 1)) / np.float32(std).reshape(-1, 1, 1)
    got = normalize(array, spec)
    assert got.dtype == np.float32 and got.shape == (channels, 37, 23) and got.flags.c_contiguous
    assert np.array_equal(got, expected)
