"""Kept so that ``python -m fairseq_sage.average_checkpoints`` goes on working: the tool is
:mod:`fairseq_sage.tools.average_checkpoints`."""

import sys

from .tools.average_checkpoints import *  # noqa: F401,F403
from .tools.entry_points import average_checkpoints

if __name__ == "__main__":
    sys.exit(average_checkpoints())
