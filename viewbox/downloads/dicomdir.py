"""Encode the DICOMDIR of a package without touching the instance files.

A DICOMDIR is a Basic Directory (PS3.3 F.3): a Directory Record Sequence of
PATIENT, STUDY, SERIES and leaf records, linked by byte offsets counted from
the start of the file, preamble included. pydicom 3.0's FileSet writes a
DICOMDIR only together with copies of every instance, and its add() scans
every staged instance, so its cost grows with the square of the instance
count. Here each record is encoded once, without the three elements that
link it to others. Those have a fixed length, so every offset is known
before the file is assembled, and the cost grows linearly with the number
of instances.

    directory = DicomDirectory()
    with open("ct.dcm", "rb") as file:
        directory.add(("DICOM", "S0000001", "I0000001"), read_header(file))
    data = directory.encode()
    assert referenced_file_ids(data) == [("DICOM", "S0000001", "I0000001")]
"""

import io
import itertools
import logging
import struct
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import BinaryIO, Final

from pydicom import dcmread
from pydicom.datadict import dictionary_description
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import dcmwrite, write_dataset
from pydicom.tag import Tag
from pydicom.uid import (
    UID,
    ExplicitVRLittleEndian,
    MediaStorageDirectoryStorage,
    generate_uid,
)

logger = logging.getLogger(__name__)

FILE_SET_ID: Final = "VIEWBOX"

# Keys of each directory record type (PS3.3 F.5), as (keyword, type). Type 1
# keys that an instance lacks get a fallback (see _FALLBACKS and _NUMBERED)
# or an empty value, Type 2 keys an empty value, and Type 1C keys are copied
# when present.
_PATIENT_KEYS: Final = (("PatientName", "2"), ("PatientID", "1"))
_STUDY_KEYS: Final = (
    ("StudyDate", "1"),
    ("StudyTime", "1"),
    ("StudyDescription", "2"),
    ("StudyInstanceUID", "1"),
    ("StudyID", "1"),
    ("AccessionNumber", "2"),
)
_SERIES_KEYS: Final = (
    ("Modality", "1"),
    ("SeriesInstanceUID", "1"),
    ("SeriesNumber", "1"),
)
_LEAF_KEYS: Final = {
    "IMAGE": (("InstanceNumber", "1"),),
    "SR DOCUMENT": (
        ("InstanceNumber", "1"),
        ("CompletionFlag", "1"),
        ("VerificationFlag", "1"),
        ("ContentDate", "1"),
        ("ContentTime", "1"),
        ("ConceptNameCodeSequence", "1"),
    ),
    "KEY OBJECT DOC": (
        ("InstanceNumber", "1"),
        ("ContentDate", "1"),
        ("ContentTime", "1"),
        ("ConceptNameCodeSequence", "1"),
    ),
    "PRESENTATION": (
        ("InstanceNumber", "1"),
        ("PresentationCreationDate", "1"),
        ("PresentationCreationTime", "1"),
        ("ContentLabel", "1"),
        ("ContentDescription", "2"),
        ("ContentCreatorName", "2"),
        ("ReferencedSeriesSequence", "1C"),
    ),
    "ENCAP DOC": (
        ("InstanceNumber", "1"),
        ("ContentDate", "2"),
        ("ContentTime", "2"),
        ("DocumentTitle", "2"),
        ("ConceptNameCodeSequence", "2"),
        ("MIMETypeOfEncapsulatedDocument", "1"),
    ),
}
# Elements of the instance that stand in for a missing Type 1 date or time,
# in order of preference.
_FALLBACKS: Final = {
    "StudyDate": ("SeriesDate", "AcquisitionDate", "ContentDate"),
    "StudyTime": ("SeriesTime", "AcquisitionTime", "ContentTime"),
}
# Type 1 numbers that, when missing, take the record's position among its
# siblings (1-based): they only order and label records.
_NUMBERED: Final = frozenset({"StudyID", "SeriesNumber", "InstanceNumber"})

