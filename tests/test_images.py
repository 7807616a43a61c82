"""Decoding by content: every file the scrapes hold comes out as EXIF-oriented 8-bit RGB, or a clear error."""

from __future__ import annotations

import csv
import io

import numpy as np
import pytest
from PIL import Image

from facecls import images
from facecls.errors import ImageDecodeError
from facecls.images import NotAnImageError, decode_image, read_info


def hard_case_rows(data_dir):
    with open(data_dir / "hard-cases" / "manifest.csv", newline="") as file:
        return list(csv.DictReader(file))


def assert_rgb8(pixels: np.ndarray, height: int, width: int) -> None:
    assert pixels.dtype == np.uint8
    assert pixels.shape == (height, width, 3)


def test_every_decodable_hard_case_is_rgb8_of_its_real_format_and_size(data_dir):
    rows = [row for row in hard_case_rows(data_dir) if row["pillow_decode"] == "decodes"]
    assert len(rows) == 28
    for row in rows:
        path = data_dir / "hard-cases" / row["category"] / row["file"]
        decoded = decode_image(path)
        assert decoded.format == row["format"], row["file"]
        assert_rgb8(decoded.pixels, int(row["height"]), int(row["width"]))
        info = read_info(path)
        assert (info.format, info.width, info.height) == (row["format"], int(row["width"]), int(row["height"]))


@pytest.mark.parametrize(
    "relative, real_format",
    [
        ("wrong_extension/122908829.jpg", "AVIF"),
        ("wrong_extension/118b5f20-a273-11ef-8f42-3b1b720c6f90.jpg.jpg", "WEBP"),
        ("wrong_extension/March%252018_Sydney%2520Sweeney_Online_Header_Vertical.jpg", "WEBP"),
        ("wrong_extension/250.jpg", "PNG"),
        ("wrong_extension/messi_211.png", "JPEG"),
    ],
)
def test_wrong_extension_is_decoded_by_content(data_dir, relative, real_format):
    decoded = decode_image(data_dir / "hard-cases" / relative)
    assert decoded.format == real_format
    # A real photo, not a blank canvas: the pixels vary.
    assert decoded.pixels.std() > 10


def test_rgba_transparent_pixels_become_white(data_dir):
    path = data_dir / "hard-cases" / "alpha_and_palette" / "messi_84.png"
    raw = np.asarray(Image.open(path))
    transparent = raw[..., 3] == 0
    assert transparent.any() and (raw[transparent][:, :3] < 250).any(), "the hidden colour must not already be white"
    pixels = decode_image(path).pixels
    assert (pixels[transparent] == 255).all()
    opaque = raw[..., 3] == 255
    np.testing.assert_array_equal(pixels[opaque], raw[opaque][:, :3])


def test_rgba_is_composited_over_white(tmp_path):
    rgba = np.zeros((4, 4, 4), dtype=np.uint8)
    rgba[..., 0] = 200  # red everywhere ...
    rgba[:2, :, 3] = 0  # ... invisible in the top half
    rgba[2:, :, 3] = 128  # half visible in the bottom half
    path = tmp_path / "alpha.png"
    Image.fromarray(rgba, "RGBA").save(path)
    pixels = decode_image(path).pixels
    assert (pixels[:2] == 255).all()
    np.testing.assert_allclose(pixels[2:, :, 0], 228, atol=2)  # 200*0.5 + 255*0.5
    np.testing.assert_allclose(pixels[2:, :, 1:], 127, atol=2)


def test_palette_with_transparency_key_becomes_white(data_dir):
    path = data_dir / "hard-cases" / "alpha_and_palette" / "messi_162.png"
    raw = Image.open(path)
    assert raw.mode == "P" and "transparency" in raw.info
    corner_index = np.asarray(raw)[0, 0]
    assert raw.getpalette()[3 * corner_index : 3 * corner_index + 3] == [0, 0, 0]  # black under the key
    pixels = decode_image(path).pixels
    assert_rgb8(pixels, 2000, 2000)
    assert (pixels[0, 0] == 255).all()


def test_palette_without_transparency_keeps_its_colours(data_dir):
    path = data_dir / "hard-cases" / "alpha_and_palette" / "image_49.png"
    expected = np.asarray(Image.open(path).convert("RGB"))
    np.testing.assert_array_equal(decode_image(path).pixels, expected)


