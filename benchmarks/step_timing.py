"""Wall-clock time of one optimizer step on a given list of parameter shapes.

All optimizers step the same parameters and gradients (fixed random values: the step's cost does
not depend on them), each keeping its own state. After every optimizer's warm-up steps (the first
of which builds or compiles a fused kernel, timed on its own), the timed steps go round-robin, one
step of each optimizer in turn, so that a load spike from another process falls on all of them
alike; each optimizer's figure is the median of its timed steps.
"""

import statistics
import time
from typing import Callable, Dict, List, NamedTuple, Sequence, Tuple

import torch

OptimizerFactory = Callable[[List[torch.nn.Parameter]], torch.optim.Optimizer]


class StepTimes(NamedTuple):
    first_step_s: float
    """The first step, compilation or kernel build/load included."""
    median_step_s: float
    steps_s: List[float]
    state_bytes: int
    """Bytes of the optimizer's state tensors after the warm-up."""


def make_parameters(shapes: Sequence[Tuple[int, ...]], device: str, seed: int = 0) -> List[torch.nn.Parameter]:
    """Parameters ~ N(0, 0.02²) with gradients ~ N(0, 0.001²): magnitudes of a transformer in training."""
    generator = torch.Generator().manual_seed(seed)
    params = []
    for shape in shapes:
        param = torch.nn.Parameter((torch.randn(shape, generator=generator) * 0.02).to(device))
        param.grad = (torch.randn(shape, generator=generator) * 1e-3).to(device)
        params.append(param)
    return params


def state_bytes(optimizer: torch.optim.Optimizer) -> int:
    """Bytes held by the tensors of ``optimizer.state`` (0-dim step counters included)."""
    return sum(
        value.numel() * value.element_size()
        for state in optimizer.state.values()
        for value in state.values()
        if torch.is_tensor(value)
    )


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_steps(
    factories: Dict[str, OptimizerFactory],
    shapes: Sequence[Tuple[int, ...]],
    warmup: int,
    repeats: int,
    device: str = "cpu",
) -> Dict[str, StepTimes]:
    """Time ``repeats`` steps of every optimizer of ``factories`` after ``warmup`` untimed ones."""
    params = make_parameters(shapes, device)
    optimizers = {name: factory(params) for name, factory in factories.items()}
    first: Dict[str, float] = {}
    for name, optimizer in optimizers.items():
        for i in range(max(warmup, 1)):
            start = time.perf_counter()
            optimizer.step()
            synchronize(device)
            if i == 0:
                first[name] = time.perf_counter() - start
    steps: Dict[str, List[float]] = {name: [] for name in optimizers}
    for _ in range(repeats):
        for name, optimizer in optimizers.items():
            start = time.perf_counter()
            optimizer.step()
            synchronize(device)
            steps[name].append(time.perf_counter() - start)
    return {
        name: StepTimes(first[name], statistics.median(steps[name]), steps[name], state_bytes(optimizers[name]))
        for name in optimizers
    }
