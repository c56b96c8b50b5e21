"""OpenMP worker pools, handed back by threads that stop computing.

torch's CPU kernels run on OpenMP (GNU libgomp in the PyPI wheels). Every thread that runs a parallel kernel
gets a pool of worker threads of its own, kept until that thread exits. Between two kernels the workers spin a
while before they sleep, and a decode step is some 400 small kernels, so it depends on that spin: waking a
sleeping worker costs tens of microseconds a kernel. libgomp spins only while the process has no more pool
threads than CPUs; with more it spins a hundred times and sleeps (its ``gomp_throttled_spin_count_var``).

So one other thread's pool slows the engine, and stays until that thread ends: a second engine in the same
process, the bfloat16 check of ``packed.py`` on the main thread, a notebook's main thread that trained an
adapter or multiplied two matrices. Measured on the bundled model (2 cores, float32): 29-30 tok/s at 1 request
and 180-200 at 16 alone; 18-19 and 140-155 once the main thread had run one 512x512 matrix product; back to
26 and 184 when that thread handed its pool back.

``release`` hands the calling thread's pool back (OpenMP 5's ``omp_pause_resource_all``; the thread gets a
new pool, in microseconds, at its next parallel kernel). The scheduler calls it when it goes idle, and for the
thread that submits a request (that thread computes nothing of it). Only libgomp's behaviour was measured; with
another OpenMP runtime, or none loaded, ``release`` does nothing.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import sys
from pathlib import Path

log = logging.getLogger(__name__)


@functools.cache
def _libgomps() -> tuple[ctypes.CDLL, ...]:
    """The libgomps this process has loaded (torch's own copy; another package may bring one more)."""
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:  # not Linux
        return ()
    paths = set()
    for line in maps.splitlines():
        fields = line.split(maxsplit=5)  # address, perms, offset, device, inode, path (which may hold spaces)
        if len(fields) == 6 and "/libgomp" in fields[5]:
            paths.add(fields[5].removesuffix(" (deleted)"))
    libraries = []
    for path in sorted(paths):
        try:
            library = ctypes.CDLL(path)
            library.omp_pause_resource_all.argtypes = [ctypes.c_int]
            libraries.append(library)
        except (OSError, AttributeError) as exc:  # an old libgomp without OpenMP 5's pause
            log.debug("cannot release OpenMP pools through %s: %s", path, exc)
    return tuple(libraries)


def release() -> bool:
    """Hand the calling thread's OpenMP worker pools back; True if libgomp took them (also when it had none).
    Not from inside a parallel region (libgomp refuses there: False)."""
    libraries = _libgomps() if _loaded() else ()
    results = [int(library.omp_pause_resource_all(1)) == 0 for library in libraries]  # omp_pause_soft
    return bool(results) and all(results)


def _loaded() -> bool:
    """libgomp comes with torch: before torch is imported there is no pool to hand back (and the empty tuple
    ``_libgomps`` would then cache would stay)."""
    return "torch" in sys.modules
