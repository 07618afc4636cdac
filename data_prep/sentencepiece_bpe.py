"""SentencePiece BPE: train a joint subword model, encode text into pieces, decode back.

    python -m data_prep.sentencepiece_bpe train --inputs train.de train.en \\
        --model-prefix spm/joint --vocab-size 8000
    python -m data_prep.sentencepiece_bpe encode --model spm/joint.model < train.de > train.bpe.de
    python -m data_prep.sentencepiece_bpe decode --model spm/joint.model < hyp.bpe > hyp.txt

``encode`` writes one line of space-separated pieces per input line (the format
fairseq-preprocess reads); ``decode`` joins pieces back into plain text, so
raw untokenized text goes in and comes out (no Moses tokenizer needed).
"""

import argparse
import io
import os
import sys
import tempfile
from pathlib import Path
from typing import Iterable, Iterator, Optional, Sequence

import sentencepiece as spm

from data_prep.cli import DataPrepError, run_main
from fairseq_sage.files import replace


def train(inputs: Sequence[os.PathLike], model_prefix: str, vocab_size: int,
          character_coverage: float = 1.0, input_sentence_size: int = 0) -> Path:
    """Train one BPE model on all ``inputs`` and write ``<prefix>.model`` and ``<prefix>.vocab``.

    Both files are written next to a temporary prefix and renamed into place, so
    an interrupted run leaves no half-written model.  ``input_sentence_size > 0``
    trains on a random sample of that many sentences.  Returns the model path.
    """
    for path in inputs:
        if not Path(path).is_file():
            raise DataPrepError(f"--inputs {path}: no such file")
    prefix = Path(model_prefix)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=prefix.parent, prefix=".spm-") as tmp_dir:
        tmp_prefix = Path(tmp_dir) / prefix.name
        options = dict(
            input=[str(p) for p in inputs],
            model_prefix=str(tmp_prefix),
            vocab_size=vocab_size,
            model_type="bpe",
            character_coverage=character_coverage,
            minloglevel=1,
        )
        if input_sentence_size > 0:
            options.update(input_sentence_size=input_sentence_size, shuffle_input_sentence=True)
        try:
            spm.SentencePieceTrainer.train(**options)
        except RuntimeError as error:
            raise DataPrepError(f"sentencepiece training failed: {error}; check --inputs and --vocab-size") from None
        for suffix in (".vocab", ".model"):  # the .model last: its presence marks completion
            replace(f"{tmp_prefix}{suffix}", f"{prefix}{suffix}")
    return Path(f"{prefix}.model")


def load(model: os.PathLike) -> spm.SentencePieceProcessor:
    """Load a trained model, or stop with an error naming the missing file."""
    if not Path(model).is_file():
        raise DataPrepError(f"--model {model}: no such file; run 'train' first")
    return spm.SentencePieceProcessor(model_file=str(model))


def _without_newline(line: str) -> str:
    return line[:-1] if line.endswith("\n") else line


def encode_lines(processor: spm.SentencePieceProcessor, lines: Iterable[str]) -> Iterator[str]:
    """Yield each line as space-separated subword pieces."""
    for line in lines:
        yield " ".join(processor.encode(_without_newline(line), out_type=str))


def decode_lines(processor: spm.SentencePieceProcessor, lines: Iterable[str]) -> Iterator[str]:
    """Yield each line of space-separated pieces as detokenized text."""
    for line in lines:
        yield processor.decode([piece for piece in _without_newline(line).split(" ") if piece])


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m data_prep.sentencepiece_bpe", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    train_cmd = commands.add_parser("train", help="train a joint BPE model")
    train_cmd.add_argument("--inputs", nargs="+", required=True, help="plain-text training files")
    train_cmd.add_argument("--model-prefix", required=True, help="writes PREFIX.model and PREFIX.vocab")
    train_cmd.add_argument("--vocab-size", type=int, required=True)
    train_cmd.add_argument("--character-coverage", type=float, default=1.0)
    train_cmd.add_argument("--input-sentence-size", type=int, default=0,
                           help="train on a random sample of this many sentences (0: all)")
    for name, action in (("encode", "text -> pieces"), ("decode", "pieces -> text")):
        sub = commands.add_parser(name, help=f"{action}, stdin to stdout")
        sub.add_argument("--model", required=True, help="PREFIX.model written by 'train'")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> None:
    args = build_parser().parse_args(argv)
    if args.command == "train":
        model = train(args.inputs, args.model_prefix, args.vocab_size,
                      args.character_coverage, args.input_sentence_size)
        print(f"wrote {model}", file=sys.stderr)
        return
    processor = load(args.model)
    convert = encode_lines if args.command == "encode" else decode_lines
    # Lines end at "\n" only (a stray "\r" must not split a line and shift the alignment);
    # bytes that are not UTF-8 become U+FFFD, which sentencepiece accepts.
    source = io.TextIOWrapper(sys.stdin.buffer, encoding="utf-8", errors="replace", newline="\n")
    target = io.TextIOWrapper(sys.stdout.buffer, encoding="utf-8", newline="\n")
    for line in convert(processor, source):
        target.write(line + "\n")
    target.flush()


if __name__ == "__main__":
    sys.exit(run_main(main))
