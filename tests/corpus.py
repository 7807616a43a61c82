"""A generated corpus of hostile files, the kind a web scrape holds, built in a test's tmp_path.

``build_corpus(folder)`` writes every case and returns ``{name: Case}``: what the file is and
which status each stage must give it. ``expected_ingest`` is the ingest status; ``readable``
says whether the pixels can be decoded at all (classify's ``unreadable`` otherwise).
Special entries (unreadable permissions, a FIFO, symbolic links and loops) are made too;
a test running as root cannot rely on permissions, so ``permission_denied`` is marked.
"""

from __future__ import annotations

import hashlib
import io
import os
import stat
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
    rows = zlib.compress(b"\x00" * min(width + 1, 1 << 17) * 2, 9)  # a few rows at most: the rest is missing
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


def tree_state(folder: Path) -> dict[str, tuple]:
    """Every entry under ``folder`` without following links: type, mtime, mode, and content or target.

    Files over 64 MB (the sparse case) are compared by size, not read.
    """
    state = {}
    for root, folders, names in os.walk(folder, followlinks=False):
        for name in folders + names:
            path = os.path.join(root, name)
            info = os.lstat(path)
            if stat.S_ISLNK(info.st_mode):
                content = os.readlink(path)
            elif stat.S_ISREG(info.st_mode) and info.st_size > 64 << 20:
                content = f"{info.st_size} bytes"
            elif stat.S_ISREG(info.st_mode):
                with open(path, "rb") as file:  # root reads the chmod-000 file too
                    content = hashlib.sha256(file.read()).hexdigest()
            else:
                content = ""
            state[os.path.relpath(path, folder)] = (stat.S_IFMT(info.st_mode), info.st_mtime_ns, info.st_mode, content)
    return state


def restore_permissions(folder: Path) -> None:
    """Let pytest remove the corpus afterwards."""
    target = Path(folder) / "no_permission.jpg"
    if target.exists():
        os.chmod(target, 0o644)


# ---------------------------------------------------------------- the generated corpus (hundreds of cases)
#
# ``hostile_scrape`` lays out a whole scrape of hostile input, keyed by path relative to the
# scrape: odd file names, odd sizes, every format and mode Pillow writes (and HEIC), broken and
# mislabelled files, bombs, EXIF oddities, special files, and person folders whose names cannot
# be a person's. Photos are small (120x90, random blocks: no face, never near-duplicates of each
# other), so detecting on them is cheap; the few large cases are what they test.

BASE = (120, 90)
NON_UTF8_NAMES = (b"caf\xe9.jpg", b"\xff\xfe.jpg", b"\x80abc.jpg", b"over\xc0\xaflong.jpg", b"surrogate\xed\xa0\x80.jpg")


def _seeds():
    seed = 5000
    while True:
        seed += 1
        yield seed


