"""Peak memory an optimizer step allocates beyond the weights, gradients and optimizer state.

Each measurement runs in a fresh process (``python -m benchmarks.step_memory OPTIMIZER ARCH``):
it makes the parameters and gradients, takes one step (which allocates the state), resets the
kernel's peak-RSS counter (Linux ``/proc/self/clear_refs``), takes three more steps and reports
how far the peak resident memory rose above what was resident before them: the step's
temporaries. CPU only.
"""

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Callable, Dict, Sequence

from benchmarks.optimizers import BENCHMARKED_IMPLEMENTATIONS, optimizer_factories
from benchmarks.parameter_shapes import parameter_shapes
from benchmarks.step_timing import make_parameters

STATUS = Path("/proc/self/status")


def child_environment() -> Dict[str, str]:
    """The environment of a measuring process: glibc told to map every allocation above 128 KiB
    on its own (``MALLOC_MMAP_THRESHOLD_``, which also stops glibc raising that threshold as large
    blocks are freed), so that a temporary freed by one step leaves the resident memory, instead
    of staying in the heap and hiding the next steps' temporaries."""
    return dict(os.environ, MALLOC_MMAP_THRESHOLD_="131072")


def resident_kib(field: str) -> int:
    """``VmRSS`` (now) or ``VmHWM`` (peak) of this process, in KiB."""
    for line in STATUS.read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in {STATUS}")


def available() -> bool:
    return Path("/proc/self/clear_refs").exists() and STATUS.is_file()


def step_temporaries(step: Callable[[], object]) -> int:
    """Bytes by which three calls of ``step`` raise the peak resident memory above what was
    resident before them, after one call that allocates the optimizer's state."""
    step()
    before = resident_kib("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # peak RSS := current RSS
    for _ in range(3):
        step()
    return max(0, resident_kib("VmHWM") - before) * 1024


def measure_here(optimizer: str, arch: str) -> int:
    """Bytes of step temporaries of ``optimizer`` (a row of :mod:`benchmarks.optimizers`) on ``arch``."""
    params = make_parameters(parameter_shapes(arch), "cpu")
    return step_temporaries(optimizer_factories(BENCHMARKED_IMPLEMENTATIONS, "cpu")[optimizer](params).step)


def measure(optimizers: Sequence[str], arch: str) -> Dict[str, int]:
    """:func:`measure_here` for each of ``optimizers``, each in its own process."""
    results = {}
    for optimizer in optimizers:
        proc = subprocess.run([sys.executable, "-m", "benchmarks.step_memory", optimizer, arch],
                              capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1],
                              env=child_environment())
        if proc.returncode != 0:
            raise RuntimeError(f"memory of {optimizer} on {arch} failed:\n{proc.stderr[-3000:]}")
        results[optimizer] = json.loads(proc.stdout.strip().splitlines()[-1])["temporary_bytes"]
    return results


if __name__ == "__main__":
    print(json.dumps({"temporary_bytes": measure_here(sys.argv[1], sys.argv[2])}))
