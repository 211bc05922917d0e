"""Importing DICOM files: stored byte for byte, matched to exams.

A file is matched to an exam by its Accession Number (0008,0050) and Patient
ID (0010,0020), the medical record number of the RIS. Files whose exam is
not known yet are kept in an unmatched study that is attached when the
order arrives. Files that are not usable DICOM go to the quarantine.
"""

import errno
import functools
import io
import logging
import os
import re
import shutil
import struct
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path
from typing import Any, BinaryIO, Final, cast

import pydicom
from django.conf import settings
from django.core.files.storage import default_storage
from django.db import DatabaseError, connection, transaction
from django.db.models import Field
from pydicom.datadict import dictionary_description, dictionary_has_tag
from pydicom.dataelem import RawDataElement
from pydicom.dataset import FileDataset
from pydicom.errors import InvalidDicomError

from viewbox.audit.actions import record_event
from viewbox.records.models import Exam, Instance, Series, Study
from viewbox.viewer.tasks import render_previews

logger = logging.getLogger(__name__)

# PS3.5 section 9.1: components of digits separated by dots, 64 characters.
_UID = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")
_PIXEL_DATA = 0x7FE00010
_TRAILING_PADDING = 0xFFFCFFFC
_NUMBER_OF_FRAMES = 0x00280008
_WHOLE_NUMBER = re.compile(r"\+?[0-9]{1,10}")
_INTEGER_MIN: Final = -(2**31)
_INTEGER_MAX: Final = 2**31 - 1
# Stored files hold health information: only the service's user reads them,
# whatever the umask of the process that imports them.
_STORED_FILE_MODE: Final = 0o600
_COPY_BUFFER_BYTES: Final = 1024 * 1024
# Image Storage SOP Classes (PS3.4 Annex B.5) that the receiver accepts. An
# instance of one of them without Pixel Data is a file cut short.
IMAGE_STORAGE_SOP_CLASSES: Final = (
    "1.2.840.10008.5.1.4.1.1.2",  # CT Image
    "1.2.840.10008.5.1.4.1.1.2.1",  # Enhanced CT Image
    "1.2.840.10008.5.1.4.1.1.2.2",  # Legacy Converted Enhanced CT Image
    "1.2.840.10008.5.1.4.1.1.4",  # MR Image
    "1.2.840.10008.5.1.4.1.1.4.1",  # Enhanced MR Image
    "1.2.840.10008.5.1.4.1.1.4.3",  # Enhanced MR Color Image
    "1.2.840.10008.5.1.4.1.1.4.4",  # Legacy Converted Enhanced MR Image
    "1.2.840.10008.5.1.4.1.1.1",  # Computed Radiography Image
    "1.2.840.10008.5.1.4.1.1.1.1",  # Digital X-Ray Image, For Presentation
    "1.2.840.10008.5.1.4.1.1.1.1.1",  # Digital X-Ray Image, For Processing
    "1.2.840.10008.5.1.4.1.1.1.2",  # Digital Mammography, For Presentation
    "1.2.840.10008.5.1.4.1.1.1.2.1",  # Digital Mammography, For Processing
    "1.2.840.10008.5.1.4.1.1.13.1.3",  # Breast Tomosynthesis Image
    "1.2.840.10008.5.1.4.1.1.13.1.4",  # Breast Projection X-Ray, Presentation
    "1.2.840.10008.5.1.4.1.1.13.1.5",  # Breast Projection X-Ray, Processing
    "1.2.840.10008.5.1.4.1.1.6.1",  # Ultrasound Image
    "1.2.840.10008.5.1.4.1.1.3.1",  # Ultrasound Multi-frame Image
    "1.2.840.10008.5.1.4.1.1.6.2",  # Enhanced US Volume
    "1.2.840.10008.5.1.4.1.1.20",  # Nuclear Medicine Image
    "1.2.840.10008.5.1.4.1.1.128",  # Positron Emission Tomography Image
    "1.2.840.10008.5.1.4.1.1.130",  # Enhanced PET Image
    "1.2.840.10008.5.1.4.1.1.128.1",  # Legacy Converted Enhanced PET Image
    "1.2.840.10008.5.1.4.1.1.12.1",  # X-Ray Angiographic Image
    "1.2.840.10008.5.1.4.1.1.12.1.1",  # Enhanced XA Image
    "1.2.840.10008.5.1.4.1.1.13.1.1",  # X-Ray 3D Angiographic Image
    "1.2.840.10008.5.1.4.1.1.12.2",  # X-Ray Radiofluoroscopic Image
    "1.2.840.10008.5.1.4.1.1.12.2.1",  # Enhanced XRF Image
    "1.2.840.10008.5.1.4.1.1.7",  # Secondary Capture Image
    "1.2.840.10008.5.1.4.1.1.7.1",  # Multi-frame Single Bit SC Image
    "1.2.840.10008.5.1.4.1.1.7.2",  # Multi-frame Grayscale Byte SC Image
    "1.2.840.10008.5.1.4.1.1.7.3",  # Multi-frame Grayscale Word SC Image
    "1.2.840.10008.5.1.4.1.1.7.4",  # Multi-frame True Color SC Image
)
_IMAGE_CLASSES: Final = frozenset(IMAGE_STORAGE_SOP_CLASSES)
# Files up to this size are read into memory before their header is parsed.
# pydicom seeks the file about 90 times for a CT slice's header, and each
# seek is a system call, which lets the receiver's other threads take
# Python's lock in turn.
_READ_WHOLE_BYTES: Final = 8 * 1024 * 1024


