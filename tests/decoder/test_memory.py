"""Output arrays mapped on a second thread: the pages are resident before any write, and
the decode's own writes are never disturbed."""

import os
import sys
import threading

import numpy as np
import pytest

from decoding_assets.decoder import memory

linux_5_14 = pytest.mark.skipif(
    sys.platform != "linux" or tuple(int(x) for x in os.uname().release.split(".")[:2]) < (5, 14),
    reason="MADV_POPULATE_WRITE needs Linux 5.14",
)


def resident_bytes() -> int:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmRSS:"))


def wait_for_mapping() -> None:
    for thread in threading.enumerate():
        if thread.name == memory.THREAD_NAME:
            thread.join(timeout=60)
            assert not thread.is_alive()


@linux_5_14
def test_the_pages_are_resident_before_any_write():
    wait_for_mapping()
    before = resident_bytes()
    rows = memory.empty_rows((4096, 16384), np.float32)  # 256 MiB
    wait_for_mapping()
    assert resident_bytes() - before > 0.9 * rows.nbytes


@linux_5_14
def test_writes_made_while_the_pages_are_mapped_stay_as_written():
    """The decode writes its chunks while the second thread maps the pages: every row
    written holds exactly what was written (the mapping writes nothing)."""
    rows = memory.empty_rows((8192, 8192), np.float32)  # 256 MiB
    for i in range(0, rows.shape[0], 64):
        rows[i : i + 64] = np.arange(i, i + 64, dtype=np.float32)[:, np.newaxis]
    wait_for_mapping()
    np.testing.assert_array_equal(rows[:, 0], np.arange(rows.shape[0], dtype=np.float32))
    np.testing.assert_array_equal(rows, np.broadcast_to(rows[:, :1], rows.shape))


def test_small_arrays_are_plain_and_start_no_thread():
    wait_for_mapping()
    rows = memory.empty_rows((100, 1000), np.float32)
    assert rows.shape == (100, 1000) and rows.dtype == np.float32 and rows.flags.writeable
    assert not any(t.name == memory.THREAD_NAME for t in threading.enumerate())
