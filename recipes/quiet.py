"""Run a Python module (``python recipes/quiet.py fairseq_cli.train ARGS...``) as ``python -m`` would,
with the deprecation warnings of fairseq's dependencies silenced.

Only the exact messages below are filtered (each matched from its start, with its category): they
come from fairseq's use of older torch, Hydra and fairscale APIs, and nothing a recipe's user can do
about them. Every other warning, this project's included, and every error still shows.
"""

import os
import runpy
import sys
import warnings

THIRD_PARTY_WARNINGS = [
    (FutureWarning, r"`torch\.cuda\.amp\.(custom_fwd|custom_bwd|autocast)\(args\.\.\.\)` is deprecated"),
    (UserWarning, r"hydra\.experimental\.(initialize|compose)\(\) is no longer experimental"),
    (UserWarning, r"\nThe version_base parameter is not specified\."),  # Hydra14MigrationWarning
    (UserWarning, r"In '\w+': Usage of deprecated keyword in package header '# @package _group_'"),
    (UserWarning, r"\n'config' is validated against ConfigStore schema with the same name\."),
    (UserWarning, r"\nThe strict flag in the compose API is deprecated\."),
    (UserWarning, r"'pin_memory' argument is set as true but no accelerator is found"),
    (UserWarning, r"Support for mismatched key_padding_mask and attn_mask is deprecated\."),
]
"""(category, regular expression matched at the start of the message) of each silenced warning."""


def silence_third_party_warnings() -> None:
    for category, message in THIRD_PARTY_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category)


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1].startswith("-"):
        sys.exit("usage: python recipes/quiet.py MODULE [ARGS...]")
    module = sys.argv[1]
    sys.argv = sys.argv[1:]
    sys.path[0] = os.getcwd()  # as `python -m` has it, not this file's folder
    silence_third_party_warnings()
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
