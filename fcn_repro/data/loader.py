"""Parallel, ordered, prefetching loading of dataset samples.

Decoding (PIL's JPEG/PNG decoders, scipy's .mat reader) and the NumPy
preprocessing release the GIL for the bulk of their work, so a small pool of
threads keeps a net fed without the start-up and pickling costs of worker
processes. Samples come back in index order; up to ``workers + prefetch``
are in flight, so memory stays bounded.
"""
from __future__ import annotations

import collections
from concurrent.futures import ThreadPoolExecutor
from typing import Iterator, Optional, Sequence

from fcn_repro.data.base import Sample, SegDataset

__all__ = ["SampleLoader", "shard_indices"]


def shard_indices(n: int, rank: int = 0, world: int = 1, limit: Optional[int] = None) -> list:
    """Indices of the first ``limit`` items (all when None) that process
    ``rank`` of ``world`` takes: i with i % world == rank."""
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"bad shard rank {rank} of world size {world}")
    n = n if limit is None else min(n, max(0, int(limit)))
    return list(range(rank, n, world))


class SampleLoader:
    """Iterate ``dataset[i]`` for ``i in indices`` in order, decoding ahead.

    workers: decoding threads (0: decode in the calling thread).
    prefetch: extra samples decoded ahead beyond one per worker.
    """

    def __init__(self, dataset: SegDataset, indices: Optional[Sequence[int]] = None,
                 workers: int = 2, prefetch: int = 2):
        self.dataset = dataset
        self.indices = list(range(len(dataset))) if indices is None else list(indices)
        self.workers = max(0, int(workers))
        self.prefetch = max(0, int(prefetch))

    def __len__(self) -> int:
        return len(self.indices)

    def __iter__(self) -> Iterator[Sample]:
        if self.workers == 0:
            for i in self.indices:
                yield self.dataset.load(i)
            return
        depth = self.workers + self.prefetch
        with ThreadPoolExecutor(self.workers, thread_name_prefix="fcn-decode") as pool:
            pending: collections.deque = collections.deque()
            it = iter(self.indices)
            try:
                for i in it:
                    pending.append(pool.submit(self.dataset.load, i))
                    if len(pending) >= depth:
                        break
                while pending:
                    fut = pending.popleft()
                    nxt = next(it, None)
                    if nxt is not None:
                        pending.append(pool.submit(self.dataset.load, nxt))
                    yield fut.result()
            finally:
                for f in pending:
                    f.cancel()
