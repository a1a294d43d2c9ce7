"""The name a file is stored and downloaded under, made from what the client sent.

Only the last path component is kept (either slash separates, so `../../etc/passwd`
is `passwd`), characters a terminal, a header or a file system would act on are
dropped (controls, NUL, and format characters such as the right-to-left override that
disguises `gpj.exe` as `exe.jpg`), as are leading dots (no hidden or relative names).
The name is only ever a label: storage keys never derive from it.
"""

from __future__ import annotations

import unicodedata

MAX_LENGTH = 255
FALLBACK = "file"
# Control, format, line and paragraph separators, surrogates, unassigned code points.
_DROPPED_CATEGORIES = frozenset({"Cc", "Cf", "Zl", "Zp", "Cs", "Cn"})


def safe_filename(name: str | None) -> str:
    last = (name or "").replace("\\", "/").rsplit("/", 1)[-1]
    kept = "".join(char for char in last if unicodedata.category(char) not in _DROPPED_CATEGORIES)
    kept = kept.strip().lstrip(".").strip()
    if not kept:
        return FALLBACK
    if len(kept) <= MAX_LENGTH:
        return kept
    stem, dot, extension = kept.rpartition(".")
    # Keep a real extension (short, after a stem); otherwise just cut.
    if dot and stem and 0 < len(extension) <= 16:
        return stem[: MAX_LENGTH - len(extension) - 1] + "." + extension
    return kept[:MAX_LENGTH]
