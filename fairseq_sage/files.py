"""Files replaced atomically, with the permissions a plain ``open(path, "w")`` would give them.

A new file is written to a temporary file beside its destination, ``.NAME.XXXXXXXX.tmp``, and
renamed over it once complete: a reader sees the old file or the new one, never half of one, and a
failed write leaves the old file as it was. The temporary file is created with mode 0666, from
which the kernel removes the umask, as for ``open(path, "w")`` (``tempfile.mkstemp`` would make it
0600 whatever the umask); where it replaces an existing file it takes that file's mode.
Everything the package, its tools, the recipes, the studies and ``data_prep`` write atomically goes
through :func:`replaced_atomically` (or :func:`replace`, for a file already complete elsewhere).
Importing this module imports nothing outside the standard library.
"""

import contextlib
import os
import secrets
import stat
from pathlib import Path
from typing import Iterator, Union

__all__ = ["replace", "replaced_atomically", "write_atomic"]

PathLike = Union[str, os.PathLike]

CREATE_ATTEMPTS = 100
"""Random names tried for the temporary file before giving up (each taken one means another writer)."""


def replace(source: PathLike, target: PathLike) -> None:
    """Rename the complete file ``source`` over ``target``; the result keeps ``target``'s mode, if
    ``target`` exists, and else the mode ``source`` was created with."""
    try:
        mode = stat.S_IMODE(os.stat(target).st_mode)
    except FileNotFoundError:
        pass
    else:
        os.chmod(source, mode)
    os.replace(source, target)


def _create_beside(path: Path) -> Path:
    """Create an empty, new ``.NAME.XXXXXXXX.tmp`` in ``path``'s folder, mode 0666 less the umask."""
    for _ in range(CREATE_ATTEMPTS):
        candidate = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
        try:
            os.close(os.open(candidate, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666))
        except FileExistsError:
            continue
        return candidate
    raise FileExistsError(f"{path}: no free temporary name beside it after {CREATE_ATTEMPTS} attempts")


@contextlib.contextmanager
def replaced_atomically(path: PathLike) -> Iterator[Path]:
    """Yield the path of a new, empty temporary file beside ``path``; when the block ends it is
    renamed over ``path`` (:func:`replace`), and when the block raises it is deleted.

    Write to the temporary file, and close it, inside the block.
    """
    tmp_path = _create_beside(Path(os.path.abspath(path)))
    try:
        yield tmp_path
        replace(tmp_path, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_path)
        raise


def write_atomic(path: PathLike, data: Union[bytes, str]) -> None:
    """Replace ``path`` atomically with ``data`` (a ``str`` is written as UTF-8)."""
    with replaced_atomically(path) as tmp_path:
        tmp_path.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)
