"""blocks.fast.memory: freed activation-sized blocks are reused, not faulted in again."""

import resource
import sys
import threading

import pytest
import torch

from blocks.fast import keep_freed_memory


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="mallopt is glibc's")
# 16 MB: one [64, 4, 128, 128] pattern; 64 MB: past the 32 MB ceiling of glibc's mmap threshold
@pytest.mark.parametrize("megabytes", [16, 64])
def test_a_freed_block_comes_back_without_page_faults(megabytes: int):
    assert keep_freed_memory() is True

    def faults_for_one_fill() -> int:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        t = torch.empty(megabytes * 2**18)
        t.fill_(1.0)
        del t
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

    faults_for_one_fill()  # the first fill maps the pages
    # 16 MB is 4096 pages of 4 KB: unmapped on free, every fill would fault each page again
    # (the best of three, so that another thread's allocation in between cannot decide it)
    assert min(faults_for_one_fill() for _ in range(3)) < 400 * megabytes // 16


def test_blocks_larger_than_a_thread_heap_still_allocate_in_threads():
    # with mmap off, glibc's per-thread heaps (64 MB at most) must fall back to mmap for larger blocks
    keep_freed_memory()
    sums = []

    def allocate() -> None:
        sums.append(float(torch.ones(64 * 2**20).sum()))  # 256 MB

    worker = threading.Thread(target=allocate)
    worker.start()
    worker.join()
    assert sums == [64 * 2**20]
