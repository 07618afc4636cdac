"""Extraction of named files from a (gzipped) tar archive.

Only the requested members are written, each atomically, in one streaming pass over
the archive (the WMT archives hold several language pairs; only de-en is needed).
Member names match with or without a leading ``./``.

CLI::

    python -m data_prep.archive ARCHIVE DEST_DIR MEMBER [MEMBER ...]

writes ``DEST_DIR/MEMBER`` for every MEMBER, or fails naming the missing ones.
"""

import argparse
import shutil
import sys
import tarfile
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from data_prep.cli import DataPrepError, run_main
from fairseq_sage.files import replaced_atomically


def _normalized(name: str) -> str:
    return name[2:] if name.startswith("./") else name


def extract_members(archive: Path, destination: Path, members: Sequence[str]) -> List[Path]:
    """Extract the regular files ``members`` of ``archive`` to ``destination/member``.

    Returns the written paths in the order of ``members``. Raises ``DataPrepError``
    naming the archive when it cannot be read or lacks one of the members.
    """
    wanted: Dict[str, Path] = {_normalized(member): destination / _normalized(member) for member in members}
    found = set()
    try:
        with tarfile.open(archive, mode="r|*") as tar:
            for info in tar:
                name = _normalized(info.name)
                if name not in wanted or not info.isfile():
                    continue
                source = tar.extractfile(info)
                _write_atomically(source, wanted[name])
                found.add(name)
    except (tarfile.TarError, EOFError, OSError) as error:
        raise DataPrepError(f"{archive}: cannot read archive ({error}); delete it to download it again") from error
    missing = [name for name in wanted if name not in found]
    if missing:
        raise DataPrepError(f"{archive}: no member {', '.join(missing)}; is it the right archive?")
    return [wanted[_normalized(member)] for member in members]


def _write_atomically(source, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    with replaced_atomically(target) as temporary, open(temporary, "wb") as output:
        shutil.copyfileobj(source, output, length=1 << 20)


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m data_prep.archive", description=__doc__.split("\n\n")[0])
    parser.add_argument("archive", type=Path)
    parser.add_argument("destination", type=Path)
    parser.add_argument("members", nargs="+", help="member paths inside the archive")
    args = parser.parse_args(argv)
    for path in extract_members(args.archive, args.destination, args.members):
        print(f"extracted {path}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(run_main(main))
