"""Average the model parameters of several fairseq checkpoints.

Averaging the weights of the last few checkpoints of a run is the standard
final step of the Transformer NMT recipes (Vaswani et al., 2017; Ott et al.,
2018).  Usage::

    python -m fairseq_sage.tools.average_checkpoints --inputs CHECKPOINT_DIR \\
        --num-epoch-checkpoints 10 --output checkpoint.avg10.pt
    python -m fairseq_sage.tools.average_checkpoints --inputs CHECKPOINT_DIR \\
        --num-update-checkpoints 5 --checkpoint-upper-bound 30000 --output avg.pt
    python -m fairseq_sage.tools.average_checkpoints --inputs a.pt b.pt c.pt --output avg.pt

Floating-point parameters are summed in float64 and cast back to each
tensor's own dtype (so fp16 checkpoints stay fp16).  Parameters stored under
several keys (tied embeddings) are averaged once and stay one shared tensor.
The output keeps every entry of the newest input checkpoint (cfg, args, task
and training state) except the optimizer state, and is written atomically.
"""

import argparse
import os
import re
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import torch

from fairseq_sage.checkpoints import CheckpointError, load_checkpoint, save_atomic
from fairseq_sage.tools.writable import why_not_writable

EPOCH_CHECKPOINT = re.compile(r"checkpoint(\d+)\.pt")
UPDATE_CHECKPOINT = re.compile(r"checkpoint_\d+_(\d+)\.pt")
OPTIMIZER_STATE_KEY = "last_optimizer_state"
WRITABLE_HINT = "give a path in a folder you can write to"


class AveragingError(ValueError):
    """Bad input to checkpoint averaging; the message is one line naming the file or flag."""


