"""The one module that reads and writes image files.

Files are decoded by content, never by extension (scrapes hold AVIF and WEBP named
``.jpg``, phones HEIC), EXIF orientation is applied, and every mode Pillow knows (palette,
RGBA, grayscale, 16-bit, CMYK) comes out as 8-bit RGB, the only input MTCNN and the model accept.
"""

from __future__ import annotations

import io
import math
import os
import stat
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError
from pillow_heif import register_heif_opener

from facecls.errors import FaceclsError, ImageDecodeError
from facecls.manifest import atomic_write_bytes

register_heif_opener()  # HEIC / HEIF, what phones save photos as

# We enforce our own pixel limit (IngestSettings.max_megapixels) before decoding;
# Pillow's own guard stays on as a backstop at twice its default.
Image.MAX_IMAGE_PIXELS = 2 * 89_478_485

# Signatures of image formats, for telling "a broken image" from "not an image at all".
_IMAGE_SIGNATURES = (
    b"\xff\xd8\xff",  # JPEG
    b"\x89PNG\r\n\x1a\n",
    b"GIF87a",
    b"GIF89a",
    b"BM",
    b"II*\x00",
    b"MM\x00*",
)
# ISO base media brands of HEIF images (HEIC photos, image sequences); AVIF is decoded by Pillow itself.
_HEIF_BRANDS = (b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"hevm", b"hevs", b"mif1", b"msf1")
# No JPEG can code a block of 8x8 pixels in under one bit (its DC coefficient), so a JPEG file
# smaller than this many bytes per pixel is truncated whatever its content (the decoder fills
# the missing part with grey instead of failing).
_JPEG_MIN_BYTES_PER_PIXEL = 1 / 512
# Modes Pillow's reduce() averages correctly (not palette indices, not 1-bit, not 16-bit).
_REDUCIBLE_MODES = ("L", "LA", "RGB", "RGBA", "CMYK", "YCbCr", "I", "F")


@dataclass(frozen=True)
class ImageInfo:
    """What a file is, read from its header without decoding the pixels."""

    format: str  # as Pillow names it: JPEG, PNG, WEBP, AVIF, ...
    width: int  # after EXIF orientation
    height: int
    mode: str


@dataclass(frozen=True)
class DecodedImage:
    """A decoded photo: 8-bit RGB pixels, EXIF-oriented."""

    pixels: np.ndarray  # height x width x 3, uint8
    format: str
    scale_x: float = 1.0  # the pixels' width over the photo's full (oriented) width: under 1 when decoded reduced
    scale_y: float = 1.0

    @property
    def width(self) -> int:
        return int(self.pixels.shape[1])

    @property
    def height(self) -> int:
        return int(self.pixels.shape[0])


class NotAnImageError(ImageDecodeError):
    """The file's content is not an image at all (HTML, text, an archive, ...)."""


class ImageTooLargeError(ImageDecodeError):
    """The image declares more pixels than we agree to decode (a decompression-bomb guard)."""


def sniff_content(head: bytes) -> str:
    """Name what a file holds from its first bytes, for error messages."""
    stripped = head.lstrip().lower()
    if not head:
        return "empty file"
    if not head.strip(b"\x00"):
        return "only zero bytes where its data should start (an unfinished download or a placeholder)"
    if stripped.startswith((b"<!doctype html", b"<html", b"<head", b"<body")) or b"<html" in stripped[:512]:
        return "HTML page"
    if stripped.startswith((b"<?xml", b"<svg")):
        return "SVG or XML document (vector images are not supported)"
    if stripped.startswith((b"{", b"[")):
        return "JSON text"
    if head.startswith(b"PK\x03\x04"):
        return "ZIP archive"
    if head.startswith(b"%PDF"):
        return "PDF document"
    try:
        head.decode("utf-8")
        return "text"
    except UnicodeDecodeError:
        return "unknown binary data"


def looks_like_image(head: bytes) -> bool:
    if head.startswith(_IMAGE_SIGNATURES):
        return True
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return True
    return head[4:8] == b"ftyp"  # AVIF / HEIF containers


def is_heif(head: bytes) -> bool:
    return head[4:8] == b"ftyp" and head[8:12] in _HEIF_BRANDS


