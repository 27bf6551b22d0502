"""Peak resident memory of a block of code (Linux), for per-query memory measurements."""

from __future__ import annotations

import ctypes
import gc


def _status_kb(field: str) -> float:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return float(line.split()[1])
    except OSError:
        pass
    return float("nan")


class PeakMemory:
    """`with PeakMemory() as m: ...` -> `m.working_mb` (peak resident memory inside the block
    minus the resident memory before it) and `m.peak_mb` (the absolute peak in the block).

    Freed heap is returned to the system first (`malloc_trim`) and the kernel's high-water mark
    is reset (`/proc/self/clear_refs`), so earlier work does not hide this block's peak. Where
    that is not possible (not Linux), the values are NaN."""

    def __enter__(self):
        gc.collect()
        try:
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except (OSError, AttributeError):
            pass
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # reset VmHWM to the current RSS
            self._ok = True
        except OSError:
            self._ok = False
        self.before = _status_kb("VmRSS")
        return self

    def __exit__(self, *exc):
        peak = _status_kb("VmHWM") if self._ok else float("nan")
        self.working_mb = (peak - self.before) / 1024
        self.peak_mb = peak / 1024