@pytest.mark.parametrize("name", ["camera.png", "0-SYDNEY-SWEENEY-PROFILE-02-scaled.jpg"])
def test_grayscale_becomes_three_equal_channels(data_dir, name):
    path = data_dir / "hard-cases" / "grayscale" / name
    gray = np.asarray(Image.open(path))
    assert gray.ndim == 2
    pixels = decode_image(path).pixels
    for channel in range(3):
        np.testing.assert_array_equal(pixels[..., channel], gray)


def test_16_bit_grayscale_is_scaled_not_clipped(tmp_path):
    values = np.linspace(0, 65535, 256).round().astype(np.uint16)[None, :].repeat(4, axis=0)
    path = tmp_path / "deep.png"
    Image.fromarray(values).save(path)
    assert Image.open(path).mode.startswith("I")  # really stored as 16-bit
    pixels = decode_image(path).pixels
    assert_rgb8(pixels, 4, 256)
    np.testing.assert_allclose(pixels[0, :, 0], values[0] / 257.0, atol=1)
    assert pixels[0, 128, 0] == pytest.approx(128, abs=1)


def test_cmyk_jpeg_becomes_rgb(tmp_path):
    path = tmp_path / "print.jpg"
    cmyk = Image.new("CMYK", (16, 8), (0, 0, 0, 0))
    cmyk.paste((0, 255, 255, 0), (0, 0, 8, 8))  # red on the left, white on the right
    cmyk.save(path, quality=95)
    assert Image.open(path).mode == "CMYK"
    pixels = decode_image(path).pixels
    assert_rgb8(pixels, 8, 16)
    np.testing.assert_allclose(pixels[4, 2], (255, 0, 0), atol=12)
    np.testing.assert_allclose(pixels[4, 13], (255, 255, 255), atol=12)


def orientation_jpeg(path, orientation: int) -> None:
    """A 60x30 JPEG stored landscape: left half red, right half blue, a green top-left corner."""
    stored = np.zeros((30, 60, 3), dtype=np.uint8)
    stored[:, :30] = (255, 0, 0)
    stored[:, 30:] = (0, 0, 255)
    stored[:10, :10] = (0, 255, 0)
    image = Image.fromarray(stored)
    exif = image.getexif()
    exif[0x0112] = orientation
    image.save(path, quality=95, exif=exif)


def color_at(pixels: np.ndarray, y: int, x: int) -> str:
    names = {"red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255)}
    return min(names, key=lambda name: np.abs(pixels[y, x].astype(int) - names[name]).sum())


@pytest.mark.parametrize(
    "orientation, top, bottom, corner",
    [
        # 6: the camera was turned clockwise; the stored left edge is shown at the top.
        (6, "red", "blue", (5, 24)),  # the stored top-left corner ends up top-right
        # 8: turned counter-clockwise; the stored left edge is shown at the bottom.
        (8, "blue", "red", (55, 5)),  # ... and the corner bottom-left
    ],
)
def test_exif_orientation_is_applied(tmp_path, orientation, top, bottom, corner):
    path = tmp_path / f"rotated{orientation}.jpg"
    orientation_jpeg(path, orientation)
    info = read_info(path)
    assert (info.width, info.height) == (30, 60)
    pixels = decode_image(path).pixels
    assert_rgb8(pixels, 60, 30)
    assert color_at(pixels, 20, 15) == top
    assert color_at(pixels, 45, 15) == bottom
    assert color_at(pixels, *corner) == "green"


def test_exif_orientation_0_is_left_as_stored(data_dir):
    path = data_dir / "hard-cases" / "exif_orientation" / "Leonardo_DiCaprio_2010.jpg"
    assert Image.open(path).getexif().get(0x0112) == 0
    pixels = decode_image(path).pixels
    np.testing.assert_array_equal(pixels, np.asarray(Image.open(path).convert("RGB")))


def test_animated_gif_gives_its_first_frame(tmp_path):
    path = tmp_path / "animated.gif"
    frames = [Image.new("RGB", (12, 10), color) for color in ((255, 0, 0), (0, 0, 255), (0, 255, 0))]
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=100, loop=0)
    assert Image.open(path).n_frames == 3
    pixels = decode_image(path).pixels
    assert_rgb8(pixels, 10, 12)
    assert color_at(pixels, 5, 5) == "red"