_OTHER_KEYWORDS: Final = ("SpecificCharacterSet", "VerifyingObserverSequence")
_HEADER_KEYWORDS: Final = sorted(
    {keyword for keyword, _ in _PATIENT_KEYS + _STUDY_KEYS + _SERIES_KEYS}
    | {keyword for keys in _LEAF_KEYS.values() for keyword, _ in keys}
    | {keyword for keywords in _FALLBACKS.values() for keyword in keywords}
    | set(_OTHER_KEYWORDS)
)

# Explicit VR Little Endian encodings of the sequence and item headers, of
# an element with a 2-byte length, and of the three elements that open every
# record: (0004,1400) Offset of the Next Directory Record, (0004,1410) Record
# In-use Flag and (0004,1420) Offset of Referenced Lower-Level Directory
# Entity.
_SEQUENCE_HEADER: Final = struct.Struct("<HH2s2xI")
_ITEM_HEADER: Final = struct.Struct("<HHI")
_SHORT_ELEMENT: Final = struct.Struct("<HH2sH")
_LINKS: Final = struct.Struct("<HH2sHI HH2sHH HH2sHI")
_DIRECTORY_RECORD_SEQUENCE: Final = (0x0004, 0x1220)
_ITEM: Final = (0xFFFE, 0xE000)
_RECORD_IN_USE: Final = 0xFFFF


class DicomdirError(Exception):
    """An instance cannot be listed, or a DICOMDIR is inconsistent.

    The message names the DICOM element and never quotes patient data.
    """


def read_header(file: BinaryIO) -> Dataset:
    """Read the File Meta Information and the DICOMDIR keys of a Part 10 file.

    Reading stops before the pixel data, and elements that no record uses
    are skipped. Raises DicomdirError when the file is not a DICOM file, and
    lets OSError through.
    """
    try:
        header = dcmread(file, stop_before_pixels=True, specific_tags=_HEADER_KEYWORDS)
    except OSError:
        raise
    except Exception as error:  # pydicom raises many kinds on broken input
        raise DicomdirError(
            f"it is not a readable DICOM Part 10 file ({type(error).__name__})"
        ) from error
    for keyword in _NUMBERED:
        try:
            header.get(keyword)
        except (ValueError, OverflowError):
            # pydicom raises for a value such as "inf" when it converts it,
            # so the key is treated as missing.
            del header[keyword]
    return header


def leaf_record_type(sop_class_uid: str) -> str:
    """Return the Directory Record Type for an instance of a SOP Class.

    Classes that are not a structured report, key object selection,
    presentation state or encapsulated document get IMAGE records.
    """
    # NOTE: RT objects, waveforms and other classes without pixel data also
    # get IMAGE records, which strict DICOMDIR readers may reject. Their own
    # record types (PS3.3 F.5) are not written.
    keyword = UID(sop_class_uid).keyword
    if keyword == "KeyObjectSelectionDocumentStorage":
        return "KEY OBJECT DOC"
    if keyword.endswith("SRStorage") or keyword == "ProcedureLogStorage":
        return "SR DOCUMENT"
    if keyword.endswith("PresentationStateStorage"):
        return "PRESENTATION"
    if keyword.startswith("Encapsulated"):
        return "ENCAP DOC"
    return "IMAGE"


@dataclass
class _Node:
    """A directory record, encoded without its three link elements."""

    body: bytes
    children: list["_Node"] = field(default_factory=list)
    offset: int = 0
    next_offset: int = 0


@dataclass(frozen=True)
class _Missing:
    """A Type 1 key that instances lacked, and what replaced it."""

    record_type: str
    keyword: str
    replacement: str


