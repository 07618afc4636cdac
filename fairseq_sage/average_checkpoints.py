"""Kept so that ``python -m fairseq_sage.average_checkpoints`` goes on working: the tool is
:mod:`fairseq_sage.tools.average_checkpoints`."""

import sys

from .tools.average_checkpoints import *  # noqa: F401,F403
from .tools.average_checkpoints import cli_main

if __name__ == "__main__":
    sys.exit(cli_main())
