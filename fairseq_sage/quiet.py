"""Quiet command-line entries: the import-time noise of fairseq and its dependencies silenced.

Two kinds of noise reach the console before a tool prints anything of its own:

- deprecation warnings of fairseq's use of older torch, Hydra and fairscale APIs
  (:data:`THIRD_PARTY_WARNINGS`), which nothing a user can do removes;
- log records of every library: importing fairseq calls ``logging.basicConfig(level=DEBUG)``
  (``fairseq/models/wav2vec/wav2vec2_classification.py``), so matplotlib's font search and
  fairseq's "Please install tensorboardX" are printed.

:func:`silence_third_party_warnings` filters the exact messages listed, each matched from its
start with its category; every other warning, this project's included, and every error still
shows. :func:`quiet_entry` does that and configures logging first, at WARNING, so that fairseq's
``basicConfig`` finds it configured and changes nothing: each console script and ``python -m``
entry of this project calls it before it imports fairseq, and ``recipes/quiet.py`` applies the
same filter to fairseq's own CLIs (whose logging is theirs).
"""

import logging
import warnings

__all__ = ["THIRD_PARTY_WARNINGS", "silence_third_party_warnings", "quiet_entry"]

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

LOG_FORMAT = "%(levelname)s | %(name)s | %(message)s"


def silence_third_party_warnings() -> None:
    """Ignore the warnings of :data:`THIRD_PARTY_WARNINGS` from now on in this process."""
    for category, message in THIRD_PARTY_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category)


def quiet_entry() -> None:
    """Make this process print only its own output, warnings and errors: the third-party warnings
    silenced and logging configured at WARNING before fairseq is imported (a root logger that
    already has a handler makes fairseq's ``basicConfig(level=DEBUG)`` do nothing)."""
    silence_third_party_warnings()
    logging.basicConfig(format=LOG_FORMAT, level=logging.WARNING)