class UnusableDicomError(Exception):
    """The file cannot be stored. The message gives the reason, without patient data."""


class DatasetMismatchError(UnusableDicomError):
    """The data set's SOP Class or Instance UID differs from the one announced."""


class ConflictingInstanceError(UnusableDicomError):
    """The SOP Instance UID is already stored with other content."""


def describe_storage_error(error: OSError | DatabaseError) -> str:
    """Return a storage error's type and reason, without the values involved.

    PostgreSQL's message of a failed statement quotes the row's values,
    such as the SOP Instance UID of a duplicate key.
    """
    if isinstance(error, OSError) and error.strerror:
        return f"{type(error).__name__}: {error.strerror}"
    return type(error).__name__


@dataclass(frozen=True)
class DicomImportResult:
    status: str  # "stored", "duplicate" or "rejected"
    reason: str = ""
    instance: Instance | None = None


def _uid(ds: FileDataset, keyword: str) -> str:
    value = str(ds.get(keyword, "") or "").strip()
    if not value:
        raise UnusableDicomError(f"{keyword} is missing")
    if not is_uid(value):
        # The value is left out: a sender may have put a name in the field.
        raise UnusableDicomError(
            f"{keyword} is not a valid UID: {len(value)} characters that are not "
            "all digits and dots, or longer than 64"
        )
    return value


def is_uid(value: str) -> bool:
    """Return whether value is a valid UID: digits and dots, 64 characters at most."""
    return len(value) <= 64 and bool(_UID.match(value))


def quoted_uid(value: str) -> str:
    """Return a UID quoted for a message, or a placeholder when it is not a UID.

    A field that is not a UID may contain anything, a patient's name included.
    """
    if is_uid(value):
        return repr(value)
    return "(not a valid UID)"


def _text(ds: FileDataset, keyword: str, max_length: int) -> str:
    # PostgreSQL cannot store NUL in a text column; padding NULs are common.
    value = str(ds.get(keyword, "") or "").replace("\x00", "")
    return value.strip()[:max_length]


def _integer(ds: FileDataset, keyword: str) -> int | None:
    """Return an integer value, or None when it is missing, invalid or too large.

    An IS value that is not a whole number, such as "3.5", counts as invalid.
    The integer columns of the database contain signed 32-bit values.
    """
    try:
        value = ds.get(keyword)
        if isinstance(value, float) and not value.is_integer():
            # pydicom reads "3.5" in an IS value as a float, which int() cuts
            # to 3.
            return None
        number = int(value) if value not in (None, "") else None
    except (TypeError, ValueError, OverflowError):
        # OverflowError: pydicom reads "inf" in an IS value as infinity.
        return None
    if number is None or not _INTEGER_MIN <= number <= _INTEGER_MAX:
        return None
    return number


def _study_date(ds: FileDataset) -> date | None:
    try:
        return datetime.strptime(str(ds.get("StudyDate", "")), "%Y%m%d").date()
    except ValueError:
        return None