def test_truncated_shared_file_is_a_decode_error_with_the_decoders_reason(data_dir):
    path = data_dir / "hard-cases" / "corrupt" / "truncated.jpg"
    with pytest.raises(ImageDecodeError) as caught:
        decode_image(path)
    assert not isinstance(caught.value, NotAnImageError)  # a broken image, not "not an image"
    assert "truncated" in caught.value.reason.lower()
    assert caught.value.path == str(path)
    assert "truncated" in str(caught.value).lower() and str(path) in str(caught.value)


def test_jpeg_cut_in_half_is_a_decode_error(tmp_path, data_dir):
    whole = (data_dir / "hard-cases" / "tiny" / "obama_small.jpg").read_bytes()
    path = tmp_path / "half.jpg"
    path.write_bytes(whole[: len(whole) // 2])
    read_info(path)  # the header is intact ...
    with pytest.raises(ImageDecodeError) as caught:  # ... the pixels are not
        decode_image(path)
    assert not isinstance(caught.value, NotAnImageError)
    assert "truncated" in caught.value.reason.lower()


def test_html_saved_as_jpg_is_not_an_image(tmp_path):
    path = tmp_path / "photo.jpg"
    path.write_text("<!DOCTYPE html>\n<html><head><title>403 Forbidden</title></head><body>nope</body></html>\n")
    with pytest.raises(NotAnImageError) as caught:
        decode_image(path)
    assert "HTML" in caught.value.reason
    with pytest.raises(NotAnImageError):
        read_info(path)


def test_zero_byte_file_is_not_an_image(tmp_path):
    path = tmp_path / "empty.jpg"
    path.write_bytes(b"")
    with pytest.raises(NotAnImageError) as caught:
        decode_image(path)
    assert caught.value.reason == "empty file"


def test_garbage_after_an_image_signature_is_a_decode_error_not_not_an_image(tmp_path):
    path = tmp_path / "broken.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4)
    with pytest.raises(ImageDecodeError) as caught:
        decode_image(path)
    assert not isinstance(caught.value, NotAnImageError)


def test_missing_file_is_a_decode_error(tmp_path):
    with pytest.raises(ImageDecodeError) as caught:
        decode_image(tmp_path / "gone.jpg")
    assert "No such file" in caught.value.reason


def test_max_pixels_refuses_before_decoding(tmp_path):
    path = tmp_path / "big.png"
    Image.new("RGB", (200, 100), "white").save(path)
    with pytest.raises(ImageDecodeError, match="200x100 is over the limit"):
        decode_image(path, max_pixels=19_999)
    assert_rgb8(decode_image(path, max_pixels=20_000).pixels, 100, 200)


def test_encode_then_decode_round_trips(tmp_path):
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)
    images.write_image(tmp_path / "lossless.png", pixels)
    np.testing.assert_array_equal(decode_image(tmp_path / "lossless.png").pixels, pixels)
    with pytest.raises(ValueError, match="jpg or png"):
        images.encode_image(pixels, "gif")
    assert io.BytesIO(images.encode_image(pixels, "jpg")).read(3) == b"\xff\xd8\xff"


def test_heic_named_jpg_decodes_like_a_jpeg_with_the_same_exif_orientation(tmp_path):
    """Real HEIC files, made with pillow-heif as a phone's would be, oriented by their EXIF."""
    rows, columns = np.mgrid[0:48, 0:64]
    picture = Image.fromarray(np.stack([rows * 5, columns * 4, (rows + columns) * 2], axis=2).astype(np.uint8))
    for orientation in (1, 3, 6, 8):
        exif = Image.Exif()
        exif[0x0112] = orientation
        heic, jpeg = tmp_path / f"phone-{orientation}.jpg", tmp_path / f"reference-{orientation}.jpeg"
        picture.save(heic, format="HEIF", quality=95, exif=exif.tobytes())
        picture.save(jpeg, format="JPEG", quality=95, exif=exif.tobytes())
        assert heic.read_bytes()[4:12] == b"ftypheic"
        decoded, expected = decode_image(heic), decode_image(jpeg)
        assert decoded.format == "HEIF" and decoded.pixels.shape == expected.pixels.shape, orientation
        assert (decoded.width, decoded.height) == ((48, 64) if orientation in (6, 8) else (64, 48))
        assert np.abs(decoded.pixels.astype(int) - expected.pixels).mean() < 6, orientation
        info = read_info(heic)
        assert (info.width, info.height) == (decoded.width, decoded.height)
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(heic.read_bytes()[:300])
    with pytest.raises(ImageDecodeError, match="HEIC/HEIF"):
        decode_image(cut)
