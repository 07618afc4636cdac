"""Download of one file, resumable and verified.

``fetch(url, dest, sha256=None, override=None)``:

- ``override`` (an http(s) URL, a ``file://`` URL or a plain path), when given,
  replaces ``url`` as the source;
- a finished ``dest`` is not fetched again (when ``sha256`` is given, only if it
  matches; a mismatching ``dest`` is deleted and fetched again);
- an http(s) download goes to ``dest.part`` and resumes an interrupted one with an
  HTTP ``Range`` request; the finished file is renamed to ``dest``;
- a download whose sha256 does not match is deleted and fetched once more from
  scratch; a second mismatch raises ``DataPrepError`` with a one-line message.

CLI::

    python -m data_prep.download URL DEST [--sha256 HEX] [--override URL_OR_PATH]

An empty ``--sha256``/``--override`` value counts as not given, so a recipe can pass
an unset environment variable straight through.
"""

import argparse
import hashlib
import http.client
import re
import shutil
import sys
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Optional, Sequence

from data_prep.cli import DataPrepError, run_main
from fairseq_sage.files import replace

CHUNK_BYTES = 1 << 20
TIMEOUT_SECONDS = 60


def sha256_of(path: Path) -> str:
    """Hex sha256 digest of the file at ``path``."""
    digest = hashlib.sha256()
    with open(path, "rb") as data:
        for chunk in iter(lambda: data.read(CHUNK_BYTES), b""):
            digest.update(chunk)
    return digest.hexdigest()


def fetch(url: str, dest: Path, sha256: Optional[str] = None, override: Optional[str] = None) -> Path:
    """Make ``dest`` a complete (and, given ``sha256``, verified) copy of ``override`` or ``url``; return ``dest``."""
    dest = Path(dest)
    source = override or url
    expected = sha256.lower() if sha256 else None
    if expected is not None and not re.fullmatch("[0-9a-f]{64}", expected):
        raise DataPrepError(f"sha256 {sha256!r}: expected 64 hexadecimal digits")
    if dest.is_file():
        if expected is None:
            _log(f"{dest}: already downloaded, skipping")
            return dest
        actual = sha256_of(dest)
        if actual == expected:
            _log(f"{dest}: already downloaded, sha256 verified, skipping")
            return dest
        _log(f"{dest}: sha256 mismatch (expected {expected}, got {actual}); deleting it and fetching again")
        dest.unlink()
    dest.parent.mkdir(parents=True, exist_ok=True)
    partial = dest.with_name(dest.name + ".part")
    _copy_source(source, partial)
    if expected is not None:
        actual = sha256_of(partial)
        if actual != expected:
            _log(f"{source}: sha256 mismatch (expected {expected}, got {actual}); fetching it once more")
            partial.unlink()
            _copy_source(source, partial)
            actual = sha256_of(partial)
            if actual != expected:
                partial.unlink()
                raise DataPrepError(
                    f"{source}: sha256 is {actual}, expected {expected} twice in a row; "
                    "check the checksum or use another copy of the file"
                )
    replace(partial, dest)
    _log(f"{dest}: downloaded from {source}")
    return dest


def _copy_source(source: str, partial: Path) -> None:
    """Bring the whole of ``source`` into ``partial`` (resuming an http(s) download already there)."""
    scheme = urllib.parse.urlsplit(source).scheme.lower()
    if scheme in ("http", "https"):
        _download(source, partial)
        return
    path = Path(urllib.request.url2pathname(urllib.parse.urlsplit(source).path)) if scheme == "file" else Path(source)
    if not path.is_file():
        raise DataPrepError(f"{source}: no such file; give an existing path, a file:// URL or an http(s) URL")
    shutil.copyfile(path, partial)


def _download(url: str, partial: Path) -> None:
    """Download ``url`` into ``partial``, continuing from its current size when the server allows it."""
    offset = partial.stat().st_size if partial.is_file() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={offset}-"} if offset else {})
    try:
        response = urllib.request.urlopen(request, timeout=TIMEOUT_SECONDS)
    except urllib.error.HTTPError as error:
        if error.code == 416 and offset:
            _log(f"{url}: server refused to resume at byte {offset}; downloading from the start")
            partial.unlink()
            _download(url, partial)
            return
        raise DataPrepError(f"{url}: HTTP {error.code} {error.reason}; check the address") from error
    except (urllib.error.URLError, OSError, http.client.HTTPException) as error:
        raise DataPrepError(f"{url}: cannot connect ({error}); check the address and the network") from error
    with response:
        resumed = bool(offset) and response.status == 206 and _range_start(response) == offset
        if offset:
            _log(f"{url}: resuming at byte {offset}" if resumed else f"{url}: cannot resume, downloading from the start")
        try:
            with open(partial, "ab" if resumed else "wb") as output:
                shutil.copyfileobj(response, output, length=CHUNK_BYTES)
        except (OSError, http.client.HTTPException) as error:
            raise DataPrepError(f"{url}: download interrupted ({error!r}); run again to resume") from error
        expected = _expected_size(response, offset if resumed else 0)
        received = partial.stat().st_size
        if expected is not None and received < expected:
            # http.client ends a body that stops short of its Content-Length without an error
            raise DataPrepError(
                f"{url}: download interrupted after {received} of {expected} bytes; run again to resume"
            )


def _expected_size(response, start: int) -> Optional[int]:
    """Size the whole file will have once ``response``, which begins at byte ``start``, is written.

    ``None`` when the server sent no ``Content-Length`` (a chunked response).
    """
    length = response.headers.get("Content-Length", "").strip()
    return start + int(length) if length.isdigit() else None


def _range_start(response) -> Optional[int]:
    """First byte position of a ``Content-Range: bytes START-END/TOTAL`` response header."""
    content_range = response.headers.get("Content-Range", "")
    unit, _, positions = content_range.partition(" ")
    start = positions.split("-", 1)[0]
    return int(start) if unit == "bytes" and start.isdigit() else None


def _log(message: str) -> None:
    print(f"download: {message}", file=sys.stderr)


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m data_prep.download", description=__doc__.split("\n\n")[0])
    parser.add_argument("url", help="address of the file")
    parser.add_argument("dest", type=Path, help="where to store it")
    parser.add_argument("--sha256", default=None, help="expected hex sha256 of the file")
    parser.add_argument("--override", default=None, help="http(s) URL, file:// URL or path to use instead of URL")
    args = parser.parse_args(argv)
    fetch(args.url, args.dest, sha256=args.sha256 or None, override=args.override or None)


if __name__ == "__main__":
    sys.exit(run_main(main))
