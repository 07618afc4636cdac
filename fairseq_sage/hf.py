"""SAGE's statistics in Hugging Face Transformers' training logs.

    from fairseq_sage import AdamSAGE
    from fairseq_sage.hf import add_sage_statistics   # or trainer.add_callback(SAGEStatisticsCallback())

    trainer = Trainer(..., optimizer_cls_and_kwargs=(AdamSAGE, {"lr": 5e-4, "beta0": 0.8}))
    add_sage_statistics(trainer)

Every logging step gets ``sage_mult_mean``, ``sage_mult_p10`` ...
(:func:`fairseq_sage.optim.diagnostics.sage_statistics`), computed just before that step's update,
while the gradients it uses are there: in the logs that ``report_to``'s integrations receive and in
``trainer.state.log_history``. Importing this module imports transformers; the rest of the package
does not.
"""

from transformers import TrainerCallback

from .optim.diagnostics import sage_statistics

__all__ = ["SAGEStatisticsCallback", "add_sage_statistics", "sage_optimizer"]


def sage_optimizer(optimizer):
    """The SAGE optimizer in ``optimizer``: itself, or the one a wrapper (accelerate's
    ``AcceleratedOptimizer``) holds as ``optimizer``, at any depth; None where there is none (a
    plain AdamW, say)."""
    seen = set()
    while optimizer is not None and id(optimizer) not in seen:
        if hasattr(optimizer, "sage_param_groups"):
            return optimizer
        seen.add(id(optimizer))
        optimizer = getattr(optimizer, "optimizer", None)
    return None


class SAGEStatisticsCallback(TrainerCallback):
    """Adds the SAGE multiplier statistics of each logged update to the Trainer's logs; with an
    optimizer without SAGE (a plain AdamW) it adds nothing."""

    def __init__(self):
        self.statistics = {}

    def on_pre_optimizer_step(self, args, state, control, optimizer=None, **kwargs):
        sage = sage_optimizer(optimizer)
        if sage is not None and state.logging_steps and (state.global_step + 1) % state.logging_steps == 0:
            self.statistics = sage_statistics(sage.sage_param_groups, sage.state)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs is not None and "loss" in logs:
            logs.update(self.statistics)
            state.log_history[-1].update(self.statistics)  # the Trainer recorded a copy of logs
        self.statistics = {}


def add_sage_statistics(trainer) -> None:
    """Give ``trainer`` a :class:`SAGEStatisticsCallback` ahead of its other callbacks, so that the
    reporting integrations, which the Trainer registers first, log the statistics too."""
    trainer.callback_handler.callbacks.insert(0, SAGEStatisticsCallback())
