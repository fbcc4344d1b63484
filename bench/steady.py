"""The benches' own clients do not pause inside a timed phase.

A bench's client process holds Django, the ComfyUI test server and every result so far. Python's
cyclic collector, left on, ran full collections of that heap of 75–120 ms inside
``tasks_bench.py``'s paced phase (seen with ``gc.callbacks``): the client sent nothing and read
no answer meanwhile, and the requests of those 100 ms counted the pause as PODI's latency (the
phase's p99 went from about 25 ms to 150–290 ms in the runs that had one). PODI's own
processes keep their collector: their pauses are PODI's.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator


@contextlib.contextmanager
def no_collector_pauses() -> Iterator[None]:
    """Run a timed phase with this process's cyclic collector off; what the phase left is
    collected after it. Reference counting still frees almost everything as it goes."""
    enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()
        gc.collect()
