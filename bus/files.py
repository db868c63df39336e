"""Files a person or an agency's system names to docbus: regular files only, read bounded.

Why: a path typed on the command line or written in a pickup header may be a folder, a
device (``/dev/zero``) or a pipe, whose "size" says nothing and whose reading may never end;
and a file read whole into memory must be refused before it is read when it is over the
bound, not after.
"""

from __future__ import annotations

from pathlib import Path

from bus.errors import NotFound, Refused


def regular_file(path: Path, what: str = "") -> None:
    """Refuse a path that is not a file to read: missing (:class:`NotFound`), or a folder, a
    device or a pipe (``not-a-file``).  ``what`` begins the message ("attachment ")."""
    if not path.exists():
        raise NotFound(f"{what}{path} does not exist")
    if not path.is_file():
        raise Refused(f"{what}{path} is not a regular file (a folder, a device or a pipe)", reason="not-a-file")


def read_bounded(path: Path, limit: int, advice: str = "") -> bytes:
    """A regular file's bytes, refused (``too-large``) before reading when over ``limit``;
    ``advice`` ends the refusal's message (what to do instead)."""
    regular_file(path)
    if path.stat().st_size > limit:
        raise Refused(f"{path.name} is over {limit // 2**20} MiB{advice}", reason="too-large")
    with path.open("rb") as fh:
        return fh.read(limit + 1)  # a file that grew since: still no more than the bound (and one byte)
