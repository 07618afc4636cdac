"""``python -m fairseq_sage.tools.analysis``: see :mod:`fairseq_sage.tools.analysis.cli`."""

from .cli import cli_main

cli_main()
