"""Reading source images, fitting them to a size, and writing results with their generation metadata."""

from img2img.imageio.metadata import Metadata, read_metadata
from img2img.imageio.output import save_image
from img2img.imageio.source import SourceImage, read_source

__all__ = ["Metadata", "SourceImage", "read_metadata", "read_source", "save_image"]
