"""The tools' console scripts and ``python -m`` entries: each makes the process quiet
(:func:`fairseq_sage.quiet.quiet_entry`) before the tool imports fairseq, then runs the tool, whose
reader may stop reading (``fairseq-sage-study plan CONFIG | head``) without a traceback."""

import functools
import os
import select
import sys
from typing import Callable, Optional, TypeVar

from ..quiet import quiet_entry

__all__ = ["analyze", "average_checkpoints", "study"]

Result = TypeVar("Result")


def reader_may_close(entry: Callable[[], Result]) -> Callable[[], Result]:
    """``entry`` exits with status 1 and no traceback when the reader of its stdout closes the pipe: that
    ``BrokenPipeError`` is the reader's choice, not the tool's error, and stdout pointed at os.devnull keeps
    the interpreter's last flush from raising it again (Python's documentation, "Note on SIGPIPE"). A broken
    pipe of anything else (stdout still read) is raised as it is."""

    @functools.wraps(entry)
    def tolerant() -> Result:
        try:
            result = entry()
            sys.stdout.flush()
            return result
        except BrokenPipeError:
            if not reader_gone(sys.stdout.fileno()):
                raise
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            sys.exit(1)

    return tolerant


def reader_gone(fd: int) -> bool:
    """Whether ``fd`` is the write end of a pipe whose reading end is closed (poll reports POLLERR)."""
    poller = select.poll()
    poller.register(fd, select.POLLOUT)
    return any(events & select.POLLERR for _, events in poller.poll(0))


@reader_may_close
def analyze() -> None:
    """``fairseq-sage-analyze``, ``python -m fairseq_sage.tools.analysis``."""
    quiet_entry()
    from .analysis.cli import cli_main

    cli_main()


@reader_may_close
def average_checkpoints() -> Optional[int]:
    """``fairseq-sage-average-checkpoints`` and ``python -m fairseq_sage.tools.average_checkpoints``."""
    quiet_entry()
    from .average_checkpoints import cli_main

    return cli_main()


@reader_may_close
def study() -> int:
    """``fairseq-sage-study`` and ``python -m fairseq_sage.tools.study``."""
    quiet_entry()
    from .study.cli import main

    return main()