def _jpeg_declaring(width: int, height: int, seed: int) -> bytes:
    """A real 16x16 JPEG whose frame header claims ``width`` x ``height``: a few hundred bytes."""
    data = bytearray(_encoded(_photo(16, 16, seed), "JPEG", quality=50))
    marker = data.index(b"\xff\xc0")  # baseline start of frame: length, precision, height, width
    data[marker + 5 : marker + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def _with_exif(image: Image.Image, image_format: str, change) -> bytes:
    exif = Image.Exif()
    change(exif)
    return _encoded(image, image_format, exif=exif.tobytes())


def _exif_loop_jpeg(seed: int) -> bytes:
    """A JPEG whose EXIF IFD0 says the next IFD is itself (an endless chain)."""
    tiff = b"II*\x00" + struct.pack("<I", 8) + struct.pack("<H", 1) + struct.pack("<HHII", 0x0112, 3, 1, 6) + struct.pack("<I", 8)
    app1 = b"Exif\x00\x00" + tiff
    jpeg = _encoded(_photo(*BASE, seed), "JPEG")
    return jpeg[:2] + b"\xff\xe1" + struct.pack(">H", len(app1) + 2) + app1 + jpeg[2:]


def exif_past_end_jpeg(seed: int = 3) -> bytes:
    """A JPEG whose EXIF has a tag whose data lies past its end (Pillow warns and skips the tag)."""
    tiff = b"II*\x00" + struct.pack("<I", 8) + struct.pack("<H", 1) + struct.pack("<HHII", 0x010F, 2, 1000, 500) + struct.pack("<I", 0)
    app1 = b"Exif\x00\x00" + tiff
    jpeg = _encoded(_photo(*BASE, seed), "JPEG")
    return jpeg[:2] + b"\xff\xe1" + struct.pack(">H", len(app1) + 2) + app1 + jpeg[2:]


def _heic(image: Image.Image, **options) -> bytes:
    import pillow_heif

    pillow_heif.register_heif_opener()
    return _encoded(image, "HEIF", **options)


def _name_cases(seeds) -> list[tuple[str, Case, bytes]]:
    names = [
        "carriage\rreturn.jpg", "line\nfeed.jpg", "crlf\r\n.jpg", "tab\there.jpg", "vertical\x0btab.jpg", "form\x0cfeed.jpg",
        "bell\x07.jpg", "escape\x1b[31m.jpg", "delete\x7f.jpg", "-rf.jpg", "--help.jpg", "-", "..jpg", "...jpg", ". .jpg",
        "....", ".hidden.jpg", "no_extension", "UPPER.JPG", "photo.jpeg", 'quote".jpg', "apostrophe'.jpg", "comma,.jpg",
        "semi;colon.jpg", "back\\slash.jpg", "$(touch pwned).jpg", "star*?.jpg", "percent%s%n.jpg", "rtl\u202egpj.exe",
        "zero\u200bwidth.jpg", "nfc_\u00e9.jpg", "nfd_e\u0301.jpg", "emoji_\U0001f4f7.jpg", "cjk_\u5199\u771f.jpg",
        "space at end .jpg", " leading space.jpg", "x" * 250 + ".jpg", "y" * 251, "\u00e9" * 125 + ".jpg",
        "\U0001f600" * 62 + ".jpg", "a.jpg.png", "photo.jpg.", "#hash.jpg", "~tilde.jpg", "{brace}.jpg", "<angle>.jpg",
        "pipe|.jpg", "colon:.jpg", "CON.jpg", "NUL", "aux.jpg", "lpt1",
    ]  # fmt: skip
    cases = []
    for name in names:
        cases.append((name, Case(name, "odd_name", "ok", True), _encoded(_photo(*BASE, next(seeds)), "JPEG")))
    for raw in NON_UTF8_NAMES:
        name = os.fsdecode(raw)
        cases.append((name, Case(name, "non_utf8_name", "unreadable", True, "not valid utf-8"), _encoded(_photo(*BASE, next(seeds)), "JPEG")))
    return cases


def _size_cases(seeds) -> list[tuple[str, Case, bytes]]:
    cases = []
    for width, height in ((1, 2000), (2000, 1), (1, 65000), (65000, 1), (2, 3000), (19, 640), (20, 640), (640, 19),
                          (33, 5000), (5000, 33), (12, 12), (31, 31), (1, 1), (2, 2)):  # fmt: skip
        name = f"size_{width}x{height}.png"
        expected = "too_small" if min(width, height) < 32 else "ok"
        pixels = np.full((height, width, 3), 90, np.uint8)
        cases.append((name, Case(name, "thin_or_tiny", expected, True), _encoded(Image.fromarray(pixels), "PNG")))
    for width, height in ((32, 32), (33, 33), (600, 32), (32, 600)):
        name = f"size_{width}x{height}.jpg"
        cases.append((name, Case(name, "small", "ok", True), _encoded(_photo(width, height, next(seeds)), "JPEG")))
    for width, height in ((7000, 7000), (5000, 3000), (4000, 6000), (3000, 9000)):
        name = f"declares_{width}x{height}.jpg"
        cases.append((name, Case(name, "truncated_declared_large", "unreadable", False, "truncated"), _jpeg_declaring(width, height, next(seeds))))
    for width, height in ((100_000, 100_000), (65_535, 65_535), (1, 2**31 - 1), (2**31 - 1, 1), (60_000, 1_000)):
        name = f"bomb_{width}x{height}.png"
        cases.append((name, Case(name, "decompression_bomb", "", False), png_bomb(width, height)))
    gif_bomb = bytearray(_encoded(_photo(16, 16, next(seeds)).convert("P"), "GIF"))
    gif_bomb[6:10] = struct.pack("<HH", 65535, 65535)  # logical screen, not the frame
    cases.append(("gif_screen_65535.gif", Case("gif_screen_65535.gif", "decompression_bomb", "", False), bytes(gif_bomb)))
    bmp = bytearray(_encoded(_photo(16, 16, next(seeds)), "BMP"))
    bmp[18:26] = struct.pack("<ii", 50_000, 50_000)
    cases.append(("bmp_declares_50000.bmp", Case("bmp_declares_50000.bmp", "decompression_bomb", "", False), bytes(bmp)))
    return cases


def _format_cases(seeds) -> list[tuple[str, Case, bytes]]:
    cases = []
    formats = {"jpg": ("JPEG", {"quality": 85}), "png": ("PNG", {}), "webp": ("WEBP", {"quality": 70}), "gif": ("GIF", {}),
               "bmp": ("BMP", {}), "tiff": ("TIFF", {}), "ico": ("ICO", {}), "ppm": ("PPM", {}), "tga": ("TGA", {}),
               "jp2": ("JPEG2000", {}), "heic": ("HEIF", {}), "progressive.jpg": ("JPEG", {"progressive": True}),
               "lossless.webp": ("WEBP", {"lossless": True})}  # fmt: skip
    for suffix, (image_format, options) in formats.items():
        encode = _heic if image_format == "HEIF" else (lambda image, **kw: _encoded(image, image_format, **kw))
        good = encode(_photo(*BASE, next(seeds)), **options)
        cases.append((f"good.{suffix}", Case(f"good.{suffix}", f"format_{image_format.lower()}", "ok", True), good))
        named = f"{image_format.lower()}_named.jpg" if suffix != "jpg" else "jpeg_named.png"
        cases.append((named, Case(named, "mislabelled", "ok", True), encode(_photo(*BASE, next(seeds)), **options)))
        data = encode(_photo(*BASE, next(seeds)), **options)
        for fraction in (0.1, 0.5, 0.9):
            name = f"cut{int(fraction * 100)}.{suffix}"
            # Whether a cut file still decodes depends on the format (BMP, PPM, TGA hold raw rows).
            cases.append((name, Case(name, "truncated", "", True), data[: max(1, int(len(data) * fraction))]))
        name = f"flipped.{suffix}"
        cases.append((name, Case(name, "bit_flipped", "", True), _bit_flipped(encode(_photo(*BASE, next(seeds)), **options), next(seeds), 50)))
    modes = {"L": "png", "LA": "png", "P": "png", "RGBA": "png", "1": "png", "I;16": "png", "I": "tiff", "F": "tiff",
             "CMYK": "jpg", "CMYK_tiff": "tiff", "YCbCr": "jpg", "LAB": "tiff", "RGBA_webp": "webp", "LA_webp": "webp"}  # fmt: skip
    for mode, suffix in modes.items():
        image = _photo(*BASE, next(seeds))
        pillow_mode = mode.split("_")[0]
        if pillow_mode == "I;16":
            converted = Image.fromarray(np.asarray(image.convert("L"), dtype=np.uint16) * 257)
        elif pillow_mode in ("I", "F"):
            converted = image.convert("L").convert(pillow_mode)
        else:
            converted = image.convert(pillow_mode)
        image_format = {"png": "PNG", "tiff": "TIFF", "jpg": "JPEG", "webp": "WEBP"}[suffix]
        name = f"mode_{mode.replace(';', '_')}.{suffix}"
        cases.append((name, Case(name, f"mode_{mode}", "ok", True), _encoded(converted, image_format)))
    transparent = _photo(*BASE, next(seeds)).convert("P")
    cases.append(("palette_transparent.png", Case("palette_transparent.png", "mode_P_transparency", "ok", True),
                  _encoded(transparent, "PNG", transparency=0)))  # fmt: skip
    for orientation in (0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 255, 65535):
        name = f"exif_orientation_{orientation}.jpg"
        data = _with_exif(_photo(*BASE, next(seeds)), "JPEG", lambda exif, value=orientation: exif.__setitem__(0x0112, value))
        cases.append((name, Case(name, "exif_orientation", "ok", True), data))
    for orientation in (3, 6, 8):
        name = f"heic_orientation_{orientation}.heic"
        exif = Image.Exif()
        exif[0x0112] = orientation
        cases.append((name, Case(name, "heic_orientation", "ok", True), _heic(_photo(*BASE, next(seeds)), exif=exif.tobytes())))
    cases.append(("exif_loop.jpg", Case("exif_loop.jpg", "exif_loop", "ok", True), _exif_loop_jpeg(next(seeds))))
    cases.append(("exif_past_end.jpg", Case("exif_past_end.jpg", "exif_past_end", "ok", True), exif_past_end_jpeg(next(seeds))))
    garbage = _encoded(_photo(*BASE, next(seeds)), "JPEG")
    app1 = b"Exif\x00\x00" + bytes(np.random.default_rng(next(seeds)).integers(0, 256, 300, dtype=np.uint8))
    cases.append(("exif_garbage.jpg", Case("exif_garbage.jpg", "exif_garbage", "ok", True),
                  garbage[:2] + b"\xff\xe1" + struct.pack(">H", len(app1) + 2) + app1 + garbage[2:]))  # fmt: skip
    cases.append(("icc_garbage.jpg", Case("icc_garbage.jpg", "icc_garbage", "ok", True),
                  _encoded(_photo(*BASE, next(seeds)), "JPEG", icc_profile=b"not an icc profile" * 10)))  # fmt: skip
    frames = [_photo(*BASE, next(seeds)) for _ in range(3)]
    for image_format, suffix in (("GIF", "gif"), ("PNG", "apng.png"), ("WEBP", "webp"), ("TIFF", "tiff")):
        buffer = io.BytesIO()
        frames[0].save(buffer, format=image_format, save_all=True, append_images=frames[1:], duration=100, loop=0)
        frames = [_photo(*BASE, next(seeds)) for _ in range(3)]
        name = f"animated.{suffix}"
        cases.append((name, Case(name, "animated", "ok", True), buffer.getvalue()))
    return cases


def _more_cases(seeds) -> list[tuple[str, Case, bytes]]:
    """Duplicates, EXIF in other formats, more mislabelling and more cut points."""
    cases = []
    original = _photo(240, 180, next(seeds))
    jpeg = _encoded(original, "JPEG", quality=90)
    cases.append(("dup_a_original.jpg", Case("dup_a_original.jpg", "duplicate_kept", "ok", True), jpeg))
    for name, data, expected in (
        ("dup_same_bytes.jpg", jpeg, "duplicate"),
        ("dup_reencoded.jpg", _encoded(original, "JPEG", quality=60), "near_duplicate"),
        ("dup_smaller.png", _encoded(original.resize((120, 90)), "PNG"), "near_duplicate"),
        ("dup_mirrored.webp", _encoded(original.transpose(Image.Transpose.FLIP_LEFT_RIGHT), "WEBP", quality=90), "near_duplicate"),
    ):
        cases.append((name, Case(name, "duplicate", expected, True), data))
    for image_format, suffix in (("PNG", "png"), ("WEBP", "webp"), ("TIFF", "tiff")):
        for orientation in (6, 8):
            name = f"exif_{orientation}.{suffix}"
            data = _with_exif(_photo(*BASE, next(seeds)), image_format, lambda exif, value=orientation: exif.__setitem__(0x0112, value))
            cases.append((name, Case(name, "exif_orientation_other_format", "ok", True), data))
    for image_format, name in (("PNG", "png_named.gif"), ("WEBP", "webp_named.png"), ("GIF", "gif_named.webp"),
                               ("BMP", "bmp_named.png"), ("TIFF", "tiff_named.gif")):  # fmt: skip
        cases.append((name, Case(name, "mislabelled", "ok", True), _encoded(_photo(*BASE, next(seeds)), image_format)))
    cases.append(("heic_named.png", Case("heic_named.png", "mislabelled", "ok", True), _heic(_photo(*BASE, next(seeds)))))
    jpeg = _encoded(_photo(*BASE, next(seeds)), "JPEG")
    for cut in (-2, -10, -100, 200, 330):
        name = f"jpeg_cut_at_{cut}.jpg"
        cases.append((name, Case(name, "truncated", "", True), jpeg[:cut]))
    for name in ("carriage\r.png", "line\n.webp", "tab\t.gif", "x" * 251 + ".png"):
        cases.append((name, Case(name, "odd_name", "ok", True), _encoded(_photo(*BASE, next(seeds)), "PNG")))
    return cases


def _not_image_cases(seeds) -> list[tuple[str, Case, bytes]]:
    contents = {
        "html.jpg": b"<!DOCTYPE html><html><body>403</body></html>", "html_upper.jpg": b"  <HTML><HEAD></HEAD></HTML>",
        "json.jpg": b'{"error": "rate limited"}', "json_list.png": b"[1, 2, 3]", "xml.jpg": b'<?xml version="1.0"?><a/>',
        "svg.jpg": b'<svg xmlns="http://www.w3.org/2000/svg"/>', "pdf.jpg": b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n",
        "zip.jpg": b"PK\x03\x04" + b"\x00" * 40, "gzip.jpg": b"\x1f\x8b\x08\x00" + b"\x00" * 20,
        "text.jpg": b"hello\n", "utf16.jpg": "\ufeffhello".encode("utf-16"), "zeros.jpg": b"\x00" * 4096,
        "one_zero.jpg": b"\x00", "space.jpg": b" ", "newline.jpg": b"\n", "random.jpg": bytes(np.random.default_rng(7).integers(0, 256, 2048, dtype=np.uint8)),
        "jpeg_magic_only.jpg": b"\xff\xd8\xff", "png_magic_only.png": b"\x89PNG\r\n\x1a\n", "riff_not_webp.webp": b"RIFF\x10\x00\x00\x00WAVEfmt ",
        "ftyp_unknown.jpg": b"\x00\x00\x00\x18ftypmp42\x00\x00\x00\x00mp42isom", "heic_magic_only.jpg": b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic",
        "elf.jpg": b"\x7fELF\x02\x01\x01" + b"\x00" * 60, "shell.jpg": b"#!/bin/sh\nrm -rf /\n",
    }  # fmt: skip
    cases = []
    for name, data in contents.items():
        heif = "heic" in name
        expected = "unreadable" if heif or name in ("jpeg_magic_only.jpg", "png_magic_only.png") else ""
        cases.append((name, Case(name, "not_image", expected or "", False, "heic" if heif else ""), data))
    cases.append(("empty.jpg", Case("empty.jpg", "zero_byte", "not_image", False, "empty"), b""))
    return cases


HOSTILE_PEOPLE = {
    # folder name -> why it is refused (part of the reason, lower case); "" for a usable folder.
    # Hidden folders are never people: their files get no_person as files outside any person's folder.
    "unknown": "reserved", "Unknown": "reserved", "no_face": "reserved", "annotated": "reserved",
    "...": "hidden folder", ".hidden": "hidden folder", "tab\tname": "control", "line\nname": "control", "cr\rname": "control",
    "p" * 201: "bytes long", os.fsdecode(b"caf\xe9"): "utf-8", "-rf": "", "CON": "", " space ": "",
    "\u00e9t\u00e9": "", "q" * 200: "",
}  # fmt: skip


def hostile_scrape(scrape: Path, people: tuple[str, ...] = ("alice", "bob")) -> dict[str, Case]:
    """Write the generated corpus into ``scrape``: the file cases in ``people[0]``'s folder,
    special files in ``people[1]``'s, and four photos in each of ``HOSTILE_PEOPLE``'s folders.

    Returns relative path -> Case of every entry written; the real photos of ``people`` are the
    caller's to add. Call ``restore_permissions(scrape / people[1])`` before removing it.
    """
    scrape = Path(scrape)
    seeds = _seeds()
    written: dict[str, Case] = {}
    first = scrape / people[0]
    first.mkdir(parents=True, exist_ok=True)
    for name, case, data in _name_cases(seeds) + _size_cases(seeds) + _format_cases(seeds) + _more_cases(seeds) + _not_image_cases(seeds):
        with open(os.fsencode(first) + b"/" + os.fsencode(name), "wb") as file:
            file.write(data)
        written[f"{people[0]}/{name}"] = case
    written.update({f"{people[1]}/{name}": case for name, case in build_corpus(scrape / people[1]).items()})
    special = scrape / people[1]
    long_name = "x" * 251 + ".png"  # also in people[0]: both sorted into one folder, the second renamed
    (special / long_name).write_bytes(_encoded(_photo(*BASE, next(seeds)), "PNG"))
    written[f"{people[1]}/{long_name}"] = Case(long_name, "long_name_collision", "ok", True)
    os.truncate(_touch(special / "sparse_1gb.jpg"), 1 << 30)
    written[f"{people[1]}/sparse_1gb.jpg"] = Case("sparse_1gb.jpg", "sparse_zeros", "not_image", False, "zero bytes")
    (special / "folder.jpg").mkdir()
    (special / "folder.jpg" / "inside.jpg").write_bytes(_encoded(_photo(*BASE, next(seeds)), "JPEG"))
    written[f"{people[1]}/folder.jpg/inside.jpg"] = Case("inside.jpg", "folder_named_jpg", "ok", True)
    deep = special.joinpath(*["deep"] * 40)
    deep.mkdir(parents=True)
    (deep / "deep.jpg").write_bytes(_encoded(_photo(*BASE, next(seeds)), "JPEG"))
    written[str((deep / "deep.jpg").relative_to(scrape))] = Case("deep.jpg", "deep_folder", "ok", True)
    (special / "empty_folder").mkdir()
    for name, target, kind in (("dev_zero.jpg", "/dev/zero", "device"), ("dev_null.jpg", "/dev/null", "device"),
                               ("dev_urandom.jpg", "/dev/urandom", "device")):  # fmt: skip
        os.symlink(target, special / name)
        written[f"{people[1]}/{name}"] = Case(name, kind, "unreadable", False, "not a regular file")
    os.link(special / "animated.gif", special / "hard_link.gif")
    written[f"{people[1]}/hard_link.gif"] = Case("hard_link.gif", "hard_link", "duplicate", True)
    socket_path = special / "socket.jpg"
    if len(os.fsencode(socket_path)) < 100:
        import socket

        server = socket.socket(socket.AF_UNIX)
        server.bind(str(socket_path))
        server.close()
        written[f"{people[1]}/socket.jpg"] = Case("socket.jpg", "socket", "unreadable", False, "socket")
    for person, refused in HOSTILE_PEOPLE.items():
        folder = os.fsencode(scrape) + b"/" + os.fsencode(person)
        os.mkdir(folder)
        expected = "no_person" if refused else "ok"
        # As many photos as a person needs to be split: a run checks that before any work.
        for name in ("photo.jpg", "photo_2.jpg", "photo_3.jpg", "photo_4.jpg"):
            with open(folder + b"/" + name.encode(), "wb") as file:
                file.write(_encoded(_photo(*BASE, next(seeds)), "JPEG"))
            written[f"{person}/{name}"] = Case(name, "person_folder_name", expected, True, refused)
    os.symlink(people[0], scrape / "linked_person")
    written["linked_person"] = Case("linked_person", "symlinked_person_folder", "no_person", False, "symbolic link")
    (scrape / "stray.jpg").write_bytes(_encoded(_photo(*BASE, next(seeds)), "JPEG"))
    written["stray.jpg"] = Case("stray.jpg", "no_person_folder", "no_person", True)
    return written


def _touch(path: Path) -> Path:
    path.touch()
    return path
