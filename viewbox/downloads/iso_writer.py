"""Write a package as an ISO 9660 disc image with pycdlib.

Names are ISO 9660 interchange level 1 (8.3, upper case), which the
package's names already are, with the same names in Joliet and Rock Ridge
records. pycdlib copies every file's data when it writes the image, so
files are added as file objects that open the stored DICOM file only then,
one at a time. JPEG frames are appended to one unnamed spool file beside
the image, because the callers produce them as bytes.
"""

import io
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO, Final, cast

import pycdlib

from viewbox.downloads.dicomdir import DicomdirError
from viewbox.downloads.zip_writer import COPY_CHUNK, SizeMismatchError

VOLUME_ID: Final = "VIEWBOX"
# Read-only files and folders in the Rock Ridge records, as on a pressed disc.
_FILE_MODE: Final = 0o100444
_FOLDER_MODE: Final = 0o040555


class _StoredFile(io.RawIOBase):
    """A stored file that opens on its first read and closes at its end.

    pycdlib keeps every added file object until it writes the image, and
    an exam has more files than a process may keep open.
    """

    def __init__(self, name: str, size: int, open_file: Callable[[], BinaryIO]):
        self._name = name
        self._size = size
        self._open_file = open_file
        self._source: BinaryIO | None = None
        self._position = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        if whence != os.SEEK_SET or offset != 0:
            raise io.UnsupportedOperation("a stored file is only read from its start")
        self.close_source()
        self._position = 0
        return 0

    def tell(self) -> int:
        return self._position

    def read(self, size: int | None = -1) -> bytes:
        length = self._size - self._position
        if size is not None and size >= 0:
            length = min(size, length)
        if length <= 0:
            return b""
        if self._source is None:
            self._source = self._open_file()
        data = _read_exactly(self._source, length)
        if len(data) < length:
            raise SizeMismatchError(
                f"{self._name} contains {self._position + len(data)} bytes, "
                f"but {self._size} were declared"
            )
        self._position += len(data)
        if self._position == self._size:
            extra = self._source.read(1)
            self.close_source()
            if extra:
                raise SizeMismatchError(
                    f"{self._name} contains more than the {self._size} bytes declared"
                )
        return data

    def readinto(self, buffer: "memoryview | bytearray") -> int:  # type: ignore[override]
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def close_source(self) -> None:
        if self._source is not None:
            source, self._source = self._source, None
            source.close()


def _read_exactly(source: BinaryIO, length: int) -> bytes:
    """Read length bytes, or fewer only at the end of the file."""
    data = source.read(length)
    while len(data) < length:
        more = source.read(length - len(data))
        if not more:
            break
        data += more
    return data


class _SpoolWindow(io.RawIOBase):
    """A part of the spool file, read as a file of its own."""

    def __init__(self, spool: BinaryIO, offset: int, size: int):
        self._spool = spool
        self._offset = offset
        self._size = size
        self._position = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        if whence != os.SEEK_SET:
            raise io.UnsupportedOperation("only absolute positions are supported")
        self._position = min(max(offset, 0), self._size)
        return self._position

    def tell(self) -> int:
        return self._position

    def read(self, size: int | None = -1) -> bytes:
        length = self._size - self._position
        if size is not None and size >= 0:
            length = min(size, length)
        if length <= 0:
            return b""
        self._spool.seek(self._offset + self._position)
        data = self._spool.read(length)
        self._position += len(data)
        return data

    def readinto(self, buffer: "memoryview | bytearray") -> int:  # type: ignore[override]
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)


class IsoPackageWriter:
    """An ISO image being assembled, which write_to() writes out."""

    def __init__(self, spool_folder: Path) -> None:
        self._iso = pycdlib.PyCdlib()
        self._iso.new(
            interchange_level=1,
            vol_ident=VOLUME_ID,
            joliet=3,
            rock_ridge="1.09",
        )
        self._folders: set[str] = set()
        self._stored: list[_StoredFile] = []
        self._small: list[BinaryIO] = []
        # An unnamed file on the package's disk, which disappears when it is
        # closed or the process ends.
        self._spool = tempfile.TemporaryFile(dir=spool_folder)

    def __enter__(self) -> "IsoPackageWriter":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Close every file this writer opened. Safe to call twice."""
        for stored in self._stored:
            stored.close_source()
        self._spool.close()
        self._iso.close()

    def add_bytes(self, name: str, data: bytes) -> None:
        """Add a small file, such as INDEX.HTM, held in memory."""
        file = io.BytesIO(data)
        self._small.append(file)
        self._add(file, len(data), name)

    def add_frame(self, name: str, data: bytes) -> None:
        """Add a JPEG frame, which waits in the spool file until write_to()."""
        offset = self._spool.seek(0, os.SEEK_END)
        self._spool.write(data)
        self._add(_SpoolWindow(self._spool, offset, len(data)), len(data), name)

    def add_file(self, name: str, size: int, open_file: Callable[[], BinaryIO]) -> None:
        """Add a stored file, which is read when the image is written.

        Writing raises SizeMismatchError when the file contains more or fewer
        bytes than size.
        """
        stored = _StoredFile(name, size, open_file)
        self._stored.append(stored)
        self._add(stored, size, name)

    def write_to(
        self, file: BinaryIO, progress: Callable[[int, int], None] | None = None
    ) -> None:
        """Write the image, passing (bytes done, bytes in all) to progress."""
        self._spool.flush()

        def report(done: int, total: int, opaque: object) -> None:
            if progress is not None:
                progress(done, total)

        self._iso.write_fp(file, blocksize=COPY_CHUNK, progress_cb=report)

    def _add(self, file: BinaryIO | io.RawIOBase, size: int, name: str) -> None:
        parts = name.split("/")
        for depth in range(1, len(parts)):
            folder = "/".join(parts[:depth])
            if folder not in self._folders:
                self._iso.add_directory(
                    iso_path=f"/{folder}",
                    rr_name=parts[depth - 1],
                    joliet_path=f"/{folder}",
                    file_mode=_FOLDER_MODE,
                )
                self._folders.add(folder)
        # ISO 9660 names carry a version, and a dot even without extension.
        iso_name = name if "." in parts[-1] else f"{name}."
        self._iso.add_fp(
            cast(BinaryIO, file),
            size,
            iso_path=f"/{iso_name};1",
            rr_name=parts[-1],
            joliet_path=f"/{name}",
            file_mode=_FILE_MODE,
        )


def read_iso_listing(path: Path) -> tuple[dict[str, int], bytes]:
    """Return the files of a package's ISO image by Joliet path (path to
    size) and the bytes of its DICOMDIR.

    Raises DicomdirError when the image has no DICOMDIR.
    """
    iso = pycdlib.PyCdlib()
    iso.open(str(path))
    try:
        listing = dict(_joliet_files(iso))
        if "DICOMDIR" not in listing:
            raise DicomdirError("the ISO image has no DICOMDIR")
        buffer = io.BytesIO()
        iso.get_file_from_iso_fp(buffer, joliet_path="/DICOMDIR")
    finally:
        iso.close()
    return listing, buffer.getvalue()


def _joliet_files(iso: pycdlib.PyCdlib) -> Iterator[tuple[str, int]]:
    for folder, _, names in iso.walk(joliet_path="/"):
        for name in names:
            path = f"{folder.rstrip('/')}/{name}"
            yield path.lstrip("/"), iso.get_record(joliet_path=path).get_data_length()
