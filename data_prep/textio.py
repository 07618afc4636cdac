"""Line-exact text input and atomic text output shared by the data_prep modules.

Lines end at ``"\\n"`` only, as in Perl and therefore in the Moses scripts: a carriage
return or a Unicode line separator inside a line stays part of that line. Bytes that
are not valid UTF-8 survive a round trip unchanged (``surrogateescape``), so a stray
byte in a web-crawled corpus neither stops a run nor shifts its line alignment.
"""

import contextlib
import errno
import io
import multiprocessing
import sys
from pathlib import Path
from typing import Callable, Iterable, Iterator, TextIO, Union

from fairseq_sage.files import replaced_atomically

PathLike = Union[str, Path]
STDIO = "-"
ENCODING = "utf-8"
ERRORS = "surrogateescape"

#: Perl's ``\s`` on a character string (the Unicode White_Space property). Python's own
#: ``\s`` also matches U+001C..U+001F, which Perl does not count as white space.
PERL_SPACE = "\t\n\x0b\x0c\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"

#: Perl's ``\s`` on a byte string, and ``\s`` of GNU sed/grep: ASCII white space.
ASCII_SPACE = "\t\n\x0b\x0c\r "


def open_lines(path: PathLike) -> TextIO:
    """Open ``path`` (``-`` = standard input) for reading UTF-8 lines that end at ``\\n``."""
    if str(path) == STDIO:
        return io.TextIOWrapper(sys.stdin.buffer, encoding=ENCODING, errors=ERRORS, newline="\n")
    return open(path, encoding=ENCODING, errors=ERRORS, newline="\n")


def read_lines(path: PathLike) -> Iterator[str]:
    """Yield the lines of ``path`` without their final ``\\n``."""
    with open_lines(path) as lines:
        for line in lines:
            yield line[:-1] if line.endswith("\n") else line


def count_lines(path: PathLike) -> int:
    """Number of lines of ``path``, counting a last line that lacks ``\\n``."""
    return sum(1 for _ in read_lines(path))


OUT_OF_SPACE = (errno.ENOSPC, errno.EFBIG, errno.EDQUOT)
"""errno values of a write that failed for lack of room (disk full, file-size limit, quota)."""


@contextlib.contextmanager
def atomic_output(path: PathLike) -> Iterator[TextIO]:
    """Text file handle whose content replaces ``path`` only when the block succeeds.

    Writes to a temporary file in the same folder and renames it over ``path`` at the
    end (:func:`fairseq_sage.files.replaced_atomically`: the file gets a plain ``open``'s
    permissions), so a reader never sees a half-written file; on error the temporary file
    is removed and ``path`` is left as it was. ``-`` writes to standard output directly.
    """
    if str(path) == STDIO:
        stdout = io.TextIOWrapper(sys.stdout.buffer, encoding=ENCODING, errors=ERRORS, newline="\n")
        try:
            yield stdout
        finally:
            stdout.flush()
            stdout.detach()
        return
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        with replaced_atomically(target) as temporary:
            with open(temporary, "w", encoding=ENCODING, errors=ERRORS, newline="\n") as output:
                yield output
    except OSError as error:
        if error.errno in OUT_OF_SPACE and error.filename is None:
            error.filename = str(target)  # a failed write() does not say which file it was writing
        raise


def write_lines(path: PathLike, lines: Iterable[str]) -> int:
    """Write ``lines`` (without ``\\n``) to ``path`` atomically; return how many were written."""
    count = 0
    with atomic_output(path) as output:
        for line in lines:
            output.write(line + "\n")
            count += 1
    return count


def map_lines(function: Callable[[str], str], lines: Iterable[str], workers: int = 1) -> Iterator[str]:
    """Yield ``function(line)`` for each line, in input order, using ``workers`` processes.

    ``function`` must be picklable (a module-level function or a ``functools.partial``
    of one) when ``workers > 1``.
    """
    if workers <= 1:
        yield from map(function, lines)
        return
    with multiprocessing.Pool(workers) as pool:
        yield from pool.imap(function, lines, chunksize=2000)


def transform_file(
    function: Callable[[str], str], input_path: PathLike, output_path: PathLike, workers: int = 1
) -> int:
    """Write ``function(line)`` for every line of ``input_path`` to ``output_path``; return the line count."""
    return write_lines(output_path, map_lines(function, read_lines(input_path), workers))
