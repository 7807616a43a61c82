"""Names that become paths: person names, file names from untrusted folders, and output folders.

A person's name comes from a scrape's folder name (ingest) or a model dir's label list
(classify) and becomes a folder name under ``--out``; ``person_name_problem`` is the one rule
for both, and ``path_under`` builds every such path, proving it stays under its root.
"""

from __future__ import annotations

import os
import unicodedata
from pathlib import Path
from typing import Iterator, Sequence

from facecls.errors import FaceclsError

# Room for a suffix such as "-12.png" within the 255 bytes most file systems allow in a name.
MAX_NAME_BYTES = 200
FILE_NAME_BYTES = 255
# Names classify gives its own folders and files beside the label folders, and the label of strangers.
RESERVED_PERSON_NAMES = ("unknown", "no_face", "unreadable", "annotated", "report_files", "predictions.csv",
                         "predictions.jsonl", "classify.json", "report.html")  # fmt: skip


def is_valid_utf8(name: str) -> bool:
    """Whether a name read from the file system (surrogate-escaped bytes) is valid UTF-8."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def display_name(name: str) -> str:
    """The name as text that any manifest can hold: bytes that are not UTF-8 shown as \\xNN."""
    return os.fsencode(name).decode("utf-8", "backslashreplace")


def person_name_problem(name: str) -> str | None:
    """Why ``name`` cannot be a person's name (a folder under --out), or None when it can."""
    if not name:
        return "is empty"
    if not is_valid_utf8(name):
        return "is not valid UTF-8"
    if any(unicodedata.category(character) == "Cc" for character in name):
        return "holds a control character (a line break, tab or similar)"
    if "/" in name or "\\" in name or os.sep in name:
        return "holds a path separator"
    if name.startswith("."):
        return "starts with a dot (hidden, or a path like '..')"
    if name.casefold() in RESERVED_PERSON_NAMES:
        return f"is reserved: classify names its own folders {', '.join(RESERVED_PERSON_NAMES)}"
    if len(name.encode("utf-8")) > MAX_NAME_BYTES:
        return f"is {len(name.encode('utf-8'))} bytes long, over the {MAX_NAME_BYTES} a person's name may have"
    return None


def path_under(root: Path, *parts: str) -> Path:
    """``root / parts...``, refusing any result that does not lie strictly inside ``root``.

    Raises:
        FaceclsError: a part is absolute, holds '..', or the joined path leaves ``root``.
    """
    root = Path(root)
    path = root.joinpath(*parts)
    base, joined = os.path.normpath(os.path.abspath(root)), os.path.normpath(os.path.abspath(path))
    if any(Path(part).is_absolute() or ".." in Path(part).parts for part in parts) or not joined.startswith(base + os.sep):
        raise FaceclsError(f"{display_name(str(path))} would lie outside {root}; refusing to write there.")
    return path


def fit_file_name(stem: str, suffix: str) -> str:
    """``stem + suffix``, the stem cut (at a character boundary) so the name fits a file system."""
    budget = FILE_NAME_BYTES - len(os.fsencode(suffix))
    encoded = os.fsencode(stem)
    if len(encoded) <= budget:
        return stem + suffix
    return encoded[:budget].decode("utf-8", "ignore") + suffix  # "ignore": a character cut in two


def check_output_folder(out: Path, inputs: Sequence[Path] = (), option: str = "--out") -> None:
    """Fail in one line, before any work, if ``out`` cannot be an output folder for ``inputs``.

    Refused: an existing file, a path under a file, and a folder equal to or inside one of the
    input folders (outputs would be read back as inputs on the next run).

    Raises:
        FaceclsError: naming the option, the path, and what to choose instead.
    """
    out = Path(out)
    if os.path.islink(out) and not out.exists():
        raise FaceclsError(f"{option} {out} is a broken symbolic link. Choose another path, or fix the link.")
    if out.exists() and not out.is_dir():
        raise FaceclsError(f"{option} {out} is a file; it must be a folder (new or existing). Choose another path.")
    for parent in Path(os.path.abspath(out)).parents:
        if os.path.lexists(parent):
            if not parent.exists():
                raise FaceclsError(f"{option} {out} lies under {parent}, a broken symbolic link. Choose another path.")
            if not parent.is_dir():
                raise FaceclsError(f"{option} {out} lies under {parent}, which is a file, not a folder. Choose another path.")
            break
    real_out = Path(os.path.realpath(out))
    for item in inputs:
        item = Path(item)
        if not item.is_dir():
            continue
        real_input = Path(os.path.realpath(item))
        if real_out == real_input or real_input in real_out.parents:
            where = "is" if real_out == real_input else "lies inside"
            raise FaceclsError(
                f"{option} {out} {where} the input folder {item}: its outputs would be read back as input on the "
                "next run. Choose a folder outside it."
            )


def walk_files(folder: str | os.PathLike) -> Iterator[str]:
    """Every entry under ``folder`` that is not a folder to walk into, sorted, hidden ones included.

    Symbolic links to folders are listed, not followed: no loop can trap the walk, nothing outside
    ``folder`` is read, and each gets a row (unreadable, or no_person) saying why it was not used.
    """
    for root, folders, names in os.walk(folder, followlinks=False):
        folders.sort()
        linked = [name for name in folders if os.path.islink(os.path.join(root, name))]
        for name in sorted(names + linked):
            yield os.path.join(root, name)
