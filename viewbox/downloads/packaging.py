"""Build an exam's download: a ZIP file or an ISO disc image laid out as
patient media in the manner of IHE Portable Data for Imaging (PDI).

    DICOMDIR                      Basic Directory of the DICOM files
    DICOM/S0000001/I0000001       the DICOM files, byte for byte, by series
    INDEX.HTM                     offline viewer, opened from the folder
    VIEWER/VIEWER.JS, VIEWER.CSS  its script and style sheet
    VIEWER/S0000001/F0000001.JPG  each series's frames, pre-rendered
    REPORT.PDF                    the report, only when the caller passes it
    README.TXT                    what is where, and how to open it

Names are made from positions only, never from DICOM values. Each has at
most 8 upper-case letters, digits or underscores, plus a 3-letter extension
outside DICOM/, so they are valid DICOM File IDs (PS3.10 8.2) and ISO 9660
level 1 names. Series folders follow the display order; S0000001 under
DICOM/ and under VIEWER/ is the same series.

The file is written under a temporary name beside the target, synced,
checked against the instances it should hold, and renamed into place.

    result = build_package(images, info, report_pdf, "zip", target, render_frame)
"""

import errno
import logging
import os
import tempfile
import time
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Final, Literal, Protocol

from pycdlib.pycdlibexception import PyCdlibException

from viewbox.downloads.dicomdir import (
    DicomDirectory,
    DicomdirError,
    read_header,
    referenced_file_ids,
)
from viewbox.downloads.iso_writer import IsoPackageWriter, read_iso_listing
from viewbox.downloads.offline_viewer import (
    VIEWER_FOLDER,
    ViewerSeries,
    frame_path,
    index_file,
    readme_file,
    series_folder,
    static_files,
)
from viewbox.downloads.zip_writer import (
    SizeMismatchError,
    ZipPackageWriter,
    read_zip_listing,
)

logger = logging.getLogger(__name__)

PackageFormat = Literal["zip", "iso"]

# errno values that mean the disk or the user's quota is full.
_NO_SPACE: Final = frozenset({errno.ENOSPC, errno.EDQUOT})
# Folder, file and frame numbers have 7 digits after their letter.
_MAX_NUMBER: Final = 9_999_999
_TEXT_FILES: Final = ("README.TXT", "INDEX.HTM", "DICOMDIR")
_REPORT: Final = "REPORT.PDF"
# Calls of the progress callback: about one per percent.
_PROGRESS_CALLS: Final = 100


@dataclass(frozen=True)
class PackageImage:
    """One stored DICOM instance to put in the package."""

    open_file: Callable[[], BinaryIO]  # opens the stored Part 10 file
    size: int  # bytes
    series_key: int  # any id; images with the same key form a series
    series_label: str  # e.g. "CT · Head axial", untrusted text
    instance_number: int | None
    # Frames for the offline viewer, 0 for instances without pixel data.
    number_of_frames: int


@dataclass(frozen=True)
class PackageInfo:
    """Texts for INDEX.HTM and README.TXT, all untrusted."""

    title: str  # the exam's description
    subtitle: str  # e.g. "December 1, 2026 · Towson Imaging Center"
    patient_name: str


@dataclass(frozen=True)
class PackageResult:
    """The package file written by build_package."""

    path: Path
    size: int  # bytes
    instance_count: int
    format: PackageFormat


class PackageError(Exception):
    """The package cannot be built. The message, for operators, names the
    image by its position and package path, never by patient data."""


class PackageSpaceError(PackageError):
    """The disk or the quota filled up (ENOSPC, EDQUOT) during the build."""


class _PackageWriter(Protocol):
    def add_bytes(self, name: str, data: bytes) -> None: ...

    def add_frame(self, name: str, data: bytes) -> None: ...

    def add_file(
        self, name: str, size: int, open_file: Callable[[], BinaryIO]
    ) -> None: ...


@dataclass(frozen=True)
class _PlannedFile:
    image: PackageImage
    path: str  # e.g. "DICOM/S0000001/I0000001"
    folder: str  # e.g. "S0000001"
    first_frame: int  # 1-based number of its first frame in the series


@dataclass(frozen=True)
class _Plan:
    files: list[_PlannedFile]  # series by series, in display order
    series: list[ViewerSeries]
    frame_count: int


class _Progress:
    """Pass (done, total) steps to the caller about once per percent."""

    def __init__(self, callback: Callable[[int, int], None] | None, total: int):
        self._callback = callback
        self.total = max(total, 1)
        self.done = 0
        self._reported = -1

    def reach(self, done: int) -> None:
        self.done = min(done, self.total)
        step = self.done * _PROGRESS_CALLS // self.total
        if self._callback is not None and step > self._reported:
            self._reported = step
            self._callback(self.done, self.total)

    def advance(self, steps: int = 1) -> None:
        self.reach(self.done + steps)


