"""Count the garbage collector's passes and their time, for bench/profile/hotpaths.sh.

Put this folder on PYTHONPATH and set KEEL_PROFILE_GC_STATS to a file path, and the
interpreter (here `keel serve`) keeps, in that file, per generation (0, 1, 2): the number
of collections, the wall seconds spent in them (perf_counter: includes time the thread
was descheduled meanwhile) and the thread's CPU seconds in them (thread_time) -- `struct`
format "3q3d3d" (72 bytes, native byte order), updated in place (mmap) at the end of
every collection, so another process can read the totals at any moment:

    python3 -c "import struct, sys
    print(struct.unpack('3q3d3d', open(sys.argv[1], 'rb').read()))" FILE

Without KEEL_PROFILE_GC_STATS it does nothing. Cost: four clock reads and one struct
pack per collection (gen0 runs every 700 net allocations), nothing per request.
A sampling profiler cannot see collections in Python-only mode: py-spy charges a
collection to whichever Python line allocated the object that set it off.
"""

import os

_PATH = os.environ.get("KEEL_PROFILE_GC_STATS")

if _PATH:
    import gc
    import mmap
    import struct
    import time

    _FORMAT = "3q3d3d"
    _SIZE = struct.calcsize(_FORMAT)
    _fd = os.open(_PATH, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
    os.write(_fd, b"\0" * _SIZE)
    _map = mmap.mmap(_fd, _SIZE)
    _counts = [0, 0, 0]
    _seconds = [0.0, 0.0, 0.0]
    _cpu_seconds = [0.0, 0.0, 0.0]
    _started = [0.0, 0.0]

    def _on_collection(phase: str, info: dict) -> None:
        if phase == "start":
            _started[0] = time.perf_counter()
            _started[1] = time.thread_time()
            return
        generation = info["generation"]
        _counts[generation] += 1
        _seconds[generation] += time.perf_counter() - _started[0]
        _cpu_seconds[generation] += time.thread_time() - _started[1]
        _map[:] = struct.pack(_FORMAT, *_counts, *_seconds, *_cpu_seconds)

    gc.callbacks.append(_on_collection)
