"""Reading source images and writing results with their generation metadata."""

from img2img.imageio.output import save_png
from img2img.imageio.source import load_source, pixels_sha256

__all__ = ["load_source", "pixels_sha256", "save_png"]
