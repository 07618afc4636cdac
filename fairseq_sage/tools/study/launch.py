"""The launcher interface: ``launch(function, calls)`` runs ``function(*args)`` for each ``args`` of
``calls`` and returns their results in order, raising the first failure after every call has ended.

:class:`LocalLauncher` runs JOBS calls at once in this machine's processes, each with a fair share of
the cores (OMP_NUM_THREADS = cores // JOBS for the commands it starts); :class:`SubmititLauncher` sends
each call to a cluster (SLURM) through submitit, or to submitit's local executor (``cluster="local"``).
"""

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, List, Sequence

from .steps import StepError


class LocalLauncher:
    def __init__(self, jobs: int = 1):
        self.jobs = max(1, jobs)
        cores = len(os.sched_getaffinity(0))
        os.environ.setdefault("OMP_NUM_THREADS", str(max(1, cores // self.jobs)))

    def launch(self, function: Callable, calls: Sequence[tuple]) -> List:
        with ThreadPoolExecutor(self.jobs) as pool:
            futures = [pool.submit(function, *args) for args in calls]
            errors = [f.exception() for f in futures if f.exception() is not None]
        if errors:
            raise errors[0]
        return [f.result() for f in futures]


class SubmititLauncher:
    """Each call a submitit job (``folder``: its logs; ``parameters``: the executor's, e.g. slurm_partition)."""

    def __init__(self, folder: Path, cluster: str = None, **parameters):
        import submitit  # the optional dependency of cluster users (pip install fairseq-sage[study])

        self.executor = submitit.AutoExecutor(folder=str(folder), cluster=cluster)
        self.executor.update_parameters(**parameters)

    def launch(self, function: Callable, calls: Sequence[tuple]) -> List:
        jobs = [self.executor.submit(function, *args) for args in calls]
        results, errors = [], []
        for job in jobs:
            try:
                results.append(job.result())
            except Exception as error:  # submitit wraps the job's error: keep its last traceback line
                trace = str(error).split("-" * 22)
                errors.append(StepError((trace[1] if len(trace) > 2 else str(error)).strip().splitlines()[-1]))
        if errors:
            raise errors[0]
        return results
