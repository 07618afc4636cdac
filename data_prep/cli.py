"""Error reporting shared by the ``python -m data_prep.<module>`` entry points."""

import sys
from typing import Callable, Optional, Sequence

from .textio import OUT_OF_SPACE


class DataPrepError(Exception):
    """Bad input or a failed step; the message is one line naming the file or flag and the fix."""


def run_main(main: Callable[[Optional[Sequence[str]]], None], argv: Optional[Sequence[str]] = None) -> int:
    """Run ``main(argv)`` and turn expected failures into one ``error: ...`` line on stderr.

    Returns the process exit status: 0 on success, 1 on a reported failure.
    """
    try:
        main(argv)
    except DataPrepError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except FileNotFoundError as error:
        print(f"error: {error.filename}: no such file; check the path", file=sys.stderr)
        return 1
    except OSError as error:
        fix = "free some disk space and run again" if error.errno in OUT_OF_SPACE else "check the path"
        print(f"error: {error.filename or 'output'}: {error.strerror or error}; {fix}", file=sys.stderr)
        return 1
    return 0
