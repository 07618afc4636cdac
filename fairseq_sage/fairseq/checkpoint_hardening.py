"""The plugin's hardening of fairseq's checkpoint handling, which :func:`install_hardening` applies
(the plugin calls it when fairseq loads the plugin).

- torch >= 2.6 unpickles with ``weights_only=True``, and fairseq's loader fails on fairseq's own
  checkpoints (``argparse.Namespace``, numpy values of ``--eval-bleu`` meters): the classes of
  :data:`fairseq_sage.checkpoints.FAIRSEQ_CHECKPOINT_GLOBALS`, and only those, are allow-listed
  for the whole process, so that ``fairseq-generate``, ``fairseq-interactive`` and
  ``fairseq-train --restore-file`` work while any other global in a checkpoint is refused.
- :func:`harden_fairseq_checkpoints` makes fairseq verify every checkpoint before loading it
  (damaged files, foreign pickle globals, configuration fields fairseq evaluates that are not plain
  values, bytes) and copy each new checkpoint onto ``checkpoint_last.pt`` atomically;
- fairseq's modules evaluate with the safe evaluator rather than the built-in ``eval()``
  (:mod:`.evaluation`).
"""

import functools
import pickle
import types

import torch

from ..checkpoints import FAIRSEQ_CHECKPOINT_GLOBALS, CheckpointError, check_checkpoint, copy_atomic, load_failure
from .evaluation import replace_eval_in_fairseq

__all__ = ["install_hardening", "harden_fairseq_checkpoints"]


class TorchLoadingWeightsOnly(types.ModuleType):
    """torch as ``fairseq.checkpoint_utils`` sees it once hardened: every attribute is torch's, except
    that ``load`` always unpickles with ``weights_only=True`` (torch's allow-list), whatever its caller
    or TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD ask for."""

    def __getattr__(self, name):
        return getattr(torch, name)

    @staticmethod
    def load(*args, **kwargs):
        return torch.load(*args, **{**kwargs, "weights_only": True})


def harden_fairseq_checkpoints() -> None:
    """Patch fairseq (once per process) so that its checkpoints are verified and copied atomically.

    - ``fairseq.checkpoint_utils.load_checkpoint_to_cpu``, which ``fairseq-train`` (resuming),
      ``fairseq-generate``, ``fairseq-interactive`` and the analysis CLI use, first runs
      :func:`fairseq_sage.checkpoints.check_checkpoint`: the file is verified and unpickled with
      ``weights_only=True`` (its tensors memory-mapped, not read), and every configuration field
      fairseq evaluates is checked to be a plain value, before fairseq's loader (whose caller
      evaluates those fields, with the safe ``eval`` that :func:`replace_eval_in_fairseq` gives
      the modules loaded by then) sees it; a damaged or refused checkpoint stops the program with
      one ``fairseq-sage: error:`` line naming the file (and the field).
    - fairseq's loader then reads the file again: every ``torch.load`` of ``fairseq.checkpoint_utils``
      unpickles with ``weights_only=True`` (:class:`TorchLoadingWeightsOnly`), so that a file replaced
      between the check and that read cannot run code either, even under TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD.
    - ``fairseq.file_io.PathManager.copy``, with which fairseq copies each new checkpoint to
      ``checkpoint_last.pt`` (and ``checkpoint_best.pt``), uses :func:`copy_atomic` for local files.
    """
    from fairseq import checkpoint_utils
    from fairseq.file_io import PathManager

    if getattr(checkpoint_utils.load_checkpoint_to_cpu, "hardened_by_fairseq_sage", False):
        return
    fairseq_load = checkpoint_utils.load_checkpoint_to_cpu
    fairseq_copy = PathManager.copy

    @functools.wraps(fairseq_load)
    def load_checkpoint_to_cpu(path, *args, **kwargs):
        try:
            replace_eval_in_fairseq()
            if not PathManager.path_requires_pathmanager(path):
                check_checkpoint(path)  # safely, whatever torch's default or TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD
            try:
                return fairseq_load(path, *args, **kwargs)
            except (pickle.UnpicklingError, EOFError) as err:
                raise load_failure(path, err) from None
        except CheckpointError as err:
            raise SystemExit(f"fairseq-sage: error: {err}") from None

    def copy(src_path: str, dst_path: str, overwrite: bool = False) -> bool:
        if not overwrite or PathManager.path_requires_pathmanager(dst_path):
            return fairseq_copy(src_path, dst_path, overwrite=overwrite)
        copy_atomic(src_path, dst_path)
        return True

    load_checkpoint_to_cpu.hardened_by_fairseq_sage = True
    checkpoint_utils.load_checkpoint_to_cpu = load_checkpoint_to_cpu
    if getattr(checkpoint_utils, "torch", None) is torch:
        checkpoint_utils.torch = TorchLoadingWeightsOnly(torch.__name__)
    PathManager.copy = staticmethod(copy)


def install_hardening() -> None:
    """Allow-list fairseq's checkpoint classes for the process, patch its loader and copy
    (:func:`harden_fairseq_checkpoints`) and its ``eval()`` (:mod:`.evaluation`); a second call
    changes nothing."""
    torch.serialization.add_safe_globals(FAIRSEQ_CHECKPOINT_GLOBALS)
    harden_fairseq_checkpoints()
    replace_eval_in_fairseq()
