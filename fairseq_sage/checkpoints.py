"""Loading and writing checkpoint files safely on torch >= 2.6, without running anything they hold.

torch >= 2.6 unpickles with ``weights_only=True``: only tensors, containers and primitive types,
plus what is explicitly allow-listed. fairseq checkpoints also hold the training arguments as an
``argparse.Namespace`` (``None`` in new checkpoints, set in old ones), and numpy values where
``--eval-bleu`` was on. :func:`load_checkpoint` admits exactly those
(:data:`FAIRSEQ_CHECKPOINT_GLOBALS`) for the duration of the load; any other global in a
checkpoint (a malicious payload, say) is refused before it runs. A pickle of primitive types can
still carry code as a *string* of the configuration, which fairseq would later ``eval()``: every
such field is evaluated by our own evaluator instead and handed on as a plain literal, or the
checkpoint is refused (:mod:`fairseq_sage.config_values`). Importing this module changes
nothing global: the plugin (:mod:`fairseq_sage.fairseq.checkpoint_hardening`) is what widens fairseq's own
loader, once fairseq loads it.
"""

import argparse
import contextlib
import os
import pickle
import shutil
import zipfile
from typing import Any, Dict

import numpy
import torch

from .config_values import RefusedField, plain_configuration
from .files import replaced_atomically

__all__ = [
    "FAIRSEQ_CHECKPOINT_GLOBALS",
    "CheckpointError",
    "check_checkpoint",
    "copy_atomic",
    "load_checkpoint",
    "load_failure",
    "save_atomic",
    "verify_checkpoint_file",
]

FAIRSEQ_CHECKPOINT_GLOBALS = [
    argparse.Namespace,
    numpy.ndarray,
    numpy.dtype,
    numpy.zeros(0).__reduce__()[0],  # numpy's array constructor (numpy.core or numpy._core)
    numpy.float64(0).__reduce__()[0],  # numpy's scalar constructor
    # the classes of the boolean and numeric dtypes (numpy.dtypes.Int64DType, ...)
    *{type(numpy.dtype(code)) for code in "?" + numpy.typecodes["AllInteger"] + numpy.typecodes["AllFloat"]},
]
"""Non-tensor classes and constructors that fairseq checkpoints contain: the training arguments
(``state["args"]``) and, with ``--eval-bleu``, numpy arrays and scalars in the saved meters of
``extra_state["metrics"]`` (the BLEU n-gram counts). numpy rebuilds an array or a scalar from its
dtype and raw bytes; an object array's elements are unpickled under the same allow-list."""


def fairseq_globals_allowed() -> contextlib.AbstractContextManager:
    """A context in which ``weights_only`` unpickling also admits :data:`FAIRSEQ_CHECKPOINT_GLOBALS`.

    Only the classes not already allow-listed are added, since leaving torch's ``safe_globals``
    context removes every class it was given, also one that the plugin had allow-listed for the
    whole process.
    """
    allowed = torch.serialization.get_safe_globals()
    return torch.serialization.safe_globals([g for g in FAIRSEQ_CHECKPOINT_GLOBALS if g not in allowed])


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, damaged or unsafe to load."""


ZIP_MAGIC = b"PK\x03\x04"
"""First bytes of a checkpoint in torch's zip format (torch >= 1.6); older ones are bare pickles."""


RESTORE_HINT = "use an intact copy (an earlier checkpoint_*.pt of the run, say)"
"""The fix that the message about a damaged checkpoint suggests."""


_unsafe_globals_in = getattr(torch.serialization, "get_unsafe_globals_in_checkpoint", None)
"""Lists the globals a zip checkpoint's pickle names outside the allow-lists, without running it
(None in torch versions older than this function)."""


def is_zip_checkpoint(path: str) -> bool:
    """Whether the file at ``path`` begins like a checkpoint in torch's zip format."""
    with open(path, "rb") as handle:
        return handle.read(len(ZIP_MAGIC)) == ZIP_MAGIC


def can_be_searched(path: str) -> bool:
    """Whether :func:`verify_checkpoint_file` can tell, without unpickling, that ``path`` is safe."""
    return _unsafe_globals_in is not None and is_zip_checkpoint(path)


TRUST_HINT = "only load checkpoints you trust"


def _refusal(path: str, what: str) -> CheckpointError:
    return CheckpointError(f"{path}: refused to load, it holds objects that a fairseq checkpoint does not "
                           f"({what}); {TRUST_HINT}")