def build_package(
    images: Sequence[PackageImage],
    info: PackageInfo,
    report_pdf: bytes | None,
    fmt: PackageFormat,
    target: Path,
    render_frame: Callable[[PackageImage, int], bytes],
    progress: Callable[[int, int], None] | None = None,
) -> PackageResult:
    """Write the package of images to target and return what was written.

    images come in display order. Series appear in the order of their first
    image, and each series's images keep their order in the sequence.
    render_frame(image, n) returns the JPEG of frame n (0-based) of images
    with number_of_frames above 0. progress(done, total) gets steps at
    most about 100 times.

    Raises PackageError when a file is not DICOM, does not match its size,
    or the written package does not hold every image, PackageSpaceError
    when the disk fills up, and ValueError for an unknown fmt. Other errors
    of open_file and render_frame pass through, as does an OSError of the
    target's folder. On every error target is left unchanged, and the
    temporary file is removed.
    """
    if fmt not in ("zip", "iso"):
        raise ValueError(f"fmt must be 'zip' or 'iso', not {fmt!r}")
    if not images:
        raise PackageError("The package would hold no DICOM files")
    target = Path(target)
    started = time.monotonic()
    plan = _plan_layout(images)
    # Steps: read each header, copy each file, render each frame, check.
    tracker = _Progress(progress, 2 * len(plan.files) + plan.frame_count + 1)

    temporary: Path | None = None
    try:
        descriptor, name = tempfile.mkstemp(
            dir=target.parent, prefix=f".{target.name}.", suffix=".partial"
        )
        temporary = Path(name)
        with open(descriptor, "w+b") as file:
            dicomdir = _encode_dicomdir(plan, tracker)
            contents = _Contents(plan, info, report_pdf, dicomdir, render_frame)
            if fmt == "zip":
                _write_zip(file, contents, tracker)
            else:
                _write_iso(file, target.parent, contents, tracker)
            file.flush()
            os.fsync(file.fileno())
        _check_package(temporary, fmt, plan, report_pdf is not None)
        os.replace(temporary, target)
    except BaseException as error:
        if temporary is not None:
            temporary.unlink(missing_ok=True)
        if isinstance(error, OSError) and error.errno in _NO_SPACE:
            raise PackageSpaceError(
                f"No space is left: the {fmt} package could not be written "
                f"in {target.parent} ({os.strerror(error.errno)})"
            ) from error
        raise
    _sync_folder(target.parent)
    tracker.reach(tracker.total)

    size = target.stat().st_size
    logger.info(
        "Built a package (%s) of %d instances and %d frames, %d bytes, in %.1f s",
        fmt,
        len(plan.files),
        plan.frame_count,
        size,
        time.monotonic() - started,
    )
    return PackageResult(target, size, len(plan.files), fmt)


def _plan_layout(images: Sequence[PackageImage]) -> _Plan:
    """Name every file: series in order of first appearance, then images."""
    groups: dict[int, list[PackageImage]] = {}
    for image in images:
        if image.number_of_frames < 0:
            raise PackageError(
                f"number_of_frames is {image.number_of_frames}; expected 0 or more"
            )
        groups.setdefault(image.series_key, []).append(image)
    if len(groups) > _MAX_NUMBER:
        raise PackageError(f"The package would hold {len(groups)} series")

    files: list[_PlannedFile] = []
    series: list[ViewerSeries] = []
    for series_number, members in enumerate(groups.values(), start=1):
        folder = series_folder(series_number)
        next_frame = 1
        for position, image in enumerate(members, start=1):
            path = f"DICOM/{folder}/I{position:07d}"
            files.append(_PlannedFile(image, path, folder, next_frame))
            next_frame += image.number_of_frames
        frame_count = next_frame - 1
        if max(len(members), frame_count) > _MAX_NUMBER:
            raise PackageError(f"Series {folder} has too many files or frames")
        label = members[0].series_label
        series.append(ViewerSeries(series_number, label, len(members), frame_count))
    return _Plan(files, series, sum(item.frame_count for item in series))


def _encode_dicomdir(plan: _Plan, tracker: _Progress) -> bytes:
    directory = DicomDirectory()
    for index, planned in enumerate(plan.files, start=1):
        try:
            with planned.image.open_file() as file:
                directory.add(planned.path.split("/"), read_header(file))
        except DicomdirError as error:
            raise PackageError(
                f"Image {index} ({planned.path}) cannot be packaged: {error}"
            ) from error
        tracker.advance()
    try:
        return directory.encode()
    except DicomdirError as error:
        raise PackageError(f"The DICOMDIR cannot be written: {error}") from error


