"""A generated corpus of hostile files, the kind a web scrape holds, built in a test's tmp_path.

``build_corpus(folder)`` writes every case and returns ``{name: Case}``: what the file is and
which status each stage must give it. ``expected_ingest`` is the ingest status; ``readable``
says whether the pixels can be decoded at all (classify's ``unreadable`` otherwise).
Special entries (unreadable permissions, a FIFO, symbolic links and loops) are made too;
a test running as root cannot rely on permissions, so ``permission_denied`` is marked.
"""

from __future__ import annotations

import io
import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image


@dataclass(frozen=True)
class Case:
    name: str  # file name inside the corpus folder
    kind: str  # what it is, for the soak's statuses by kind
    expected_ingest: str  # ingest status (ok files may still be too_small etc.)
    readable: bool  # the pixels decode (classify: ok or no_face, else unreadable)
    reason_contains: str = ""  # part of the reason ingest must give, lower case


def _photo(width: int = 200, height: int = 160, seed: int = 0) -> Image.Image:
    # Coarse random blocks: every seed gives a different picture (no near-duplicates among them).
    rng = np.random.default_rng(seed)
    blocks = rng.integers(0, 256, size=(8, 8, 3), dtype=np.uint8)
    return Image.fromarray(blocks, "RGB").resize((width, height), Image.Resampling.NEAREST)


def _encoded(image: Image.Image, image_format: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=image_format, **options)
    return buffer.getvalue()


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_bomb(width: int = 100_000, height: int = 100_000) -> bytes:
    """A ~100-byte PNG declaring a gigantic 8-bit grayscale image: its IDAT holds a few rows only."""
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    rows = zlib.compress(b"\x00" * (width + 1) * 2, 9)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", rows) + _png_chunk(b"IEND", b"")


def _bit_flipped(data: bytes, seed: int, flips: int = 400) -> bytes:
    rng = np.random.default_rng(seed)
    array = bytearray(data)
    # Leave the signature, scramble the body: the decoder must fail or decode garbage, never crash.
    for position in rng.integers(16, len(array), size=flips):
        array[position] ^= 1 << int(rng.integers(0, 8))
    return bytes(array)


def file_cases() -> dict[str, tuple[Case, bytes]]:
    """Regular files of the corpus: name -> (case, bytes)."""
    photo = _photo(seed=1000)
    jpeg, png, webp = _encoded(photo, "JPEG", quality=90), _encoded(photo, "PNG"), _encoded(photo, "WEBP", quality=80)
    frames = [_photo(seed=seed) for seed in range(3, 6)]
    gif = io.BytesIO()
    frames[0].save(gif, format="GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    sixteen = Image.fromarray(np.asarray(_photo(seed=8).convert("L"), dtype=np.uint16) * 257)
    cases = [
        (Case("zero_bytes.jpg", "zero_byte", "not_image", False, "empty"), b""),
        (Case("truncated.jpg", "truncated", "unreadable", False), jpeg[: len(jpeg) // 3]),
        (Case("truncated.png", "truncated", "unreadable", False), png[: len(png) // 3]),
        (Case("truncated.webp", "truncated", "unreadable", False), webp[: len(webp) // 3]),
        (Case("header_only.jpg", "truncated", "unreadable", False), jpeg[:40]),
        # Whether a bit-flipped file still decodes depends on where the flips land: "" allows ok or unreadable.
        (Case("bitflip.jpg", "bit_flipped", "", True), _bit_flipped(jpeg, 1)),
        (Case("bitflip.png", "bit_flipped", "", True), _bit_flipped(png, 2)),
        (Case("bitflip.webp", "bit_flipped", "", True), _bit_flipped(webp, 3)),
        (Case("page.jpg", "html_as_jpg", "not_image", False, "html"),
         b"<!DOCTYPE html><html><head><title>403 Forbidden</title></head><body>nope</body></html>\n"),
        (Case("notes.jpg", "text_as_jpg", "not_image", False, "text"), "just some text, caf\u00e9\n".encode()),
        (Case("bomb.png", "decompression_bomb", "too_large", False, "too large"), png_bomb()),
        (Case("bomb_100mp.png", "decompression_bomb", "too_large", False, "10000x10000"), png_bomb(10_000, 10_000)),
        (Case("one_pixel.png", "1x1", "too_small", True, "1x1"), _encoded(Image.new("RGB", (1, 1), "red"), "PNG")),
        (Case("wide_30000.jpg", "30000_wide", "ok", True),
         _encoded(Image.fromarray(np.tile((np.arange(30000) // 7 % 256).astype(np.uint8)[None, :, None], (600, 1, 3))), "JPEG")),
        (Case("cmyk.jpg", "cmyk", "ok", True), _encoded(_photo(seed=7).convert("CMYK"), "JPEG")),
        (Case("sixteen_bit.png", "16_bit", "ok", True), _encoded(sixteen, "PNG")),
        (Case("animated.gif", "animated_gif", "ok", True), gif.getvalue()),
        (Case("name with spaces.jpg", "odd_name", "ok", True), _encoded(_photo(seed=11), "JPEG")),
        (Case("\u00e9t\u00e9 \u6771\u4eac \U0001f600.jpg", "odd_name", "ok", True), _encoded(_photo(seed=12), "JPEG")),
        (Case("new\nline.jpg", "odd_name", "ok", True), _encoded(_photo(seed=13), "JPEG")),
    ]
    return {case.name: (case, data) for case, data in cases}


SPECIAL_CASES = {
    "no_permission.jpg": Case("no_permission.jpg", "permission_denied", "unreadable", False, "permission"),
    "fifo.jpg": Case("fifo.jpg", "fifo", "unreadable", False, "not a regular file"),
    "link_to_photo.jpg": Case("link_to_photo.jpg", "symlink", "duplicate", True),
    "broken_link.jpg": Case("broken_link.jpg", "broken_symlink", "unreadable", False, "broken symbolic link"),
    "loop_a.jpg": Case("loop_a.jpg", "symlink_loop", "unreadable", False, "loop"),
    "loop_b.jpg": Case("loop_b.jpg", "symlink_loop", "unreadable", False, "loop"),
    "folder_loop": Case("folder_loop", "folder_symlink", "unreadable", False, "folder"),
}


def build_corpus(folder: Path, special: bool = True) -> dict[str, Case]:
    """Write the corpus into ``folder`` (created); returns name -> Case of everything written.

    With ``special``: a file without read permission, a FIFO, a symlink to a photo, a broken
    symlink, two symlinks pointing at each other and a folder symlink pointing back up.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written: dict[str, Case] = {}
    for name, (case, data) in file_cases().items():
        (folder / name).write_bytes(data)
        written[name] = case
    if special:
        (folder / "no_permission.jpg").write_bytes(_encoded(_photo(seed=21), "JPEG"))
        os.chmod(folder / "no_permission.jpg", 0)
        os.mkfifo(folder / "fifo.jpg")
        os.symlink("animated.gif", folder / "link_to_photo.jpg")
        os.symlink("does_not_exist.jpg", folder / "broken_link.jpg")
        os.symlink("loop_b.jpg", folder / "loop_a.jpg")
        os.symlink("loop_a.jpg", folder / "loop_b.jpg")
        os.symlink(".", folder / "folder_loop")  # a folder symlink to itself: walking into it never ends
        written.update(SPECIAL_CASES)
    return written


def restore_permissions(folder: Path) -> None:
    """Let pytest remove the corpus afterwards."""
    target = Path(folder) / "no_permission.jpg"
    if target.exists():
        os.chmod(target, 0o644)