def verify_checkpoint_file(path: str) -> None:
    """Raise CheckpointError unless ``path`` is a file and, if in zip format, whole, intact and safe.

    torch does not check the CRC-32 that its zip format stores with every tensor, so a flipped
    byte in a tensor loads silently, and it reports a truncated file without naming it. Every
    member's CRC is checked here (one read of the file), and the pickle is searched, without
    running it, for classes and functions outside torch's and our allow-list: those are refused
    even where ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD`` would make ``torch.load`` run them (where
    :func:`can_be_searched`).
    """
    if not os.path.isfile(path):
        raise CheckpointError(f"{path}: no such checkpoint file")
    if not is_zip_checkpoint(path):
        return
    try:
        with zipfile.ZipFile(path) as archive:
            damaged = archive.testzip()
    except (zipfile.BadZipFile, EOFError, OSError) as err:
        raise _unreadable(path, err) from None
    if damaged is not None:
        raise CheckpointError(f"{path}: corrupted, {damaged} fails its CRC-32 check; {RESTORE_HINT}")
    if not can_be_searched(path):
        return
    try:
        with fairseq_globals_allowed():
            unsafe = _unsafe_globals_in(path)
    except (RuntimeError, ValueError, EOFError) as err:  # not a pickle torch.save wrote
        raise _unreadable(path, err) from None
    if unsafe:
        raise _refusal(path, ", ".join(sorted(unsafe)))


def _unreadable(path: str, err: Exception) -> CheckpointError:
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return CheckpointError(f"{path}: not a readable checkpoint, truncated or corrupted? "
                           f"({lines[0] if lines else type(err).__name__}); {RESTORE_HINT}")


def load_failure(path: str, err: Exception) -> CheckpointError:
    """The CheckpointError for ``torch.load(path, weights_only=True)`` having raised ``err``."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    if isinstance(err, pickle.UnpicklingError) and lines and lines[0].startswith("Weights only load failed"):
        return _refusal(path, next((line for line in lines if "GLOBAL" in line), lines[0]))
    return _unreadable(path, err)


def _unpickle(path: str, read_tensors: bool) -> Dict[str, Any]:
    """``torch.load(path)`` onto the CPU with ``weights_only=True`` and our allow-list, after
    :func:`verify_checkpoint_file`; then make its configuration plain (:func:`plain_configuration`:
    every string fairseq evaluates becomes a plain literal) or refuse it. Without
    ``read_tensors``, a zip checkpoint's tensors are memory-mapped (not read) instead."""
    verify_checkpoint_file(path)
    mmap = not read_tensors and is_zip_checkpoint(path)
    try:
        with fairseq_globals_allowed():
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as err:  # whatever the unpickler met, the file is unusable: say which
        raise load_failure(path, err) from None
    try:
        plain_configuration(state)
    except RefusedField as err:
        raise CheckpointError(f"{path}: refused to load, {err.field} {err.reason}; {TRUST_HINT}") from None
    except RecursionError:
        raise CheckpointError(f"{path}: refused to load, its configuration is nested too deep; {TRUST_HINT}") from None
    return state


def load_checkpoint(path: str) -> Dict[str, Any]:
    """Load a fairseq checkpoint onto the CPU with ``weights_only=True`` and the allow-list above.

    The file is verified first (:func:`verify_checkpoint_file`); in its configuration (``cfg``,
    ``args``) every string that fairseq evaluates is replaced by the plain literal of its value,
    and bytes, interpolations, and an evaluated string that is not a plain value are refused
    (:func:`fairseq_sage.config_values.plain_configuration`); any failure is a CheckpointError whose
    one-line message names the file (and the field).
    """
    return _unpickle(path, read_tensors=True)


def check_checkpoint(path: str) -> None:
    """Raise what :func:`load_checkpoint` would raise, reading as little as possible: a zip
    checkpoint's tensors are memory-mapped rather than read (its CRCs are still checked)."""
    _unpickle(path, read_tensors=False)


def save_atomic(obj: Any, path: str) -> None:
    """``torch.save`` to a temporary file beside ``path``, then rename: ``path`` is never half-written."""
    with replaced_atomically(path) as tmp_path, open(tmp_path, "wb") as tmp:
        torch.save(obj, tmp)
        tmp.flush()
        os.fsync(tmp.fileno())


def copy_atomic(src_path: str, dst_path: str) -> None:
    """Copy ``src_path`` to a temporary file beside ``dst_path``, then rename it to ``dst_path``."""
    with replaced_atomically(dst_path) as tmp_path:
        shutil.copyfile(src_path, tmp_path)
