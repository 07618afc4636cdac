"""``python -m fairseq_sage.analysis``: see :mod:`fairseq_sage.analysis.cli`."""

from .cli import cli_main

cli_main()
