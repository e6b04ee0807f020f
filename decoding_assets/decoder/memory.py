"""Output arrays whose memory is mapped while the decode computes, not as it writes.

A decode's posteriors are two (time bins x states) float32 arrays: 590 MB each for a
minute of a 2D open field at 2 cm. The kernel maps their pages on first write, one
fault per page, and the decode wrote them chunk by chunk from one thread: on the
benchmark's virtual machine that was a third of a warm 2D predict (1.7 of 4.8 s). Most
of a decode leaves a core free (the scans over time are a few small products per bin),
so ``empty_rows`` hands the mapping to a second thread, which asks the kernel to map
the pages writable (``madvise(MADV_POPULATE_WRITE)``, Linux 5.14) while the decode
runs. It maps pages and writes nothing, so it cannot race with the decode's writes.
Elsewhere, on older kernels, or for arrays under 64 MB (a thread would cost more than
it saves) the array is a plain ``np.empty``.
"""

from __future__ import annotations

import ctypes
import mmap
import sys
import threading

import numpy as np

_MADV_POPULATE_WRITE = 23
_SMALLEST = 64 << 20  # bytes
_PIECE = 64 << 20  # bytes per call, so that a thread never holds the kernel long
THREAD_NAME = "decoder-prefault"


def empty_rows(shape: tuple[int, int], dtype) -> np.ndarray:
    """np.empty(shape, dtype), its pages mapped on a second thread from now on."""
    out = np.empty(shape, dtype)
    if sys.platform == "linux" and out.nbytes >= _SMALLEST:
        threading.Thread(target=_map_pages, args=(out,), name=THREAD_NAME, daemon=True).start()
    return out


def _map_pages(array: np.ndarray) -> None:
    """Map the whole pages of ``array``'s memory, in pieces; stop at the first refusal
    (a kernel before 5.14 answers EINVAL: the writes then map the pages, as always)."""
    madvise = ctypes.CDLL(None, use_errno=True).madvise
    madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
    page = mmap.PAGESIZE
    first = -(-array.ctypes.data // page) * page
    end = (array.ctypes.data + array.nbytes) // page * page
    for start in range(first, end, _PIECE):
        if madvise(start, min(_PIECE, end - start), _MADV_POPULATE_WRITE) != 0:
            return
