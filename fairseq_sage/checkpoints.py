"""Loading and writing fairseq checkpoints safely on torch >= 2.6.

torch >= 2.6 unpickles with ``weights_only=True``: only tensors, containers and primitive types,
plus what is explicitly allow-listed. fairseq checkpoints also hold the training arguments as an
``argparse.Namespace`` (``None`` in new checkpoints, set in old ones), so fairseq's own loader
fails on them. Importing :mod:`fairseq_sage` (as ``--user-dir`` does) allow-lists exactly that
class, so ``fairseq-generate`` and ``fairseq-train --restore-file`` work while any other global in
a checkpoint (a malicious payload, say) is still refused before it runs.
"""

import argparse
import os
import pickle
import tempfile
import zipfile
from typing import Any, Dict

import torch

__all__ = ["FAIRSEQ_CHECKPOINT_GLOBALS", "CheckpointError", "load_checkpoint", "save_atomic"]

FAIRSEQ_CHECKPOINT_GLOBALS = [argparse.Namespace]
"""Non-tensor classes that fairseq checkpoints contain (``state["args"]``)."""

torch.serialization.add_safe_globals(FAIRSEQ_CHECKPOINT_GLOBALS)


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, damaged or unsafe to load."""


def load_checkpoint(path: str) -> Dict[str, Any]:
    """Load a fairseq checkpoint onto the CPU with ``weights_only=True`` and the allow-list above."""
    if not os.path.isfile(path):
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise CheckpointError(
            f"{path}: refused to load, it holds objects that a fairseq checkpoint does not "
            f"({str(err).splitlines()[0]}); only load checkpoints you trust"
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError) as err:
        raise CheckpointError(
            f"{path}: not a readable checkpoint, truncated or corrupted? ({str(err).splitlines()[0]})"
        ) from None


def save_atomic(obj: Any, path: str) -> None:
    """``torch.save`` to a temporary file beside ``path``, then rename: ``path`` is never half-written."""
    directory = os.path.dirname(os.path.abspath(path))
    handle, tmp_path = tempfile.mkstemp(prefix=".tmp-", suffix=".pt", dir=directory)
    try:
        with os.fdopen(handle, "wb") as tmp:
            torch.save(obj, tmp)
            tmp.flush()
            os.fsync(tmp.fileno())
        os.replace(tmp_path, path)
    except BaseException:
        os.unlink(tmp_path)
        raise
