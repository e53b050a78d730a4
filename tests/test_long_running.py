"""A long-running worker settles its garbage collector once it is set up (bench/README.md:
collections of young objects every 700 allocations found nothing to free but cost CPU)."""

from __future__ import annotations

import gc
import threading

from worker.constants import GC_YOUNG_THRESHOLD


def test_a_worker_process_freezes_what_it_set_up_and_collects_less_often(make_runtime):
    runtime = make_runtime()
    before = gc.get_threshold()
    stop = threading.Event()
    stop.set()  # returns as soon as it is set up
    try:
        runtime.run_forever(stop, scheduler=False, worker=True)
        assert gc.get_threshold() == (GC_YOUNG_THRESHOLD, *before[1:])
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