def special_file_reason(mode: int) -> str:
    """What a file that is not a regular file is, from its st_mode, for reasons."""
    kinds = ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a named pipe"), (stat.S_ISSOCK, "a socket"),
             (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"))  # fmt: skip
    kind = next((name for test, name in kinds if test(mode)), "a special file")
    return f"not a regular file ({kind})"


def _open(path: Path) -> Image.Image:
    path = Path(path)
    try:
        # Before opening: opening a socket fails with a misleading "No such device or address".
        mode = os.stat(path).st_mode
        if not stat.S_ISREG(mode):
            raise ImageDecodeError(path, special_file_reason(mode))
        # O_NONBLOCK: a FIFO swapped in after the check must not wait forever for a writer.
        with os.fdopen(os.open(path, os.O_RDONLY | os.O_NONBLOCK), "rb") as file:
            mode = os.fstat(file.fileno()).st_mode
            if not stat.S_ISREG(mode):
                raise ImageDecodeError(path, special_file_reason(mode))
            head = file.read(64)
    except OSError as error:
        raise ImageDecodeError(path, error.strerror or str(error)) from None
    if not head:
        raise NotAnImageError(path, "empty file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            return Image.open(path)
    except UnidentifiedImageError:
        if is_heif(head):
            raise ImageDecodeError(path, "HEIC/HEIF image that the HEIF decoder (pillow-heif) cannot read; it is probably truncated or corrupt") from None
        if looks_like_image(head):
            raise ImageDecodeError(path, "image header not understood; the file is probably truncated or corrupt") from None
        raise NotAnImageError(path, f"content is {sniff_content(head)}, not an image") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise ImageTooLargeError(path, f"too large to decode safely ({error})") from None
    except (OSError, ValueError, SyntaxError) as error:
        raise ImageDecodeError(path, str(error) or type(error).__name__) from None


def _oriented_size(image: Image.Image) -> tuple[int, int]:
    width, height = image.size
    try:
        orientation = image.getexif().get(0x0112, 1)
    except Exception:  # a broken EXIF block never makes a photo unreadable
        orientation = 1
    if orientation in (5, 6, 7, 8):
        return height, width
    return width, height


def read_info(path: Path) -> ImageInfo:
    """Read format and oriented size from the header; raises ImageDecodeError."""
    with _open(path) as image:
        width, height = _oriented_size(image)
        return ImageInfo(format=image.format or "unknown", width=width, height=height, mode=image.mode)


def _to_rgb(image: Image.Image) -> np.ndarray:
    mode = image.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        values = np.asarray(image, dtype=np.float64)
        top = 65535.0 if mode.startswith("I;16") or values.max(initial=0) > 255 else 255.0
        gray = np.clip(values / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return np.repeat(gray[:, :, None], 3, axis=2)
    if mode == "F":
        values = np.asarray(image, dtype=np.float64)
        low, high = float(values.min(initial=0)), float(values.max(initial=1))
        gray = np.clip((values - low) / max(high - low, 1e-9) * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return np.repeat(gray[:, :, None], 3, axis=2)
    if mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        # Transparent backgrounds become white, as a browser shows them.
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    return np.asarray(image.convert("RGB"), dtype=np.uint8)


def decode_image(
    path: Path, max_pixels: int | None = None, least_scale: Callable[[int, int], float] | None = None
) -> DecodedImage:
    """Decode a file by content into EXIF-oriented 8-bit RGB, whole or reduced.

    Args:
        path: the file.
        max_pixels: refuse images with more pixels than this, before decoding them.
        least_scale: decode reduced, for thumbnails: ``least_scale(width, height)`` of the full
            EXIF-oriented size is what the caller needs, and the pixels come out at no less than
            twice that (the caller's own area resize then sets the final size). A report decodes
            thousands of photos, some 30000 pixels wide (54 MB of RGB, copied by each conversion):
            JPEG is decoded straight at 1/2, 1/4 or 1/8 of its size (Pillow's draft), other
            formats are reduced right after decoding, before the RGB conversion.
            ``DecodedImage.scale_x`` and ``scale_y`` say the scale reached.

    Raises:
        NotAnImageError: the content is not an image.
        ImageDecodeError: the image is corrupt, truncated or too large.
    """
    path = Path(path)
    with _open(path) as image:
        width, height = image.size
        if max_pixels is not None and width * height > max_pixels:
            raise ImageTooLargeError(path, f"{width}x{height} is over the limit of {max_pixels / 1e6:.0f} megapixels")
        file_format = image.format or "unknown"
        try:
            image.seek(0)  # the first frame of an animation
            wanted = None
            if least_scale is not None:
                # Twice the size asked for, as Pillow's thumbnail() does: the area resize that follows
                # then sets the final size, so rounding in the coarse steps does not skew a thin photo.
                scale = min(1.0, 2 * max(least_scale(*_oriented_size(image)), 1e-6))
                wanted = (max(1, math.ceil(width * scale)), max(1, math.ceil(height * scale)))
                image.draft(image.mode, wanted)  # JPEG only: never smaller than ``wanted``
            image.load()
            try:
                orientation = image.getexif().get(0x0112, 1)
                ImageOps.exif_transpose(image, in_place=True)
            except Exception:  # an unusable EXIF block: keep the pixels as stored
                orientation = 1
            if orientation in (5, 6, 7, 8):
                width, height = height, width
                if wanted is not None:
                    wanted = wanted[::-1]
            reduced = image
            if wanted is not None:
                factor = min(image.width // wanted[0], image.height // wanted[1])
                if factor > 1 and image.mode in _REDUCIBLE_MODES:
                    reduced = image.reduce(factor)
            pixels = _to_rgb(reduced)
        except (OSError, ValueError, SyntaxError, EOFError, MemoryError) as error:
            raise ImageDecodeError(path, str(error) or type(error).__name__) from None
    if pixels.ndim != 3 or pixels.shape[2] != 3 or pixels.shape[0] == 0 or pixels.shape[1] == 0:
        raise ImageDecodeError(path, f"decoded to an unusable array of shape {pixels.shape}")
    size = os.path.getsize(path)
    if file_format == "JPEG" and size < width * height * _JPEG_MIN_BYTES_PER_PIXEL:
        raise ImageDecodeError(
            path, f"truncated: {size} bytes cannot hold a {width}x{height} JPEG (the rest would decode as grey)"
        )
    return DecodedImage(
        pixels=np.ascontiguousarray(pixels), format=file_format, scale_x=pixels.shape[1] / width,
        scale_y=pixels.shape[0] / height,
    )


def resize_longest_side(pixels: np.ndarray, longest_side: int) -> tuple[np.ndarray, float]:
    """Downscale so the longest side is at most ``longest_side``; returns (pixels, scale)."""
    import cv2

    height, width = pixels.shape[:2]
    scale = longest_side / max(height, width)
    if scale >= 1.0:
        return pixels, 1.0
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return cv2.resize(pixels, size, interpolation=cv2.INTER_AREA), scale


def resize_square(pixels: np.ndarray, size: int) -> np.ndarray:
    """Resize a square RGB array to ``size`` x ``size`` (area filter when shrinking)."""
    import cv2

    interpolation = cv2.INTER_AREA if pixels.shape[0] > size else cv2.INTER_CUBIC
    return cv2.resize(pixels, (size, size), interpolation=interpolation)


def encode_image(pixels: np.ndarray, image_format: str, quality: int = 95) -> bytes:
    """Encode RGB pixels as JPEG or PNG bytes."""
    buffer = io.BytesIO()
    image = Image.fromarray(np.ascontiguousarray(pixels, dtype=np.uint8), mode="RGB")
    if image_format.lower() in ("jpg", "jpeg"):
        image.save(buffer, format="JPEG", quality=quality)
    elif image_format.lower() == "png":
        image.save(buffer, format="PNG")
    else:
        raise ValueError(f"image_format must be jpg or png. Received: {image_format!r}")
    return buffer.getvalue()


def write_image(path: Path, pixels: np.ndarray, quality: int = 95) -> None:
    """Write RGB pixels atomically; the format follows the file's extension (.jpg or .png)."""
    suffix = Path(path).suffix.lower().lstrip(".")
    atomic_write_bytes(Path(path), encode_image(pixels, suffix, quality))


def read_rgb(path: Path) -> np.ndarray:
    """Decode a file into RGB pixels (convenience for crops written by facecls)."""
    return decode_image(path).pixels


def read_crops(folder: Path, paths: Sequence[str], size: int | None, what: str = "crop", fix: str = "",
               flipped: Sequence[bool] | None = None) -> np.ndarray:
    """The images at ``paths`` (relative to ``folder``) as one uint8 array [N, size, size, 3]: face
    crops or identity chips written by facecls, each mirrored where ``flipped`` says so.

    Raises:
        FaceclsError: a file cannot be read, or is not ``size`` square (``size`` None: any one size).
    """
    folder = Path(folder)
    pixels: np.ndarray | None = None
    for index, path in enumerate(paths):
        try:
            image = read_rgb(folder / path)
        except (ImageDecodeError, OSError) as error:
            raise FaceclsError(f"{folder / path}: cannot read this {what} ({error}). {fix}".rstrip()) from None
        side = size or (pixels.shape[1] if pixels is not None else image.shape[0])
        if image.shape != (side, side, 3):
            raise FaceclsError(
                f"{folder / path}: {what}s must be {side}x{side}. Received: {image.shape[1]}x{image.shape[0]}. {fix}".rstrip()
            )
        if pixels is None:
            pixels = np.empty((len(paths), side, side, 3), dtype=np.uint8)
        pixels[index] = image[:, ::-1] if flipped is not None and flipped[index] else image
    return pixels if pixels is not None else np.empty((0, size or 0, size or 0, 3), dtype=np.uint8)