class DicomDirectory:
    """The directory records of a file-set, built one instance at a time.

    Records are grouped by Patient ID, Study Instance UID and Series
    Instance UID, in the order in which each first appears.
    """

    def __init__(self) -> None:
        self._patients: list[_Node] = []
        self._nodes: dict[tuple[str, ...], _Node] = {}
        self._sop_instance_uids: set[str] = set()
        # "file ID=SOP Instance UID" of each leaf, from which the File-set's
        # UID is derived, so that the same instances under the same names
        # always give the same DICOMDIR.
        self._leaves: list[str] = []
        self._missing: Counter[_Missing] = Counter()

    def __len__(self) -> int:
        return len(self._sop_instance_uids)

    def add(self, file_id: Sequence[str], header: Dataset) -> None:
        """Add the records of one instance, stored under file_id.

        Raises DicomdirError when the File Meta Information or a UID that
        places the instance in the hierarchy is missing, or when the same
        SOP Instance UID was added before.
        """
        try:
            self._add(tuple(file_id), header)
        except DicomdirError:
            raise
        except Exception as error:  # pydicom converts values lazily, on access
            raise DicomdirError(
                f"an element of its header is invalid ({type(error).__name__})"
            ) from error

    def _add(self, file_id: tuple[str, ...], header: Dataset) -> None:
        meta = header.file_meta
        sop_class_uid = _required_uid(meta, "MediaStorageSOPClassUID")
        sop_instance_uid = _required_uid(meta, "MediaStorageSOPInstanceUID")
        transfer_syntax_uid = _required_uid(meta, "TransferSyntaxUID")
        study_uid = _required_uid(header, "StudyInstanceUID")
        series_uid = _required_uid(header, "SeriesInstanceUID")
        if sop_instance_uid in self._sop_instance_uids:
            raise DicomdirError(
                "(0002,0003) Media Storage SOP Instance UID "
                f"{sop_instance_uid} is already in the package"
            )

        patient_key = ("PATIENT", str(header.get("PatientID", "")))
        patient = self._nodes.get(patient_key)
        if patient is None:
            patient = self._new_node(
                patient_key, self._patients, "PATIENT", _PATIENT_KEYS, header
            )
        study_key = (*patient_key, study_uid)
        study = self._nodes.get(study_key)
        if study is None:
            study = self._new_node(
                study_key, patient.children, "STUDY", _STUDY_KEYS, header
            )
        series_key = (*study_key, series_uid)
        series = self._nodes.get(series_key)
        if series is None:
            series = self._new_node(
                series_key, study.children, "SERIES", _SERIES_KEYS, header
            )

        references = _References(
            file_id, sop_class_uid, sop_instance_uid, transfer_syntax_uid
        )
        position = len(series.children) + 1
        record_type = leaf_record_type(sop_class_uid)
        if record_type == "IMAGE":
            body = self._image_record(references, header, position)
        else:
            body = self._leaf_record(record_type, references, header, position)
        series.children.append(_Node(body))
        self._sop_instance_uids.add(sop_instance_uid)
        self._leaves.append(f"{'/'.join(file_id)}={sop_instance_uid}")

    def _new_node(
        self,
        key: tuple[str, ...],
        siblings: list[_Node],
        record_type: str,
        keys: Sequence[tuple[str, str]],
        header: Dataset,
    ) -> _Node:
        record = self._record(record_type, keys, header, len(siblings) + 1)
        node = _Node(_encode_record(record))
        siblings.append(node)
        self._nodes[key] = node
        return node

    def _record(
        self,
        record_type: str,
        keys: Sequence[tuple[str, str]],
        header: Dataset,
        position: int,
    ) -> Dataset:
        record = Dataset()
        record.DirectoryRecordType = record_type
        if _has_value(header, "SpecificCharacterSet"):
            record.add(header["SpecificCharacterSet"])
        for keyword, key_type in keys:
            if _has_value(header, keyword):
                record.add(header[keyword])
            elif key_type == "1":
                self._add_replacement(record, keyword, header, position)
            elif key_type == "2":
                setattr(record, keyword, None)
        return record

    def _leaf_record(
        self,
        record_type: str,
        references: "_References",
        header: Dataset,
        position: int,
    ) -> bytes:
        record = self._record(record_type, _LEAF_KEYS[record_type], header, position)
        record.ReferencedFileID = list(references.file_id)
        record.ReferencedSOPClassUIDInFile = references.sop_class_uid
        record.ReferencedSOPInstanceUIDInFile = references.sop_instance_uid
        record.ReferencedTransferSyntaxUIDInFile = references.transfer_syntax_uid
        if (
            record_type == "SR DOCUMENT"
            and header.get("VerificationFlag") == "VERIFIED"
        ):
            record.VerificationDateTime = _latest_verification(header)
        return _encode_record(record)

    def _image_record(
        self, references: "_References", header: Dataset, position: int
    ) -> bytes:
        """Encode an IMAGE record directly: pydicom's cost per element would
        dominate the DICOMDIR of a large exam. Every value is ASCII."""
        value = header.get("InstanceNumber")
        # pydicom keeps an IS that is not a number as text.
        if isinstance(value, int):
            instance_number = str(int(value))
        else:
            instance_number = str(position)
            self._missing[_Missing("IMAGE", "InstanceNumber", "position")] += 1
        elements = [
            _ascii_element(0x0004, 0x1430, b"CS", "IMAGE"),
            _ascii_element(0x0004, 0x1500, b"CS", "\\".join(references.file_id)),
            _ascii_element(0x0004, 0x1510, b"UI", references.sop_class_uid),
            _ascii_element(0x0004, 0x1511, b"UI", references.sop_instance_uid),
            _ascii_element(0x0004, 0x1512, b"UI", references.transfer_syntax_uid),
        ]
        if _has_value(header, "SpecificCharacterSet"):
            terms = header.SpecificCharacterSet
            names = [terms] if isinstance(terms, str) else list(terms)
            elements.append(_ascii_element(0x0008, 0x0005, b"CS", "\\".join(names)))
        elements.append(_ascii_element(0x0020, 0x0013, b"IS", instance_number))
        return b"".join(elements)

    def _add_replacement(
        self, record: Dataset, keyword: str, header: Dataset, position: int
    ) -> None:
        """Fill a missing Type 1 key, and count it for the log."""
        replacement = "empty value"
        if keyword in _NUMBERED:
            setattr(record, keyword, str(position))
            replacement = "position"
        for fallback in _FALLBACKS.get(keyword, ()):
            if _has_value(header, fallback):
                setattr(record, keyword, header[fallback].value)
                replacement = fallback
                break
        if keyword not in record:
            setattr(record, keyword, None)
        self._missing[_Missing(record.DirectoryRecordType, keyword, replacement)] += 1

    def encode(self) -> bytes:
        """Return the DICOMDIR file: Explicit VR Little Endian, with preamble.

        Raises DicomdirError when no instance was added.
        """
        if not self._patients:
            raise DicomdirError("the DICOMDIR would list no instance")
        for missing, count in sorted(self._missing.items(), key=str):
            logger.warning(
                "%d DICOMDIR %s records lack the Type 1 key %s, so %s was written",
                count,
                missing.record_type,
                missing.keyword,
                missing.replacement,
            )

        nodes = list(_depth_first(self._patients))
        instance_uid = generate_uid(entropy_srcs=self._leaves)
        header_length = len(_encode_header(instance_uid, 0, 0))
        offset = header_length + _SEQUENCE_HEADER.size
        for node in nodes:
            node.offset = offset
            offset += _ITEM_HEADER.size + _LINKS.size + len(node.body)
        _link(self._patients)
        for node in nodes:
            _link(node.children)

        first, last = self._patients[0].offset, self._patients[-1].offset
        header = _encode_header(instance_uid, first, last)
        assert len(header) == header_length, "the header length changed"
        sequence_length = offset - header_length - _SEQUENCE_HEADER.size
        parts = [
            header,
            _SEQUENCE_HEADER.pack(*_DIRECTORY_RECORD_SEQUENCE, b"SQ", sequence_length),
        ]
        for node in nodes:
            lower = node.children[0].offset if node.children else 0
            parts.append(_ITEM_HEADER.pack(*_ITEM, _LINKS.size + len(node.body)))
            parts.append(_links(node.next_offset, lower))
            parts.append(node.body)
        data = b"".join(parts)
        assert len(data) == offset, "the records' lengths changed"
        return data


