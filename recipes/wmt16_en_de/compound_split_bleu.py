"""Tokenized BLEU with compound splitting, from a fairseq-generate output file.

The convention of Vaswani et al. (2017) and Ott et al. (2018) for WMT En->De (tensor2tensor's
get_ende_bleu.sh, fairseq's scripts/compound_split_bleu.sh): in both the hypotheses (H lines)
and the references (T lines), every hyphen between two non-space characters becomes a token
of its own, ``Café-Liebhaber`` -> ``Café ##AT##-##AT## Liebhaber``, then corpus BLEU-4 is
computed on the whitespace tokens (no further tokenization, no smoothing). The scores are
higher than, and not comparable with, detokenized sacreBLEU.

    python recipes/wmt16_en_de/compound_split_bleu.py generate.out
    # BLEU4 = 27.31, 58.6/33.0/20.9/13.7 (BP=1.000, ratio=1.012, syslen=..., reflen=...)
"""

import argparse
import re
import sys
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

from sacrebleu.metrics import BLEU

HYPHEN_BETWEEN_CHARACTERS = re.compile(r"(\S)-(\S)")


def split_compounds(line: str) -> str:
    """Apply ``perl -ple 's{(\\S)-(\\S)}{$1 ##AT##-##AT## $2}g'`` to one line.

    Like the Perl substitution, matches do not overlap: in ``a-b-c`` the ``b`` belongs to the
    first match, so the second hyphen stays attached (``a ##AT##-##AT## b-c``).
    """
    return HYPHEN_BETWEEN_CHARACTERS.sub(r"\1 ##AT##-##AT## \2", line)


def read_generate_output(path: Path) -> Tuple[List[str], List[str]]:
    """Hypotheses (H lines) and references (T lines) of a fairseq-generate output, in id order."""
    hypotheses: Dict[int, str] = {}
    references: Dict[int, str] = {}
    with open(path, encoding="utf-8") as lines:
        for line in lines:
            kind, _, rest = line.rstrip("\n").partition("-")
            if kind not in ("H", "T") or not rest.split("\t", 1)[0].isdigit():
                continue
            fields = rest.split("\t")
            if kind == "H":
                hypotheses[int(fields[0])] = fields[2] if len(fields) > 2 else ""
            else:
                references[int(fields[0])] = fields[1] if len(fields) > 1 else ""
    if not references or hypotheses.keys() != references.keys():
        raise ValueError(
            f"{path}: {len(hypotheses)} hypotheses (H lines) for {len(references)} references "
            "(T lines); expected one of each per sentence"
        )
    order = sorted(references)
    return [hypotheses[i] for i in order], [references[i] for i in order]


def compound_split_bleu(hypotheses: Sequence[str], references: Sequence[str]):
    """Corpus BLEU-4 (sacrebleu.BLEUScore) of compound-split, already tokenized text."""
    bleu = BLEU(tokenize="none", smooth_method="none", force=True)
    return bleu.corpus_score(
        [split_compounds(h) for h in hypotheses], [[split_compounds(r) for r in references]]
    )


def describe(score) -> str:
    """The score in fairseq-score's format: ``BLEU4 = 27.31, 58.6/33.0/20.9/13.7 (BP=...)``."""
    precisions = "/".join(f"{p:.1f}" for p in score.precisions)
    return (
        f"BLEU4 = {score.score:.2f}, {precisions} (BP={score.bp:.3f}, ratio={score.ratio:.3f}, "
        f"syslen={score.sys_len}, reflen={score.ref_len})"
    )


def main(argv: Sequence[str] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("generate_output", type=Path, help="fairseq-generate output (with --remove-bpe)")
    args = parser.parse_args(argv)
    try:
        hypotheses, references = read_generate_output(args.generate_output)
    except (OSError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(describe(compound_split_bleu(hypotheses, references)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
