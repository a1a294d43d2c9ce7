"""Memory tracing for `bench/soak.py --tracemalloc`: which allocations made after the
warm-up are still alive at the end.

The soak puts this folder on the servers' PYTHONPATH and sets SOAK_TRACEMALLOC_DIR.
The first SIGUSR2 a process gets starts `tracemalloc` (after the warm-up, so the start-up
and warm-up allocations are not traced); the second writes a snapshot of what is traced
and still alive to `$SOAK_TRACEMALLOC_DIR/<pid>.snapshot`. Uvicorn's master handles
SIGUSR2 itself (it replaces this handler), so only the workers and `keel worker` trace.
Without SOAK_TRACEMALLOC_DIR it does nothing. Tracing slows a process by about half:
such a run's latencies and CPU are not for the tables.
"""

import os

_FOLDER = os.environ.get("SOAK_TRACEMALLOC_DIR")

if _FOLDER:
    import signal
    import tracemalloc
    from pathlib import Path

    def _on_signal(_signum: int, _frame: object) -> None:
        if not tracemalloc.is_tracing():
            tracemalloc.start(int(os.environ.get("SOAK_TRACEMALLOC_FRAMES", "20")))
            return
        snapshot = tracemalloc.take_snapshot()
        path = Path(_FOLDER) / f"{os.getpid()}.snapshot"
        partial = path.with_suffix(".tmp")
        snapshot.dump(str(partial))
        partial.replace(path)

    signal.signal(signal.SIGUSR2, _on_signal)
