"""The malloc arena cap: threads that allocate at the same time share at most the capped arenas."""

from __future__ import annotations

import platform
import re
import subprocess
import sys

import pytest

# Eight threads allocate 4 MiB buffers while all of them are alive, then glibc's malloc_stats() lists the
# arenas on stderr ("Arena 0:", "Arena 1:", ...).
PROGRAM = """
import ctypes, ctypes.util, sys, threading
from utils.serving.memory import limit_malloc_arenas
if sys.argv[1] == "cap":
    assert limit_malloc_arenas(2)
barrier = threading.Barrier(8)
def work():
    barrier.wait()
    buffers = [bytearray(4 << 20) for _ in range(4)]
    barrier.wait()
    del buffers
threads = [threading.Thread(target=work) for _ in range(8)]
for t in threads: t.start()
for t in threads: t.join()
ctypes.CDLL(ctypes.util.find_library("c")).malloc_stats()
"""


def arenas(mode: str) -> int:
    result = subprocess.run([sys.executable, "-c", PROGRAM, mode], capture_output=True, text=True, check=True)
    return len(re.findall(r"^Arena \d+:", result.stderr, flags=re.M))


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc only")
def test_the_cap_keeps_concurrent_threads_in_two_arenas():
    assert arenas("free") > 2  # without the cap, the eight threads spread over more arenas
    assert arenas("cap") <= 2