def select_checkpoints(
    directory: Path, num: int, by_update: bool, upper_bound: Optional[int] = None
) -> List[Path]:
    """Return the ``num`` newest checkpoints of ``directory``, oldest first.

    Epoch checkpoints are ``checkpointE.pt`` (``by_update=False``); update
    checkpoints are ``checkpoint_E_U.pt`` (``by_update=True``) ordered by U.
    With ``upper_bound``, only checkpoints whose epoch (or update) number is
    at most ``upper_bound`` are candidates.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise AveragingError(f"--inputs {directory}: not a directory of checkpoints")
    if num < 1:
        raise AveragingError(f"the number of checkpoints to average must be >= 1, got {num}")
    pattern = UPDATE_CHECKPOINT if by_update else EPOCH_CHECKPOINT
    numbered = []
    for path in directory.iterdir():
        match = pattern.fullmatch(path.name)
        if match and (upper_bound is None or int(match.group(1)) <= upper_bound):
            numbered.append((int(match.group(1)), path))
    kind = "checkpoint_E_U.pt" if by_update else "checkpointE.pt"
    bound = "" if upper_bound is None else f" with number <= {upper_bound}"
    if not numbered:
        raise AveragingError(f"no {kind} files{bound} in {directory}")
    if len(numbered) < num:
        raise AveragingError(
            f"asked to average {num} checkpoints but {directory} has only "
            f"{len(numbered)} {kind} files{bound}"
        )
    numbered.sort()
    return [path for _, path in numbered[-num:]]


def _alias_groups(params: Dict[str, torch.Tensor]) -> List[List[str]]:
    """Group the keys of ``params`` whose tensors are views of the same memory."""
    groups: Dict[tuple, List[str]] = {}
    for key, tensor in params.items():
        identity = (
            tensor.untyped_storage().data_ptr(),
            tensor.storage_offset(),
            tuple(tensor.shape),
            tensor.stride(),
            tensor.dtype,
        )
        groups.setdefault(identity, []).append(key)
    return list(groups.values())


def _check_compatible(
    reference: Dict[str, torch.Tensor], params: Dict[str, torch.Tensor], path: Path, ref_path: Path
) -> None:
    """Raise AveragingError if ``params`` (from ``path``) differs from ``reference`` in keys or shapes."""
    if params.keys() != reference.keys():
        missing = sorted(reference.keys() - params.keys())
        extra = sorted(params.keys() - reference.keys())
        raise AveragingError(
            f"{path}: parameter names differ from {ref_path} "
            f"(missing {missing[:3]}, unexpected {extra[:3]})"
        )
    for key, tensor in params.items():
        if tensor.shape != reference[key].shape:
            raise AveragingError(
                f"{path}: parameter {key} has shape {tuple(tensor.shape)}, "
                f"{ref_path} has {tuple(reference[key].shape)}"
            )


def _model_params(state: dict, path: Path) -> Dict[str, torch.Tensor]:
    """Return the ``model`` entry of a loaded checkpoint, or raise naming ``path``."""
    params = state.get("model") if isinstance(state, dict) else None
    if not isinstance(params, dict):
        raise AveragingError(f"{path}: not a fairseq checkpoint (no 'model' state dict)")
    return params


def average_checkpoints(paths: Sequence[os.PathLike]) -> dict:
    """Return a checkpoint whose model parameters are the mean over ``paths``.

    Every floating-point parameter becomes ``sum_i p_i / len(paths)``,
    accumulated in float64 and cast back to the parameter's dtype.  Integer
    tensors (counters) are taken from the last checkpoint.  Keys that share
    one tensor in the last checkpoint share one averaged tensor in the
    result.  All other entries come from the last checkpoint in ``paths``,
    except the optimizer state, which is dropped.
    """
    paths = [Path(p) for p in paths]
    if not paths:
        raise AveragingError("no checkpoints given to average")
    seen: Dict[tuple, int] = {}
    for index, path in enumerate(paths):
        if not path.is_file():
            raise AveragingError(f"checkpoint {path} does not exist")
        identity = (path.stat().st_dev, path.stat().st_ino)  # the same file under any name
        first = seen.setdefault(identity, index)
        if first != index:
            alias = "" if paths[first] == path else f" (also as {paths[first]})"
            raise AveragingError(f"checkpoint {path} is given twice{alias}; give each checkpoint once")

    last_state = load_checkpoint(str(paths[-1]))
    last_params = _model_params(last_state, paths[-1])
    groups = _alias_groups(last_params)
    sums = {
        group[0]: torch.zeros_like(last_params[group[0]], dtype=torch.float64)
        for group in groups
        if last_params[group[0]].is_floating_point()
    }
    for path in paths:
        state = last_state if path == paths[-1] else load_checkpoint(str(path))
        params = _model_params(state, path)
        _check_compatible(last_params, params, path, paths[-1])
        for group in groups:
            first = group[0]
            for other in group[1:]:
                if not torch.equal(params[first], params[other]):
                    raise AveragingError(
                        f"{path}: {first} and {other} differ, but they are one shared "
                        f"tensor in {paths[-1]}"
                    )
            if first in sums:
                sums[first] += params[first].to(torch.float64)

    averaged: Dict[str, torch.Tensor] = {}
    for group in groups:
        reference = last_params[group[0]]
        if group[0] in sums:
            value = (sums[group[0]] / len(paths)).to(reference.dtype)
        else:
            value = reference.clone()
        for key in group:
            averaged[key] = value
    # keep the parameter order of the last checkpoint
    averaged_in_order = {key: averaged[key] for key in last_params}

    result = {key: value for key, value in last_state.items() if key != OPTIMIZER_STATE_KEY}
    result["model"] = averaged_in_order
    return result


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fairseq-sage-average-checkpoints",
        description="Average the model parameters of fairseq checkpoints "
        "(optimizer state is dropped).",
    )
    parser.add_argument(
        "--inputs",
        nargs="+",
        required=True,
        help="checkpoint files, or one directory together with "
        "--num-epoch-checkpoints / --num-update-checkpoints",
    )
    parser.add_argument("--output", required=True, help="path of the averaged checkpoint")
    count = parser.add_mutually_exclusive_group()
    count.add_argument(
        "--num-epoch-checkpoints",
        type=int,
        help="average the last N checkpointE.pt files of the --inputs directory",
    )
    count.add_argument(
        "--num-update-checkpoints",
        type=int,
        help="average the last N checkpoint_E_U.pt files of the --inputs directory",
    )
    parser.add_argument(
        "--checkpoint-upper-bound",
        type=int,
        help="only consider checkpoints with epoch (or update) number <= this",
    )
    return parser


def resolve_inputs(args: argparse.Namespace) -> List[Path]:
    """Turn the parsed command line into the list of checkpoint files to average."""
    by_update = args.num_update_checkpoints is not None
    num = args.num_update_checkpoints if by_update else args.num_epoch_checkpoints
    if num is None:
        if args.checkpoint_upper_bound is not None:
            raise AveragingError(
                "--checkpoint-upper-bound needs --num-epoch-checkpoints or --num-update-checkpoints"
            )
        return [Path(p) for p in args.inputs]
    if len(args.inputs) != 1:
        raise AveragingError(
            "with --num-epoch-checkpoints/--num-update-checkpoints, --inputs takes one directory"
        )
    return select_checkpoints(
        Path(args.inputs[0]),
        num,
        by_update=by_update,
        upper_bound=args.checkpoint_upper_bound,
    )


def check_output(output: Path) -> None:
    """Raise AveragingError, before any work, where ``--output`` cannot be written: a folder, or
    a path under a file or in a folder that takes no new file."""
    if output.is_dir():
        raise AveragingError(f"--output {output} is a directory; give the path of the file to write")
    reason = why_not_writable(output.parent)
    if reason:
        raise AveragingError(f"--output {output}: {reason}; {WRITABLE_HINT}")


def cli_main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        paths = resolve_inputs(args)
        output = Path(args.output)
        check_output(output)
        print("averaging " + ", ".join(str(p) for p in paths), file=sys.stderr)
        averaged = average_checkpoints(paths)
        try:
            output.parent.mkdir(parents=True, exist_ok=True)
            save_atomic(averaged, str(output))
        except OSError as err:
            raise AveragingError(f"--output {output}: cannot write it ({err.strerror or err}); {WRITABLE_HINT}") from None
    except (AveragingError, CheckpointError) as error:
        print(f"fairseq-sage-average-checkpoints: error: {error}", file=sys.stderr)
        return 2
    print(f"wrote {args.output} (average of {len(paths)} checkpoints)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    from fairseq_sage.quiet import quiet_entry

    quiet_entry()
    sys.exit(cli_main())
