"""Kept so that ``python -m fairseq_sage.analysis`` goes on working: the tool is
:mod:`fairseq_sage.tools.analysis`."""

from .tools.entry_points import analyze

if __name__ == "__main__":
    analyze()
