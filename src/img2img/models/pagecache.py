"""Give back the resident pages of read-only weight files that a runtime has mapped but no longer reads.

OpenVINO maps its IR's weights file and, on the first inference, repacks the weights into its own memory; the
mapped pages then stay resident (counted in our RSS) although they are never read again. On Linux,
``madvise(MADV_DONTNEED)`` on such a shared read-only file mapping drops them from this process; the file stays in
the page cache, and a page that is read again is simply mapped back in, so this can never change a result.
Mappings are looked up by path in ``/proc/self/maps`` at every call, never remembered, so a released range is
always the file's own. ``trim_heap`` hands freed heap memory back after a runtime frees its buffers. Elsewhere
(not Linux with glibc) these functions do nothing.
"""

from __future__ import annotations

import ctypes
import sys
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

MADV_DONTNEED = 4


def release(paths: Iterable[Path], unwritten: bool = False) -> int:
    """Drop this process's resident pages of read-only mappings of ``paths``; return how many ranges were released.

    ``unwritten``: private copy-on-write mappings too (safetensors maps its files so), which only a caller that
    knows nothing wrote to them may ask for: a written page of such a mapping would revert to the file's."""
    if not sys.platform.startswith("linux"):
        return 0
    wanted = {str(Path(path).resolve()) for path in paths}
    return sum(advise_dont_need(start, end - start) for start, end in _mappings(wanted, unwritten))


def advise_dont_need(address: int, length: int) -> bool:
    """``madvise(MADV_DONTNEED)`` on a range of this process's memory (Linux); whether it succeeded."""
    if not sys.platform.startswith("linux"):
        return False
    libc = ctypes.CDLL(None, use_errno=True)
    libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    return libc.madvise(address, length, MADV_DONTNEED) == 0


def trim_heap() -> None:
    """Return the C heap's free memory to the system (glibc keeps freed buffers otherwise: about 0.2 GB here)."""
    if sys.platform.startswith("linux"):
        with suppress(OSError, AttributeError):  # another C library (musl) has no malloc_trim
            ctypes.CDLL("libc.so.6").malloc_trim(0)


@contextmanager
def releasing(paths: Iterable[Path], interval_s: float = 0.02, unwritten: bool = False) -> Iterator[None]:
    """Keep releasing the mapped pages of ``paths`` every ``interval_s`` while the block runs, and once after.

    Used around OpenVINO's first inference, which reads every weight once to repack it: without this, the mapped
    file and the repacked copy are resident together and the peak is about twice the weights.
    """
    paths = list(paths)
    stop = threading.Event()

    def loop() -> None:
        while not stop.wait(interval_s):
            release(paths, unwritten)

    worker = threading.Thread(target=loop, name="img2img-release-pages", daemon=True)
    worker.start()
    try:
        yield
    finally:
        stop.set()
        worker.join()
        release(paths, unwritten)


def _mappings(paths: set[str], unwritten: bool = False) -> Iterator[tuple[int, int]]:
    """Address ranges of read-only mappings of any of ``paths`` (never writable ones: dropping those loses data),
    and with ``unwritten`` of private writable ones (see ``release``)."""
    try:
        lines = Path("/proc/self/maps").read_text().splitlines()
    except OSError:
        return
    for line in lines:
        fields = line.split(maxsplit=5)
        if len(fields) == 6 and fields[5] in paths and ("w" not in fields[1] or (unwritten and fields[1][3] == "p")):
            start, end = (int(value, 16) for value in fields[0].split("-"))
            yield start, end