@dataclass(frozen=True)
class _Contents:
    plan: _Plan
    info: PackageInfo
    report_pdf: bytes | None
    dicomdir: bytes
    render_frame: Callable[[PackageImage, int], bytes]


def _add_contents(
    writer: _PackageWriter,
    contents: _Contents,
    tracker: _Progress,
    after_file: Callable[[], None],
) -> None:
    plan, info = contents.plan, contents.info
    texts = (
        info.title,
        info.subtitle,
        info.patient_name,
        plan.series,
        contents.report_pdf is not None,
    )
    writer.add_bytes("README.TXT", readme_file(*texts))
    writer.add_bytes("INDEX.HTM", index_file(*texts))
    writer.add_bytes("DICOMDIR", contents.dicomdir)
    if contents.report_pdf is not None:
        writer.add_bytes(_REPORT, contents.report_pdf)
    for name, data in static_files():
        writer.add_bytes(name, data)

    for planned in plan.files:
        image = planned.image
        try:
            writer.add_file(planned.path, image.size, image.open_file)
        except SizeMismatchError as error:
            raise PackageError(f"A stored file changed size: {error}") from error
        after_file()
        for frame in range(image.number_of_frames):
            jpeg = contents.render_frame(image, frame)
            name = frame_path(planned.folder, planned.first_frame + frame)
            writer.add_frame(name, jpeg)
            tracker.advance()


def _write_zip(file: BinaryIO, contents: _Contents, tracker: _Progress) -> None:
    with ZipPackageWriter(file) as writer:
        _add_contents(writer, contents, tracker, after_file=tracker.advance)


def _write_iso(
    file: BinaryIO, spool_folder: Path, contents: _Contents, tracker: _Progress
) -> None:
    with IsoPackageWriter(spool_folder) as writer:
        try:
            # The files are only listed here, and pycdlib copies them in
            # write_to(), so the copy steps are counted there.
            _add_contents(writer, contents, tracker, after_file=lambda: None)
            start, steps = tracker.done, len(contents.plan.files)

            def on_bytes(done: int, total: int) -> None:
                tracker.reach(start + steps * done // max(total, 1))

            writer.write_to(file, on_bytes)
        except SizeMismatchError as error:
            raise PackageError(f"A stored file changed size: {error}") from error
        except PyCdlibException as error:
            # For example a file of 4 GiB or more, which ISO 9660 level 1
            # cannot hold.
            raise PackageError(f"pycdlib could not write the image: {error}") from error


def _check_package(
    path: Path, fmt: PackageFormat, plan: _Plan, has_report: bool
) -> None:
    """Read the written package back and compare it with the plan.

    Raises PackageError unless the DICOM/ folder contains exactly the planned
    files with their sizes, the DICOMDIR's offsets reach one record for each
    of them, and the viewer, the texts and the report are present as
    planned.
    """
    try:
        listing, dicomdir = (
            read_zip_listing(path) if fmt == "zip" else read_iso_listing(path)
        )
        referenced = ["/".join(file_id) for file_id in referenced_file_ids(dicomdir)]
    except (DicomdirError, PyCdlibException, zipfile.BadZipFile) as error:
        raise PackageError(f"The written package is invalid: {error}") from error

    expected = {planned.path: planned.image.size for planned in plan.files}
    dicom_files = {
        name: size for name, size in listing.items() if name.startswith("DICOM/")
    }
    if len(dicom_files) != len(expected) or len(referenced) != len(expected):
        raise PackageError(
            f"The written package contains {len(dicom_files)} DICOM files and "
            f"{len(referenced)} DICOMDIR records, but {len(expected)} instances "
            "were requested"
        )
    if dicom_files != expected:
        raise PackageError(
            "The written package's DICOM files differ in name or size from "
            "the instances requested"
        )
    if sorted(referenced) != sorted(expected):
        raise PackageError(
            "The DICOMDIR records reference other files than the DICOM files "
            "in the package"
        )

    frames = [name for name in listing if name.startswith(f"{VIEWER_FOLDER}/S")]
    if len(frames) != plan.frame_count:
        raise PackageError(
            f"The written package contains {len(frames)} viewer frames, but "
            f"{plan.frame_count} were rendered"
        )
    required = {*_TEXT_FILES, *(name for name, _ in static_files())}
    if has_report:
        required.add(_REPORT)
    missing = sorted(required - listing.keys())
    if missing:
        raise PackageError(f"The written package lacks {', '.join(missing)}")
    if not has_report and _REPORT in listing:
        raise PackageError(
            f"The written package contains a {_REPORT} that was not requested"
        )


def _sync_folder(folder: Path) -> None:
    """Make the rename durable: fsync the folder that contains the entry."""
    descriptor = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