@dataclass(frozen=True)
class _References:
    """The elements of a leaf record that reference its file (PS3.3 F.3.2.2)."""

    file_id: tuple[str, ...]
    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax_uid: str


def _required_uid(dataset: Dataset, keyword: str) -> str:
    value = dataset.get(keyword)
    if not value:
        tag = Tag(keyword)
        raise DicomdirError(f"{tag} {dictionary_description(tag)} is missing or empty")
    return str(value)


def _has_value(dataset: Dataset, keyword: str) -> bool:
    return keyword in dataset and dataset[keyword].VM > 0


def _latest_verification(header: Dataset) -> str | None:
    """Return the latest Verification DateTime of a verified SR, if any."""
    times = [
        str(item.VerificationDateTime)
        for item in header.get("VerifyingObserverSequence", [])
        if _has_value(item, "VerificationDateTime")
    ]
    return max(times, default=None)


def _depth_first(nodes: list[_Node]) -> Iterator[_Node]:
    for node in nodes:
        yield node
        yield from _depth_first(node.children)


def _link(siblings: list[_Node]) -> None:
    for node, following in itertools.pairwise(siblings):
        node.next_offset = following.offset


def _links(next_offset: int, lower_offset: int) -> bytes:
    """Encode the three elements that open every record and link it."""
    return _LINKS.pack(
        0x0004, 0x1400, b"UL", 4, next_offset,
        0x0004, 0x1410, b"US", 2, _RECORD_IN_USE,
        0x0004, 0x1420, b"UL", 4, lower_offset,
    )  # fmt: skip


