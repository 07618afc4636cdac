"""``python -m fairseq_sage.tools.study``: see :mod:`fairseq_sage.tools.study.cli`."""

import sys

from ..entry_points import study

sys.exit(study())
