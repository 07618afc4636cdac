"""``python -m fairseq_sage.tools.analysis``: see :mod:`fairseq_sage.tools.analysis.cli`."""

from ..entry_points import analyze

analyze()
