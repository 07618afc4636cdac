"""Joint subword segmentation: BPE with subword-nmt (default) or sentencepiece.

BPE follows fairseq's prepare-iwslt14.sh and prepare-wmt14en2de.sh: the merges are
learnt on the concatenation of the training files of both languages
(``cat train.de train.en | learn_bpe.py -s N > code``) and applied to every split
(``apply_bpe.py -c code < in > out``), with subword-nmt's defaults (minimum pair
frequency 2, separator ``@@``). The sentencepiece method runs
``python -m data_prep.sentencepiece_bpe train|encode``.

CLI::

    python -m data_prep.subword learn [--method bpe|sentencepiece] --size N --model MODEL TRAIN [TRAIN ...]
    python -m data_prep.subword apply [--method bpe|sentencepiece] --model MODEL [--workers N] INPUT OUTPUT

For BPE, MODEL is the merges (codes) file and ``--size`` the number of merges. For
sentencepiece, ``learn`` takes a model prefix (writes ``MODEL.model``), ``apply``
takes the ``.model`` file, and ``--size`` is the vocabulary size.
"""

import argparse
import contextlib
import functools
import importlib.util
import itertools
import os
import subprocess
import sys
from pathlib import Path
from typing import List, Optional, Sequence

from subword_nmt.apply_bpe import BPE
from subword_nmt.learn_bpe import learn_bpe

from data_prep.cli import DataPrepError, run_main
from data_prep.textio import PathLike, atomic_output, open_lines, transform_file

METHODS = ("bpe", "sentencepiece")
SENTENCEPIECE_MODULE = "data_prep.sentencepiece_bpe"


def check_training_files(train_files: Sequence[PathLike]) -> None:
    """Raise DataPrepError naming the first of ``train_files`` that holds no text (empty, or only
    white space): a subword model cannot be learnt from it."""
    for path in train_files:
        with open(path, "rb") as data:
            if not any(chunk.strip() for chunk in iter(lambda: data.read(1 << 16), b"")):
                raise DataPrepError(f"{path}: no text to learn subwords from (the file is empty or blank); "
                                    "check the training files")


def learn_joint_bpe(train_files: Sequence[PathLike], codes_path: PathLike, merges: int) -> None:
    """Learn ``merges`` BPE merges on the concatenated ``train_files``; write them to ``codes_path``."""
    check_training_files(train_files)
    with contextlib.ExitStack() as stack, atomic_output(codes_path) as codes:
        lines = itertools.chain.from_iterable(stack.enter_context(open_lines(path)) for path in train_files)
        try:
            learn_bpe(lines, codes, merges)
        except ValueError as error:  # subword-nmt's max() of no pair counts: words of one character only
            raise DataPrepError(f"{', '.join(map(str, train_files))}: subword-nmt found nothing to merge "
                                f"({error}); check the training files") from None


@functools.lru_cache(maxsize=None)
def _bpe(codes_path: str) -> BPE:
    with open(codes_path, encoding="utf-8") as codes:
        return BPE(codes)


def apply_bpe(line: str, codes_path: str) -> str:
    """BPE segmentation of one tokenized line with the merges in ``codes_path`` (``@@ `` joins pieces)."""
    return _bpe(codes_path).process_line(line)


def apply_bpe_file(codes_path: PathLike, input_path: PathLike, output_path: PathLike, workers: int = 1) -> int:
    """Segment every line of ``input_path`` into ``output_path`` (atomically); return the line count."""
    if not Path(codes_path).is_file():
        raise DataPrepError(f"{codes_path}: no such BPE codes file; run 'learn' first")
    return transform_file(functools.partial(apply_bpe, codes_path=str(codes_path)), input_path, output_path, workers)


def _run_sentencepiece(arguments: List[str], stdin=None, stdout=None) -> None:
    """Run ``python -m data_prep.sentencepiece_bpe ARGUMENTS`` with this package importable."""
    if importlib.util.find_spec(SENTENCEPIECE_MODULE) is None:
        raise DataPrepError(f"{SENTENCEPIECE_MODULE} is missing; use --method bpe")
    package_parent = str(Path(__file__).resolve().parent.parent)
    environment = dict(os.environ)
    environment["PYTHONPATH"] = os.pathsep.join(filter(None, [package_parent, environment.get("PYTHONPATH")]))
    command = [sys.executable, "-m", SENTENCEPIECE_MODULE, *arguments]
    result = subprocess.run(command, stdin=stdin, stdout=stdout, env=environment)
    if result.returncode != 0:
        raise DataPrepError(f"{' '.join(command)} failed with exit status {result.returncode}")


def learn_joint_sentencepiece(train_files: Sequence[PathLike], model_prefix: PathLike, vocab_size: int) -> None:
    """Train one sentencepiece model on ``train_files``; it is written to ``model_prefix.model``."""
    check_training_files(train_files)
    files = [str(path) for path in train_files]
    _run_sentencepiece(["train", "--inputs", *files, "--model-prefix", str(model_prefix), "--vocab-size", str(vocab_size)])


def apply_sentencepiece_file(model_path: PathLike, input_path: PathLike, output_path: PathLike) -> None:
    """Encode every line of ``input_path`` with the sentencepiece ``model_path`` into ``output_path`` (atomically)."""
    with open(input_path, "rb") as source, atomic_output(output_path) as output:
        output.flush()
        _run_sentencepiece(["encode", "--model", str(model_path)], stdin=source, stdout=output)


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m data_prep.subword", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    learn_command = commands.add_parser("learn", help="learn one model on the training files of both languages")
    learn_command.add_argument("--method", choices=METHODS, default="bpe")
    learn_command.add_argument("--size", type=int, required=True, help="BPE merges / sentencepiece vocabulary size")
    learn_command.add_argument("--model", required=True, help="BPE codes file / sentencepiece model prefix")
    learn_command.add_argument("train_files", nargs="+")
    apply_command = commands.add_parser("apply", help="segment one file")
    apply_command.add_argument("--method", choices=METHODS, default="bpe")
    apply_command.add_argument("--model", required=True, help="BPE codes file / sentencepiece .model file")
    apply_command.add_argument("--workers", type=int, default=1, help="processes for BPE (default 1)")
    apply_command.add_argument("input")
    apply_command.add_argument("output")
    args = parser.parse_args(argv)
    if args.command == "learn":
        if args.size < 1:
            raise DataPrepError(f"--size {args.size}: must be a positive number")
        learn = learn_joint_bpe if args.method == "bpe" else learn_joint_sentencepiece
        learn(args.train_files, args.model, args.size)
    elif args.method == "bpe":
        apply_bpe_file(args.model, args.input, args.output, args.workers)
    else:
        apply_sentencepiece_file(args.model, args.input, args.output)


if __name__ == "__main__":
    sys.exit(run_main(main))
