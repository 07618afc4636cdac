"""Kept so that ``python -m fairseq_sage.analysis`` goes on working: the tool is
:mod:`fairseq_sage.tools.analysis`."""

import sys

from .tools.analysis.cli import cli_main

if __name__ == "__main__":
    sys.exit(cli_main())
