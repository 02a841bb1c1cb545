"""``python -m img2img``: the same as the ``img2img`` command."""

from img2img.cli import main

main()