def _check_number_of_frames(ds: FileDataset) -> None:
    """Reject a Number of Frames that is not a whole number from 1 to 2**31 - 1.

    The value is checked as text: pydicom reads "1.5" as 1.5, which int()
    cuts to 1, and raises OverflowError for "inf".
    """
    if _NUMBER_OF_FRAMES not in ds:
        return
    value = ds.get_item(_NUMBER_OF_FRAMES, keep_deferred=True).value
    if isinstance(value, bytes):
        text = value.decode("ascii", "replace")
    else:
        text = "" if value is None else str(value)
    text = text.strip(" \x00")
    if not text:
        return
    if not _WHOLE_NUMBER.fullmatch(text) or not 1 <= int(text) <= _INTEGER_MAX:
        raise UnusableDicomError(
            "Number of Frames (0028,0008) is invalid: it must be a whole number "
            f"from 1 to {_INTEGER_MAX}"
        )


def _check_pixel_data(ds: FileDataset) -> None:
    """Reject pixel data that its transfer syntax or image size contradicts.

    Compressed syntaxes need encapsulated pixel data (of undefined length),
    and native pixel data must be as long as its rows, columns and frames
    need.
    """
    _check_number_of_frames(ds)
    if _PIXEL_DATA not in ds:
        if str(ds.get("SOPClassUID", "")) in _IMAGE_CLASSES:
            raise UnusableDicomError(
                "Pixel Data (7FE0,0010) is missing from the image, so the file may "
                "be cut short"
            )
        return
    transfer_syntax = ds.file_meta.TransferSyntaxUID
    if not transfer_syntax.is_transfer_syntax:
        raise UnusableDicomError(
            "Transfer Syntax UID (0002,0010) is not a known transfer syntax: "
            f"{quoted_uid(str(transfer_syntax))}"
        )
    # A raw element carries its length without a read of its value, which
    # _check_value_lengths compared with the file.
    item = ds.get_item(_PIXEL_DATA, keep_deferred=True)
    length = getattr(item, "length", None)
    if length is None:
        length = len(item.value or b"")
    if transfer_syntax.is_compressed:
        if length != _UNDEFINED_LENGTH:
            raise UnusableDicomError(
                "Pixel Data (7FE0,0010) is not encapsulated, as Transfer Syntax "
                f"UID {transfer_syntax} requires"
            )
        return
    rows, columns = _integer(ds, "Rows") or 0, _integer(ds, "Columns") or 0
    bits = _integer(ds, "BitsAllocated") or 0
    samples = _integer(ds, "SamplesPerPixel") or 1
    frames = _integer(ds, "NumberOfFrames") or 1
    expected = (rows * columns * samples * frames * bits + 7) // 8
    if length < expected:
        raise UnusableDicomError(
            f"Pixel Data (7FE0,0010) is truncated: {length} bytes, {expected} expected"
        )


def read_header(path: Path, size: int) -> FileDataset:
    """Read a file of size bytes, leaving large values such as pixel data on disk.

    Raises UnusableDicomError when the file cannot be stored.
    """
    if size > settings.DICOM_MAX_FILE_BYTES:
        raise UnusableDicomError(
            f"file is {size} bytes, more than the limit of "
            f"{settings.DICOM_MAX_FILE_BYTES} (DICOM_MAX_FILE_BYTES)"
        )
    try:
        with path.open("rb") as stream:
            source: BinaryIO = stream
            if size <= _READ_WHOLE_BYTES:
                source = io.BytesIO(stream.read())
            ds = pydicom.dcmread(source, defer_size="64 KB")
            if not ds:
                # pydicom returns no element at all when the file ends
                # inside a value of undefined length.
                raise UnusableDicomError(
                    "no data set could be read after the File Meta Information, so "
                    "the file may end inside compressed Pixel Data or a sequence"
                )
            _check_encoding(source, ds)
        _check_value_lengths(ds, size)
        if "TransferSyntaxUID" not in getattr(ds, "file_meta", {}):
            raise UnusableDicomError(
                "File Meta Information has no Transfer Syntax UID (0002,0010)"
            )
        _check_pixel_data(ds)
    except UnusableDicomError:
        raise
    except InvalidDicomError as error:
        raise UnusableDicomError(f"not a DICOM file ({error})") from error
    except Exception as error:  # pydicom raises many kinds on broken input
        raise UnusableDicomError(
            f"unreadable DICOM data ({type(error).__name__})"
        ) from error
    return ds


# Explicit VR transfer syntaxes whose data set is not deflated: every one that
# the receiver accepts except Implicit VR Little Endian and Deflated.
_DEFLATED: Final = "1.2.840.10008.1.2.1.99"
_IMPLICIT_VR: Final = "1.2.840.10008.1.2"
_NOT_EXPLICIT_VR: Final = frozenset({_IMPLICIT_VR, _DEFLATED})
_UNDEFINED_LENGTH: Final = 0xFFFFFFFF


