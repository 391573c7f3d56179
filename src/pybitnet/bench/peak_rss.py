"""The peak resident set size of this process over a block of code (each bench repetition's)."""

from __future__ import annotations

import re
import threading
from pathlib import Path

import psutil

RSS_POLL_SECONDS = 0.001  # where the kernel cannot reset the peak RSS for us


class PeakRss:
    """The peak resident set size (MB, 10^6 bytes) of this process within a `with` block.

    On Linux the kernel's high-water mark (VmHWM) is reset at entry (/proc/self/clear_refs) and
    read at exit, so no peak is missed. Elsewhere a thread polls the RSS every millisecond."""

    def __enter__(self) -> PeakRss:
        self.mb = 0.0
        self._stop = threading.Event()
        self._poller: threading.Thread | None = None
        if not _reset_peak_rss():
            self._poller = threading.Thread(target=self._poll, daemon=True)
            self._poller.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._poller is None:
            self.mb = _vm_hwm_bytes() / 1e6
        else:
            self._stop.set()
            self._poller.join()

    def _poll(self) -> None:
        process = psutil.Process()
        while True:
            self.mb = max(self.mb, process.memory_info().rss / 1e6)
            if self._stop.wait(RSS_POLL_SECONDS):
                self.mb = max(self.mb, process.memory_info().rss / 1e6)
                return


def _reset_peak_rss() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")  # 5: reset the peak RSS (Linux >= 4.0)
        return _vm_hwm_bytes() > 0
    except OSError:
        return False


def _vm_hwm_bytes() -> int:
    match = re.search(r"^VmHWM:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.M)
    return int(match.group(1)) * 1024 if match else 0