def _ascii_element(group: int, element: int, vr: bytes, value: str) -> bytes:
    """Encode a short element whose value is ASCII text, padded to even length."""
    data = value.encode("ascii")
    if len(data) % 2:
        data += b"\0" if vr == b"UI" else b" "
    return _SHORT_ELEMENT.pack(group, element, vr, len(data)) + data


def _encode_record(record: Dataset) -> bytes:
    buffer = DicomBytesIO()
    buffer.is_little_endian = True
    buffer.is_implicit_VR = False
    write_dataset(buffer, record)
    return buffer.getvalue()


def _encode_header(instance_uid: str, first_offset: int, last_offset: int) -> bytes:
    """Encode the preamble, the File Meta Information and the elements that
    precede the Directory Record Sequence."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MediaStorageDirectoryStorage
    meta.MediaStorageSOPInstanceUID = UID(instance_uid)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    dataset = Dataset()
    dataset.file_meta = meta
    dataset.FileSetID = FILE_SET_ID
    dataset.OffsetOfTheFirstDirectoryRecordOfTheRootDirectoryEntity = first_offset
    dataset.OffsetOfTheLastDirectoryRecordOfTheRootDirectoryEntity = last_offset
    dataset.FileSetConsistencyFlag = 0
    buffer = io.BytesIO()
    dcmwrite(buffer, dataset, enforce_file_format=True)
    return buffer.getvalue()


def referenced_file_ids(data: bytes) -> list[tuple[str, ...]]:
    """Return the Referenced File IDs of a DICOMDIR, in the order of its links.

    Follows the offsets from the root, so a record that no offset reaches,
    an offset that points at no record, or a loop raises DicomdirError.
    """
    try:
        dataset = dcmread(io.BytesIO(data))
        records = list(dataset.DirectoryRecordSequence)
        first = int(dataset.OffsetOfTheFirstDirectoryRecordOfTheRootDirectoryEntity)
    except Exception as error:  # pydicom raises many kinds on broken input
        raise DicomdirError(
            f"the DICOMDIR cannot be read ({type(error).__name__})"
        ) from error

    by_offset = {record.seq_item_tell: record for record in records}
    visited: set[int] = set()
    file_ids: list[tuple[str, ...]] = []
    pending = [first]
    while pending:
        offset = pending.pop()
        while offset:
            if offset in visited or offset not in by_offset:
                raise DicomdirError(f"the DICOMDIR offset {offset} is invalid")
            visited.add(offset)
            record = by_offset[offset]
            if "ReferencedFileID" in record:
                value = record.ReferencedFileID
                file_ids.append((value,) if isinstance(value, str) else tuple(value))
            lower = int(record.OffsetOfReferencedLowerLevelDirectoryEntity)
            offset = int(record.OffsetOfTheNextDirectoryRecord)
            if lower:
                # Visit the lower level before the next sibling.
                pending.append(offset)
                offset = lower
    if len(visited) != len(records):
        raise DicomdirError(
            f"{len(records) - len(visited)} DICOMDIR records are not linked"
        )
    return file_ids