def _check_encoding(stream: BinaryIO, ds: FileDataset) -> None:
    """Reject a data set that is not in the Explicit VR its syntax announces.

    pydicom reads such a data set anyway, guessing its encoding, and other
    readers (dcmtk's) then cannot.
    """
    # UIDs are padded to an even length with NUL (PS3.5 section 9.1).
    syntax = str(getattr(ds, "file_meta", {}).get("TransferSyntaxUID", ""))
    syntax = syntax.rstrip("\x00 ")
    if not syntax or syntax in _NOT_EXPLICIT_VR:
        return
    stream.seek(_data_set_offset(stream))
    first_element = stream.read(6)
    value_representation = first_element[4:6]
    if len(first_element) == 6 and not (
        value_representation.isalpha() and value_representation.isupper()
    ):
        raise UnusableDicomError(
            "the data set is not encoded in Explicit VR as Transfer Syntax UID "
            f"{syntax if is_uid(syntax) else '(not a valid UID)'} says"
        )


def _check_value_lengths(ds: FileDataset, size: int) -> None:
    """Reject a file that ends before a value does.

    pydicom reads what there is of a short value without an error, and
    leaves a value larger than its defer size on disk unread.
    """
    syntax = str(getattr(ds, "file_meta", {}).get("TransferSyntaxUID", ""))
    # The offsets of a deflated data set count in its inflated bytes.
    offsets_in_file = syntax != _DEFLATED
    for tag in ds.keys():
        item = ds.get_item(tag, keep_deferred=True)
        length = getattr(item, "length", 0)
        if not isinstance(item, RawDataElement) or length == _UNDEFINED_LENGTH:
            continue
        if item.value is None:
            if not offsets_in_file:
                continue
            missing = item.value_tell + length - size
        else:
            missing = length - len(item.value)
        if missing > 0:
            name = dictionary_description(tag) if dictionary_has_tag(tag) else "Element"
            raise UnusableDicomError(
                f"{name} {tag} is truncated: the file ends {missing} bytes before "
                "its value does"
            )


# A DICOM file starts with a 128-byte preamble and "DICM". Its File Meta
# Information elements follow, in explicit VR little endian (PS3.10 section
# 7.1). The VRs listed have a 4-byte length after 2 reserved bytes.
_PREAMBLE_LENGTH: Final = 128
_META_ELEMENT_HEADER: Final = struct.Struct("<HH2sH")
_META_LONG_LENGTH: Final = struct.Struct("<L")
_LONG_LENGTH_VRS: Final = frozenset(b"OB OD OF OL OV OW SQ SV UC UN UR UT UV".split())


def _data_set_offset(stream: BinaryIO) -> int:
    """Return where the data set starts: after the File Meta Information.

    The elements of group 0002 are walked one by one, because a group
    length (0002,0000) is not always there. Returns 0 for a file without
    the "DICM" prefix.
    """
    stream.seek(_PREAMBLE_LENGTH)
    if stream.read(4) != b"DICM":
        return 0
    offset = _PREAMBLE_LENGTH + 4
    while True:
        header = stream.read(_META_ELEMENT_HEADER.size)
        if len(header) < _META_ELEMENT_HEADER.size:
            return offset
        group, _, vr, length = _META_ELEMENT_HEADER.unpack(header)
        if group != 0x0002:
            return offset
        offset += _META_ELEMENT_HEADER.size
        if vr in _LONG_LENGTH_VRS:
            long_length = stream.read(_META_LONG_LENGTH.size)
            if len(long_length) < _META_LONG_LENGTH.size:
                return offset
            (length,) = _META_LONG_LENGTH.unpack(long_length)
            offset += _META_LONG_LENGTH.size
        offset += length
        stream.seek(offset)


def _same_data_set(first: Path, second: Path) -> bool:
    """Return whether two DICOM files have the same data set bytes.

    The File Meta Information is left out, because it names the program
    that wrote the file: the receiver writes its own, and a copy imported
    from a disc has the sender's. So is Data Set Trailing Padding
    (FFFC,FFFC), which dcmtk's senders drop.
    """
    with first.open("rb") as one, second.open("rb") as other:
        one_start, one_end = _data_set_span(one)
        other_start, other_end = _data_set_span(other)
        if one_end - one_start != other_end - other_start:
            return False
        one.seek(one_start)
        other.seek(other_start)
        left = one_end - one_start
        while left > 0:
            size = min(left, 1 << 20)
            if one.read(size) != other.read(size):
                return False
            left -= size
        return True


