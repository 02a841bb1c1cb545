"""The exception hierarchy of img2img.

Every error a user can cause derives from ``Img2ImgError`` and carries a one-line message that names what was
wrong, what was expected and what was received; the CLI prints it and exits with status 2, the server turns it
into a 4xx JSON body. Anything else that escapes is a fault of ours.

    Img2ImgError
    ├── InvalidArgument      a request field or option is out of range or of the wrong kind
    ├── SourceImageError     the source image is missing, unreadable or not an image
    ├── OutputPathError      an output path cannot be written as asked
    └── ModelError           a model cannot be found or loaded
        ├── ModelNotFound        no such path, registry name or cached repo id
        ├── UnknownModelFormat   the files are not a model of a family we know
        ├── PickleRefused        a pickled checkpoint without the explicit opt-in
        └── StyleNetworkError    the built-in style networks are missing or altered
"""

from __future__ import annotations


class Img2ImgError(Exception):
    """Base of every error caused by input; its message is meant for the user as is."""


class InvalidArgument(Img2ImgError, ValueError):
    """A request field or option is invalid."""

    def __init__(self, argument: str, expected: str, received: object) -> None:
        self.argument = argument
        self.expected = expected
        self.received = received
        super().__init__(f"{argument} should be {expected}, but got {received!r}")

    def __reduce__(self) -> tuple[type[InvalidArgument], tuple[str, str, object]]:
        """Pickled with its three parts, so that it crosses to and from a Ray worker whole."""
        return type(self), (self.argument, self.expected, self.received)


class SourceImageError(Img2ImgError):
    """The source image is missing, unreadable or not an image."""


class OutputPathError(Img2ImgError):
    """An output path cannot be written as asked."""


class ModelError(Img2ImgError):
    """A model cannot be found or loaded."""


class ModelNotFound(ModelError):
    """No model at that path, with that registry name, or with that repo id in the local cache."""


class UnknownModelFormat(ModelError):
    """The files exist but are not a model of a family we know."""


class PickleRefused(ModelError):
    """A pickled checkpoint was given without the explicit opt-in."""


class StyleNetworkError(ModelError):
    """The built-in style engine's network files are missing, altered or of another version."""
