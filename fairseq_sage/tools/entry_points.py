"""The tools' console scripts and ``python -m`` entries: each makes the process quiet
(:func:`fairseq_sage.quiet.quiet_entry`) before the tool imports fairseq, then runs the tool."""

from typing import Optional

from ..quiet import quiet_entry

__all__ = ["analyze", "average_checkpoints", "study"]


def analyze() -> None:
    """``fairseq-sage-analyze``, ``python -m fairseq_sage.tools.analysis``."""
    quiet_entry()
    from .analysis.cli import cli_main

    cli_main()


def average_checkpoints() -> Optional[int]:
    """``fairseq-sage-average-checkpoints`` and ``python -m fairseq_sage.tools.average_checkpoints``."""
    quiet_entry()
    from .average_checkpoints import cli_main

    return cli_main()


def study() -> int:
    """``fairseq-sage-study`` and ``python -m fairseq_sage.tools.study``."""
    quiet_entry()
    from .study.cli import main

    return main()
