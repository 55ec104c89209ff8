"""Run one function over a list of per-shard jobs: in this process, or in spawned worker processes.

The in-process engines' one way to spread shard work over cores (pHash, decontamination), with a tqdm bar
per shard; results come back in job order.
"""
from __future__ import annotations

from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from typing import Any, Callable, List, Sequence


def map_jobs(fn: Callable[[Any], Any], jobs: Sequence[Any], *, workers: int = 1, progress: bool = False,
             desc: str = "shards") -> List[Any]:
    """``[fn(job) for job in jobs]``, on ``workers`` spawned processes when there is more than one job
    (``fn`` and the jobs must then pickle); a progress bar named ``desc`` when ``progress``."""
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(jobs), desc=desc, unit="shard")
    results: List[Any] = []
    try:
        if workers > 1 and len(jobs) > 1:
            with ProcessPoolExecutor(max_workers=min(workers, len(jobs)), mp_context=get_context("spawn")) as ex:
                for res in ex.map(fn, jobs):
                    results.append(res)
                    if bar is not None:
                        bar.update(1)
        else:
            for job in jobs:
                results.append(fn(job))
                if bar is not None:
                    bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    return results