def _data_set_span(stream: BinaryIO) -> tuple[int, int]:
    """Return where the data set starts and ends, without trailing padding."""
    start = _data_set_offset(stream)
    end = os.fstat(stream.fileno()).st_size
    stream.seek(0)
    try:
        ds = pydicom.dcmread(stream, defer_size=1)
    except Exception:  # pydicom raises many kinds on broken input
        return start, end
    padding = ds.get_item(_TRAILING_PADDING, keep_deferred=True)
    syntax = str(ds.file_meta.get("TransferSyntaxUID", ""))
    if (
        not isinstance(padding, RawDataElement)
        or syntax == _DEFLATED
        or padding.value_tell + padding.length != end
    ):
        return start, end
    # The element's header: 8 bytes in Implicit VR, 12 in Explicit VR (OB).
    header = 8 if syntax == _IMPLICIT_VR else 12
    return start, padding.value_tell - header


def _find_exam(accession_number: str, patient_id: str) -> Exam | None:
    if not accession_number or not patient_id:
        return None
    matches = list(
        Exam.objects.filter(
            accession_number=accession_number, visit__patient__mrn=patient_id
        )[:2]
    )
    return matches[0] if len(matches) == 1 else None


def _study_for(ds: FileDataset) -> Study:
    uid = _uid(ds, "StudyInstanceUID")
    accession_number = _text(ds, "AccessionNumber", 16)
    patient_id = _text(ds, "PatientID", 64)
    study, created = Study.objects.select_for_update().get_or_create(
        study_instance_uid=uid,
        defaults={
            "accession_number": accession_number,
            "patient_id": patient_id,
            "study_date": _study_date(ds),
        },
    )
    if not created and (study.accession_number, study.patient_id) != (
        accession_number,
        patient_id,
    ):
        raise UnusableDicomError(
            "StudyInstanceUID is already stored with another Accession Number "
            "or Patient ID"
        )
    attach_exam_if_waiting(study)
    return study


def attach_exam_if_waiting(study: Study) -> None:
    """Attach an unmatched study to the one exam that its identifiers name."""
    if study.exam_id is not None:
        return
    exam = _find_exam(study.accession_number, study.patient_id)
    if exam is not None:
        study.exam = exam
        study.save(update_fields=["exam"])


def _series_for(ds: FileDataset, study: Study) -> Series:
    series, created = Series.objects.get_or_create(
        series_instance_uid=_uid(ds, "SeriesInstanceUID"),
        defaults={
            "study": study,
            "modality": _text(ds, "Modality", 16),
            "description": _text(ds, "SeriesDescription", 128),
            "series_number": _integer(ds, "SeriesNumber"),
        },
    )
    if not created and series.study_id != study.pk:
        raise UnusableDicomError("SeriesInstanceUID is already stored in another study")
    return series


