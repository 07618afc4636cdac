"""Whether a tool can write its output where it is told to, checked before it does any work."""

import tempfile
from pathlib import Path
from typing import Optional

__all__ = ["why_not_writable"]


def why_not_writable(folder: Path) -> Optional[str]:
    """Why files cannot be created in ``folder`` (made with its missing parents when written), or
    None where they can: the nearest folder of the way that exists must be a folder, and accept a
    new file (probed with an unnamed temporary file, which leaves nothing behind)."""
    existing = Path(folder)
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        return f"{existing} is a file, not a folder"
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as err:
        return f"cannot create files in {existing} ({err.strerror})"
    return None
