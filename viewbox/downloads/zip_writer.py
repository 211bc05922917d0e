"""Write a package as a ZIP file, streaming each member into the archive.

Members are STORED: DICOM pixel data and JPEGs gain little from deflate,
and a stored archive is written at the speed of copying. ZIP64 records are
added for members and archives past the 4 GiB limits.
"""

import contextlib
import time
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO, Final

from viewbox.downloads.dicomdir import DicomdirError

# Bytes read from a stored DICOM file per copy step.
COPY_CHUNK: Final = 1 << 20
# Owner may read and write, others may read (in the ZIP's Unix attributes).
_FILE_MODE: Final = 0o100644


class SizeMismatchError(Exception):
    """A stored file's length differs from the size its caller declared."""


class ZipPackageWriter:
    """A ZIP archive being written to an open, seekable file."""

    def __init__(self, file: BinaryIO) -> None:
        self._zip = zipfile.ZipFile(
            file, "w", compression=zipfile.ZIP_STORED, allowZip64=True
        )
        self._folders: set[str] = set()
        self._date_time = time.localtime()[:6]

    def __enter__(self) -> "ZipPackageWriter":
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *exc_info: object) -> None:
        if exc_type is None:
            self.close()
            return
        # The caller discards the file after an error, so a failure to write
        # the central directory (the disk is still full) must not hide the
        # error that stopped the build.
        with contextlib.suppress(Exception):
            self.close()

    def close(self) -> None:
        """Write the central directory. Safe to call twice."""
        self._zip.close()

    def add_bytes(self, name: str, data: bytes) -> None:
        """Add a member from bytes, under a package path such as "INDEX.HTM"."""
        with self._zip.open(self._member(name, len(data)), "w") as member:
            member.write(data)

    def add_frame(self, name: str, data: bytes) -> None:
        """Add a JPEG frame of the offline viewer."""
        self.add_bytes(name, data)

    def add_file(self, name: str, size: int, open_file: Callable[[], BinaryIO]) -> None:
        """Copy a file into a member in chunks, checking its declared size.

        Raises SizeMismatchError when the file contains more or fewer bytes
        than size.
        """
        copied = 0
        with open_file() as source:
            with self._zip.open(self._member(name, size), "w") as member:
                while chunk := source.read(COPY_CHUNK):
                    copied += len(chunk)
                    if copied > size:
                        break
                    member.write(chunk)
        if copied != size:
            raise SizeMismatchError(
                f"{name} contains {'more than ' if copied > size else ''}{copied} "
                f"bytes, but {size} were declared"
            )

    def _member(self, name: str, size: int) -> zipfile.ZipInfo:
        self._add_folders(name)
        info = zipfile.ZipInfo(name, self._date_time)
        info.compress_type = zipfile.ZIP_STORED
        info.external_attr = _FILE_MODE << 16
        # A known size lets zipfile decide on ZIP64 before it writes the
        # member's local header.
        info.file_size = size
        return info

    def _add_folders(self, name: str) -> None:
        """Add a member for each folder of name not yet in the archive, which
        some extractors need to create empty or nested folders."""
        parts = name.split("/")[:-1]
        for depth in range(1, len(parts) + 1):
            folder = "/".join(parts[:depth]) + "/"
            if folder not in self._folders:
                self._zip.mkdir(folder)
                self._folders.add(folder)


def read_zip_listing(path: Path) -> tuple[dict[str, int], bytes]:
    """Return the members of a package's ZIP file (path to size), folders
    left out, and the bytes of its DICOMDIR.

    Raises DicomdirError when the archive has no DICOMDIR.
    """
    with zipfile.ZipFile(path) as archive:
        listing = {
            info.filename: info.file_size
            for info in archive.infolist()
            if not info.is_dir()
        }
        if "DICOMDIR" not in listing:
            raise DicomdirError("the ZIP file has no DICOMDIR")
        dicomdir = archive.read("DICOMDIR")
    return listing, dicomdir
