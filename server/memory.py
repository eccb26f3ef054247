"""Large request buffers without page faults: glibc malloc settings for the server process.

The native front end decodes each request's tensors into buffers of their own (a 4,096-row
`mlp256` request is 4 MB). With glibc's defaults, the front end's threads allocate such a
buffer in a per-thread arena heap that is unmapped again once the request is answered, so
every request's buffer is fresh memory that the kernel must fault in and zero: 14% of the
server's CPU in a `kairos batch` job (BENCHMARKS.md, batch mode). One arena, buffers below
32 MB taken from the heap, and freed memory kept up to TRIM_THRESHOLD, make the next
request reuse the pages of the last one.

`keep_freed_memory()` runs once at start, before the front end's threads exist. Glibc
only (elsewhere it does nothing); an operator's own `GLIBC_TUNABLES` / `MALLOC_*_`
settings win.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os

log = logging.getLogger("kairos.server")

# mallopt parameters (malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8
MMAP_THRESHOLD = 32 << 20  # glibc's largest (HEAP_MAX_SIZE / 2 on 64-bit)
TRIM_THRESHOLD = 128 << 20
OPERATOR_SETTINGS = ("GLIBC_TUNABLES", "MALLOC_ARENA_MAX", "MALLOC_MMAP_THRESHOLD_",
                     "MALLOC_TRIM_THRESHOLD_")


def malloc_settings() -> list[tuple[int, int]]:
    """(mallopt parameter, value) pairs that keep_freed_memory applies."""
    return [(M_ARENA_MAX, 1), (M_MMAP_THRESHOLD, MMAP_THRESHOLD), (M_TRIM_THRESHOLD, TRIM_THRESHOLD)]


def keep_freed_memory(environ: dict[str, str] | None = None) -> bool:
    """Apply malloc_settings() through glibc's mallopt; False when not applied."""
    environ = os.environ if environ is None else environ
    if any(name in environ for name in OPERATOR_SETTINGS):
        return False
    libc = _glibc()
    if libc is None:
        return False
    applied = all(libc.mallopt(parameter, value) == 1 for parameter, value in malloc_settings())
    if not applied:
        log.warning("glibc refused a malloc setting; large requests may fault in fresh memory")
    return applied


def _glibc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.gnu_get_libc_version  # noqa: B018 - glibc has it; musl and others do not
        libc.mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
        libc.mallopt.restype = ctypes.c_int
    except (OSError, AttributeError):
        return None
    return libc