def _fsync_path(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _fsync_file(path: Path) -> None:
    """Fsync a stored file and drop its pages from the page cache.

    Once fsynced, the pages are clean and can be dropped. The next file
    written reuses them, and that costs less than pages that were free: a
    0.5 MB file took 0.5 ms to write and fsync instead of 1.6 ms, mostly
    CPU time (2 CPUs, ext4 on a virtual disk). The file's next reader is
    a preview task or a viewer, which reads it from the disk.
    """
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
        os.posix_fadvise(descriptor, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(descriptor)


def _move_durably(source: Path, target: Path) -> bool:
    """Fsync source and rename it to target; return False across file systems.

    Source becomes readable by its owner alone, as a copy would be.
    """
    os.chmod(source, _STORED_FILE_MODE)
    _fsync_file(source)
    try:
        os.replace(source, target)
    except OSError as error:
        if error.errno == errno.EXDEV:
            return False
        raise
    return True


def _copy_privately(source: Path, target: Path) -> None:
    """Copy source to a new file target that only its owner can read."""
    descriptor = os.open(
        target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, _STORED_FILE_MODE
    )
    with open(descriptor, "wb") as copy, source.open("rb") as original:
        shutil.copyfileobj(original, copy, _COPY_BUFFER_BYTES)


def _make_folders(folder: Path) -> list[Path]:
    """Create folder and its missing parents; return those created, outermost first.

    The common case, a folder that exists, costs one system call.
    """
    try:
        folder.mkdir()
    except FileExistsError:
        return []
    except FileNotFoundError:
        created = _make_folders(folder.parent)
        try:
            folder.mkdir()
        except FileExistsError:
            return created
        return [*created, folder]
    return [folder]


def _store_durably(source: Path, name: str, *, move: bool) -> None:
    """Place source at name in the default storage, on disk before returning.

    The bytes reach the final name only by a rename, after an fsync, and the
    folders are fsynced after it, so that a crash leaves either the whole
    file there or nothing. With ``move`` the source is fsynced and renamed
    to the final name when it is on the same file system, else copied.
    """
    target = Path(default_storage.path(name))
    new_folders = _make_folders(target.parent)
    if not (move and _move_durably(source, target)):
        partial = target.with_name(f".{target.name}.partial")
        try:
            _copy_privately(source, partial)
            _fsync_file(partial)
            os.replace(partial, target)
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
    # The folder that contains the new name, and the parent of each new folder.
    for folder in [target.parent, *(folder.parent for folder in reversed(new_folders))]:
        _fsync_path(folder)


def link_durably(source: Path, name: str) -> None:
    """Give source a second name in the default storage, on disk before returning.

    Source is fsynced first, and the folders are fsynced after the link, so
    that after a crash the new name has the whole file or does not exist.
    The source keeps its name. The caller removes the new name when this
    raises, or when it cannot commit the row that the name belongs to.
    """
    _fsync_file(source)
    folders = link_into_storage(source, name)
    try:
        fsync_folders(folders)
    except BaseException:
        Path(default_storage.path(name)).unlink(missing_ok=True)
        raise


def link_into_storage(source: Path, name: str) -> list[Path]:
    """Give source a second name in the default storage; return the folders to fsync.

    The folders are the one that contains the new name and the parent of
    each folder created for it. Until they and source are fsynced, a crash
    may lose the new name or leave part of the file under it.
    """
    target = Path(default_storage.path(name))
    new_folders = _make_folders(target.parent)
    os.link(source, target)
    return [target.parent, *(folder.parent for folder in reversed(new_folders))]


def fsync_folders(folders: list[Path]) -> None:
    """Fsync each folder, in the order given."""
    for folder in folders:
        _fsync_path(folder)


def _check_announced_uids(
    sop_class_uid: str, sop_instance_uid: str, announced: tuple[str, str]
) -> None:
    announced_class, announced_instance = announced
    if sop_class_uid != announced_class:
        # The message goes to the log, the quarantine and the sender, so
        # only valid UIDs are quoted in it.
        raise DatasetMismatchError(
            f"SOPClassUID {quoted_uid(sop_class_uid)} differs from the announced "
            f"{quoted_uid(announced_class)}"
        )
    if sop_instance_uid != announced_instance:
        # Instance UIDs are left out: they identify the patient's study.
        raise DatasetMismatchError(
            "SOPInstanceUID differs from the one announced in the C-STORE request"
        )


@dataclass(frozen=True)
class CheckedFile:
    """A DICOM file that passed the checks, with what its rows need."""

    path: Path
    dataset: FileDataset
    sop_instance_uid: str
    sop_class_uid: str
    size: int

    @property
    def study_instance_uid(self) -> str:
        return _uid(self.dataset, "StudyInstanceUID")

    @property
    def series_instance_uid(self) -> str:
        return _uid(self.dataset, "SeriesInstanceUID")

    @property
    def study_identifiers(self) -> tuple[str, str]:
        """The Accession Number and Patient ID, as stored on the study."""
        return (
            _text(self.dataset, "AccessionNumber", 16),
            _text(self.dataset, "PatientID", 64),
        )


def check_dicom_file(
    path: Path, announced: tuple[str, str] | None = None
) -> CheckedFile:
    """Read and check a file's header.

    Raises UnusableDicomError when the file cannot be stored, and
    DatasetMismatchError when it differs from the ``announced`` (SOP Class
    UID, SOP Instance UID) pair.
    """
    size = path.stat().st_size
    ds = read_header(path, size)
    sop_instance_uid = _uid(ds, "SOPInstanceUID")
    sop_class_uid = _uid(ds, "SOPClassUID")
    if announced is not None:
        _check_announced_uids(sop_class_uid, sop_instance_uid, announced)
    return CheckedFile(
        path=path,
        dataset=ds,
        sop_instance_uid=sop_instance_uid,
        sop_class_uid=sop_class_uid,
        size=size,
    )


def _check_same_series(checked: CheckedFile, pk: int) -> None:
    """Raise ConflictingInstanceError unless instance pk's series is the file's.

    A file that takes the place of a missing one must belong to the same
    study and patient, so that no other patient's image appears in it.
    """
    series = Series.objects.select_related("study").get(instances__pk=pk)
    if (
        series.series_instance_uid != checked.series_instance_uid
        or series.study.study_instance_uid != checked.study_instance_uid
        or (series.study.accession_number, series.study.patient_id)
        != checked.study_identifiers
    ):
        raise ConflictingInstanceError(
            "SOPInstanceUID is already stored in another series or study, whose "
            "file is missing, so nothing was stored"
        )


def _restore_missing_file(
    checked: CheckedFile, pk: int, name: str, restore: Callable[[str], None]
) -> bool:
    """Place the checked file at the name of instance pk, whose file is missing.

    Returns False when another copy of the instance restored it meanwhile.
    """
    _check_same_series(checked, pk)
    try:
        restore(name)
    except FileExistsError:
        return False
    Instance.objects.filter(pk=pk).update(
        size=checked.size,
        transfer_syntax_uid=str(checked.dataset.file_meta.TransferSyntaxUID),
    )
    logger.warning(
        "Restored the missing file of instance %d from a copy received again", pk
    )
    return True


def find_stored_copy(
    checked: CheckedFile, restore: Callable[[str], None]
) -> DicomImportResult | None:
    """Return the "duplicate" result when the instance is already stored.

    When a row exists, the data set of its stored file is compared with the
    new file's. Raises ConflictingInstanceError when they differ. When the
    stored file is missing, ``restore`` gets its storage name to place the
    new file there, and the result is "stored".
    """
    with connection.cursor() as cursor:
        cursor.execute(_SELECT_BY_SOP_INSTANCE_UID, [checked.sop_instance_uid])
        row = cursor.fetchone()
    if row is None:
        return None
    pk, name, transfer_syntax_uid = row
    stored = Path(default_storage.path(name))
    if not stored.exists() and _restore_missing_file(checked, pk, name, restore):
        return DicomImportResult("stored", instance=Instance.objects.get(pk=pk))
    if transfer_syntax_uid == checked.dataset.file_meta.TransferSyntaxUID and (
        _same_data_set(stored, checked.path)
    ):
        # Resent instances are rare, so loading the whole row costs little.
        existing = Instance.objects.filter(pk=pk).first()
        return DicomImportResult("duplicate", instance=existing)
    raise ConflictingInstanceError(
        "SOPInstanceUID is already stored with different content; "
        "the stored file is kept"
    )


# The receiver looks up and inserts one instance row per C-STORE. Built by
# the ORM, the two statements took 1.2 ms of the receiver's 3.8 ms of Python
# per instance (py-spy during bench/store.py), so they are written out once.
_SELECT_BY_SOP_INSTANCE_UID: Final = (
    'SELECT "id", "file", "transfer_syntax_uid" FROM "records_instance" '
    'WHERE "sop_instance_uid" = %s'
)
INSERTED_INSTANCE_FIELDS: Final = (
    "public_id",
    "series",
    "sop_instance_uid",
    "sop_class_uid",
    "transfer_syntax_uid",
    "instance_number",
    "rows",
    "columns",
    "number_of_frames",
    "file",
    "size",
)
_INSERT_INSTANCE: Final = (
    'INSERT INTO "records_instance" ("public_id", "series_id", '
    '"sop_instance_uid", "sop_class_uid", "transfer_syntax_uid", '
    '"instance_number", "rows", "columns", "number_of_frames", "file", "size") '
    "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s) "
    'RETURNING "id"'
)


@functools.cache
def _inserted_fields() -> list[Field[Any, Any]]:
    return [
        cast(Field[Any, Any], Instance._meta.get_field(name))
        for name in INSERTED_INSTANCE_FIELDS
    ]


def _insert_instance(instance: Instance) -> None:
    """Insert a new instance's row, as Model.save() would, and set its pk.

    Instance has no save signals and does not override save().
    """
    values = [
        field.get_db_prep_save(field.pre_save(instance, True), connection)
        for field in _inserted_fields()
    ]
    with connection.cursor() as cursor:
        cursor.execute(_INSERT_INSTANCE, values)
        (instance.pk,) = cursor.fetchone()
    instance._state.adding = False
    instance._state.db = connection.alias


def study_and_series_for(checked: CheckedFile) -> tuple[Study, Series]:
    """Find or create the study and series rows; call inside a transaction."""
    study = _study_for(checked.dataset)
    return study, _series_for(checked.dataset, study)


def new_instance(
    checked: CheckedFile,
    study: Study,
    series: Series,
    public_id: uuid.UUID | None = None,
) -> Instance:
    """Return the unsaved row of a checked file, named by ``instance_file_name``."""
    ds = checked.dataset
    has_pixels = _PIXEL_DATA in ds
    instance = Instance(
        public_id=public_id or uuid.uuid4(),
        series=series,
        sop_instance_uid=checked.sop_instance_uid,
        sop_class_uid=checked.sop_class_uid,
        transfer_syntax_uid=str(ds.file_meta.TransferSyntaxUID),
        instance_number=_integer(ds, "InstanceNumber"),
        rows=(_integer(ds, "Rows") or 0) if has_pixels else 0,
        columns=(_integer(ds, "Columns") or 0) if has_pixels else 0,
        number_of_frames=max(_integer(ds, "NumberOfFrames") or 1, 1),
        size=checked.size,
    )
    instance.file = instance_file_name(instance.public_id)
    return instance


def create_instance_folders() -> None:
    """Create the folders of ``instance_file_name`` that are missing, on disk.

    A receiver creates them as it starts, so that placing a file does not
    create a folder and fsync its parent.
    """
    created = []
    for prefix in range(256):
        created += _make_folders(Path(default_storage.path(f"dicom/{prefix:02x}")))
    fsync_folders(sorted({folder.parent for folder in created}, key=str, reverse=True))


def instance_file_name(public_id: uuid.UUID) -> str:
    """Return the storage name of an instance's file, made of its public id alone.

    Names come from internal ids, never from tag values. The receiver can
    then place a file before its header is read, and a receiver that starts
    after a crash finds a file's final name from its staging name. The 256
    folders keep each one small.
    """
    return f"dicom/{public_id.hex[:2]}/{public_id.hex}.dcm"


def place_file(
    checked: CheckedFile, study: Study, series: Series, *, move: bool
) -> Instance:
    """Store the file durably under its final name; return its unsaved row."""
    instance = new_instance(checked, study, series)
    _store_durably(checked.path, instance.file, move=move)
    return instance


def save_instance(
    instance: Instance,
    study: Study,
    *,
    queue_previews: bool = True,
    audit: bool = True,
) -> None:
    """Insert the row of a placed file, its preview task and its audit row.

    Call inside a transaction, once the file is on disk. A caller that
    queues the preview tasks itself, for several instances at once, passes
    ``queue_previews=False``, and one that audits a whole study's arrival
    once passes ``audit=False`` for the other instances.
    The caller deletes the file when this fails.
    """
    _insert_instance(instance)
    if queue_previews:
        # The task backend stores tasks in this database, so the task row is
        # committed with the instance, in one commit instead of two.
        render_previews.enqueue(instance.pk)
    if audit:
        record_event(
            "images.import",
            actor_kind="import",
            patient_id=study.exam.visit.patient_id if study.exam else None,
            exam_id=study.exam_id,
        )


def import_dicom_file(
    path: Path, *, move: bool = False, announced: tuple[str, str] | None = None
) -> DicomImportResult:
    """Store one DICOM file; raise UnusableDicomError when it cannot be.

    ``move`` lets the file be renamed into the storage instead of copied; it
    is then gone from ``path`` when the result is "stored". ``announced`` is
    the (SOP Class UID, SOP Instance UID) pair that a network peer announced
    for the data set; DatasetMismatchError is raised when the file differs.
    """
    checked = check_dicom_file(path, announced)
    stored_copy = find_stored_copy(
        checked, lambda name: _store_durably(path, name, move=move)
    )
    if stored_copy is not None:
        return stored_copy

    # The study and series rows are committed first, and the file is written
    # and fsynced outside any transaction. Holding the study's row lock (or
    # SQLite's write lock) through the fsyncs would make every other
    # instance of the study wait for this one's disk writes.
    with transaction.atomic():
        study, series = study_and_series_for(checked)
    instance = place_file(checked, study, series, move=move)
    try:
        with transaction.atomic():
            save_instance(instance, study)
    except BaseException:
        default_storage.delete(instance.file)
        raise
    if study.exam_id is None:
        logger.info("Stored instance %d in unmatched study %d", instance.pk, study.pk)
    return DicomImportResult("stored", instance=instance)
