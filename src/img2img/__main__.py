"""``python -m img2img``: the same as the ``img2img`` command."""

from img2img.cli import main

if __name__ == "__main__":  # importing this module (as multiprocessing may) never starts the CLI
    main()
