"""The one exception type the CLI turns into a one-line message and exit status 1."""


class FaceclsError(Exception):
    """A problem the user can fix: the message says what was received, what is allowed, what to do."""


class ImageDecodeError(FaceclsError):
    """A single image could not be decoded; the message holds the decoder's reason."""

    def __init__(self, path, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{path}: cannot decode image ({reason}). Check the file or remove it from the input.")


class ModelDirError(FaceclsError):
    """A model dir is missing, incomplete or tampered with."""
