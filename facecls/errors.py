"""The one exception type the CLI turns into a one-line message and exit status 1, and the one way a
library's error becomes part of such a line."""


class FaceclsError(Exception):
    """A problem the user can fix: the message says what was received, what is allowed, what to do."""


class ImageDecodeError(FaceclsError):
    """A single image could not be decoded; the message holds the decoder's reason."""

    def __init__(self, path, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{path}: cannot decode image ({reason}). Check the file or remove it from the input.")


def one_line(error: BaseException, limit: int = 200) -> str:
    """A library's error message on one line, at most ``limit`` characters (its type if it has none)."""
    text = " ".join(str(error).split()) or type(error).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


class ModelDirError(FaceclsError):
    """A model dir is missing, incomplete or tampered with."""
