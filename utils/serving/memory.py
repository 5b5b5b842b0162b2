"""Keeping the service's memory flat: a cap on glibc's malloc arenas.

glibc gives each thread that allocates while the others hold their arenas a new arena, up to eight
per core. The service decodes and encodes uploads in a pool of threads, so every step up in
concurrency brings more arenas, each keeping the freed pages of its multi-megabyte image buffers:
the RSS grew 11.7% between the first and the last 100 requests of ``bench/bench_serve.py``'s default
run (concurrency 1, then 4, then 8), and 4.1% with two arenas (BENCHMARKS.md, issue 22).
"""

from __future__ import annotations

import ctypes
import ctypes.util

# mallopt's parameter number for the arena cap (glibc's malloc.h).
M_ARENA_MAX = -8
SERVICE_ARENAS = 2


def limit_malloc_arenas(arenas: int = SERVICE_ARENAS) -> bool:
    """Cap glibc's malloc arenas at ``arenas`` for the threads that allocate from now on; False where the C
    library is not glibc (musl, macOS) and nothing changed."""
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    libc = ctypes.CDLL(name)
    if not hasattr(libc, "mallopt") or not hasattr(libc, "gnu_get_libc_version"):
        return False
    return bool(libc.mallopt(M_ARENA_MAX, arenas))
