"""Memory diagnosis for `bench/soak.py --tracemalloc` and `--malloc-trim`, loaded by the
soak's servers only (the soak puts this folder on their PYTHONPATH).

- SOAK_TRACEMALLOC_DIR set: the first SIGUSR2 a process gets starts `tracemalloc`
  (after the warm-up, so the start-up and warm-up allocations are not traced); the
  second writes a snapshot of what is traced and still alive to
  `$SOAK_TRACEMALLOC_DIR/<pid>.snapshot`, each allocation with its innermost
  SOAK_TRACEMALLOC_FRAMES (6) frames. Tracing slows the servers a lot (with 20 frames,
  a tenth of the requests went through), and its own tables count in RSS: such a run's
  latencies, CPU and RSS are not for the tables; what it lists is the point.
- SOAK_MALLOC_TRIM set: SIGUSR1 calls glibc's `malloc_trim(0)`, which hands freed heap
  memory back to the kernel. RSS that drops after it was free memory the allocator
  kept, not live data.

Uvicorn's master handles both signals itself (it replaces these handlers), so only the
workers and `keel worker` answer them. With neither variable set it does nothing.
"""

import os

_FOLDER = os.environ.get("SOAK_TRACEMALLOC_DIR")

if _FOLDER:
    import signal
    import tracemalloc
    from pathlib import Path

    def _on_trace_signal(_signum: int, _frame: object) -> None:
        if not tracemalloc.is_tracing():
            tracemalloc.start(int(os.environ.get("SOAK_TRACEMALLOC_FRAMES", "6")))
            return
        snapshot = tracemalloc.take_snapshot()
        path = Path(_FOLDER) / f"{os.getpid()}.snapshot"
        partial = path.with_suffix(".tmp")
        snapshot.dump(str(partial))
        partial.replace(path)

    signal.signal(signal.SIGUSR2, _on_trace_signal)

if os.environ.get("SOAK_MALLOC_TRIM"):
    import ctypes
    import signal

    _LIBC = ctypes.CDLL("libc.so.6")

    def _on_trim_signal(_signum: int, _frame: object) -> None:
        _LIBC.malloc_trim(0)

    signal.signal(signal.SIGUSR1, _on_trim_signal)
