"""STOW-RS (DICOMweb Store, PS3.18 section 10.5): storing multipart bodies.

A request body is ``multipart/related; type="application/dicom"``; each part
is one DICOM file. Parts are streamed to temporary files one at a time and
stored through ``import_dicom_file`` as soon as each one ends, so memory does
not grow with the request. The response is the Store Instances Response
Module in DICOM JSON (PS3.18 Annex F): the stored instances in Referenced SOP
Sequence (0008,1199), the others in Failed SOP Sequence (0008,1198) with a
Failure Reason (0008,1197) each.
"""

import hashlib
import hmac
import logging
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Protocol

import pydicom
from django.conf import settings
from django.db import DatabaseError

from viewbox.ingest.dicom_import import (
    DatasetMismatchError,
    UnusableDicomError,
    describe_storage_error,
    import_dicom_file,
    is_uid,
    quoted_uid,
)
from viewbox.ingest.dicom_receiver import STORAGE_SOP_CLASSES, TRANSFER_SYNTAXES
from viewbox.ingest.models import QuarantinedFile
from viewbox.ingest.quarantine import quarantine_file

logger = logging.getLogger(__name__)

# Failure Reason (0008,1197) values, the status codes of PS3.4 Annex B.
FAILURE_PROCESSING: Final = 0x0110
FAILURE_SOP_CLASS_NOT_SUPPORTED: Final = 0x0122
FAILURE_OUT_OF_RESOURCES: Final = 0xA700
FAILURE_DATASET_DOES_NOT_MATCH_SOP_CLASS: Final = 0xA900
FAILURE_CANNOT_UNDERSTAND: Final = 0xC000
FAILURE_TRANSFER_SYNTAX_NOT_SUPPORTED: Final = 0xC122

_READ_SIZE: Final = 1 << 16
_MAX_HEADER_BYTES: Final = 16 * 1024
_SUPPORTED_SOP_CLASSES: Final = frozenset(STORAGE_SOP_CLASSES)
_SUPPORTED_TRANSFER_SYNTAXES: Final = frozenset(TRANSFER_SYNTAXES)


class ReadableStream(Protocol):
    def read(self, size: int, /) -> bytes: ...


class MalformedBodyError(Exception):
    """The multipart body cannot be parsed; the message describes the fault."""


def token_is_valid(authorization: str) -> bool:
    """Check an Authorization header against the configured token hashes.

    Every configured hash is compared, in constant time, so the time taken
    does not tell which hash came close.
    """
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return False
    digest = hashlib.sha256(token.strip().encode()).hexdigest()
    matched = False
    for configured in settings.STOW_TOKEN_SHA256:
        matched |= hmac.compare_digest(digest, configured)
    return matched


def _parse_headers(block: bytes) -> dict[str, str]:
    headers: dict[str, str] = {}
    for line in block.decode("latin-1").split("\r\n"):
        name, separator, value = line.partition(":")
        if separator:
            headers[name.strip().lower()] = value.strip()
    return headers


def iter_parts(
    stream: ReadableStream, boundary: bytes, folder: Path
) -> Iterator[tuple[dict[str, str], Path]]:
    """Yield (headers, file) for each part of a multipart body (RFC 2046).

    Each part's content is written to a new file in ``folder``, which the
    caller owns once the part is yielded. Raises MalformedBodyError when the
    body ends before its close delimiter or has no delimiter at all.
    """
    delimiter = b"--" + boundary
    buffer = b""

    def read_more() -> bool:
        nonlocal buffer
        chunk = stream.read(_READ_SIZE)
        buffer += chunk
        return bool(chunk)

    # The preamble before the first delimiter is ignored.
    while (start := buffer.find(delimiter)) < 0:
        buffer = buffer[-len(delimiter) :]
        if not read_more():
            raise MalformedBodyError("no multipart boundary found in the body")
    buffer = buffer[start + len(delimiter) :]

    while True:
        while len(buffer) < 2 and read_more():
            pass
        if buffer.startswith(b"--"):
            return
        while (header_end := buffer.find(b"\r\n\r\n")) < 0:
            if len(buffer) > _MAX_HEADER_BYTES or not read_more():
                raise MalformedBodyError("a part's headers are missing or too long")
        # The rest of the delimiter line is transport padding and CRLF.
        headers = _parse_headers(buffer[:header_end].partition(b"\r\n")[2])
        buffer = buffer[header_end + 4 :]

        path = folder / f"part-{uuid.uuid4().hex}.dcm"
        separator = b"\r\n" + delimiter
        with path.open("wb") as part_file:
            while (end := buffer.find(separator)) < 0:
                # Keep enough of the tail for a separator split across reads.
                keep = len(separator) - 1
                part_file.write(buffer[:-keep])
                buffer = buffer[-keep:]
                if not read_more():
                    path.unlink()
                    raise MalformedBodyError("the body ends inside a part")
            part_file.write(buffer[:end])
        buffer = buffer[end + len(separator) :]
        yield headers, path


@dataclass
class StoreResponse:
    """The outcome of a STOW-RS request, built up part by part."""

    referenced: list[dict[str, Any]] = field(default_factory=list)
    failed: list[dict[str, Any]] = field(default_factory=list)

    def add_stored(self, sop_class_uid: str, sop_instance_uid: str) -> None:
        self.referenced.append(_sop_reference(sop_class_uid, sop_instance_uid))

    def add_failed(
        self, sop_class_uid: str, sop_instance_uid: str, reason: int
    ) -> None:
        item = _sop_reference(sop_class_uid, sop_instance_uid)
        item["00081197"] = {"vr": "US", "Value": [reason]}
        self.failed.append(item)

    def http_status(self) -> int:
        """Return 200 when all parts were stored, 202 when some, else 409."""
        if not self.failed:
            return 200
        return 202 if self.referenced else 409

    def as_dicom_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {}
        if self.failed:
            body["00081198"] = {"vr": "SQ", "Value": self.failed}
        if self.referenced:
            body["00081199"] = {"vr": "SQ", "Value": self.referenced}
        return body


def _sop_reference(sop_class_uid: str, sop_instance_uid: str) -> dict[str, Any]:
    """Return a response item with a part's SOP Class and Instance UIDs.

    A UID that is missing is left out. One that is not valid is sent
    without a value, because the field may contain anything, a patient's
    name included, and DICOM JSON allows an attribute with no value.
    """
    item: dict[str, Any] = {}
    for tag, uid in (("00081150", sop_class_uid), ("00081155", sop_instance_uid)):
        if uid:
            item[tag] = {"vr": "UI", "Value": [uid]} if is_uid(uid) else {"vr": "UI"}
    return item


@dataclass(frozen=True)
class _PartHeader:
    sop_class_uid: str
    sop_instance_uid: str
    study_instance_uid: str
    transfer_syntax_uid: str


def _read_part_header(path: Path) -> _PartHeader:
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        transfer_syntax = str(ds.file_meta.get("TransferSyntaxUID", ""))
    except Exception:  # pydicom raises many kinds on broken input
        return _PartHeader("", "", "", "")
    return _PartHeader(
        str(ds.get("SOPClassUID", "") or ""),
        str(ds.get("SOPInstanceUID", "") or ""),
        str(ds.get("StudyInstanceUID", "") or ""),
        transfer_syntax,
    )


def _refusal(header: _PartHeader, study_instance_uid: str | None) -> tuple[int, str]:
    """Return the failure reason and message for a part that is not accepted."""
    if study_instance_uid and header.study_instance_uid != study_instance_uid:
        return (
            FAILURE_DATASET_DOES_NOT_MATCH_SOP_CLASS,
            "StudyInstanceUID differs from the study in the request URL",
        )
    if header.sop_class_uid and header.sop_class_uid not in _SUPPORTED_SOP_CLASSES:
        return (
            FAILURE_SOP_CLASS_NOT_SUPPORTED,
            f"SOPClassUID {quoted_uid(header.sop_class_uid)} is not a supported "
            "storage class",
        )
    if (
        header.transfer_syntax_uid
        and header.transfer_syntax_uid not in _SUPPORTED_TRANSFER_SYNTAXES
    ):
        return (
            FAILURE_TRANSFER_SYNTAX_NOT_SUPPORTED,
            f"TransferSyntaxUID {quoted_uid(header.transfer_syntax_uid)} is not "
            "supported",
        )
    return 0, ""


def _quarantine_part(path: Path, reason: str) -> None:
    named = path.with_name(f"STOW-RS part {path.stem[-8:]}.dcm")
    try:
        path.rename(named)
        kept = quarantine_file(named, QuarantinedFile.Kind.DICOM, reason, move=True)
    except (OSError, DatabaseError) as error:
        logger.error(
            "Could not quarantine a rejected STOW-RS part: %s", type(error).__name__
        )
        return
    logger.warning("Rejected a STOW-RS part, quarantined as %d: %s", kept.pk, reason)


def _store_part(
    headers: dict[str, str],
    path: Path,
    study_instance_uid: str | None,
    response: StoreResponse,
) -> None:
    content_type = headers.get("content-type", "").split(";")[0].strip().lower()
    header = _read_part_header(path)
    sop_class, sop_instance = header.sop_class_uid, header.sop_instance_uid
    if content_type != "application/dicom":
        reason, message = FAILURE_CANNOT_UNDERSTAND, "part is not application/dicom"
    else:
        reason, message = _refusal(header, study_instance_uid)
    if reason:
        _quarantine_part(path, message)
        response.add_failed(sop_class, sop_instance, reason)
        return

    try:
        import_dicom_file(path, move=True)
    except DatasetMismatchError as error:
        _quarantine_part(path, str(error))
        response.add_failed(
            sop_class, sop_instance, FAILURE_DATASET_DOES_NOT_MATCH_SOP_CLASS
        )
    except UnusableDicomError as error:
        _quarantine_part(path, str(error))
        response.add_failed(sop_class, sop_instance, FAILURE_CANNOT_UNDERSTAND)
    except (OSError, DatabaseError) as error:
        logger.error(
            "Could not store a STOW-RS part: %s", describe_storage_error(error)
        )
        response.add_failed(sop_class, sop_instance, FAILURE_OUT_OF_RESOURCES)
    else:
        response.add_stored(sop_class, sop_instance)


def store_instances(
    stream: ReadableStream, boundary: bytes, study_instance_uid: str | None
) -> StoreResponse:
    """Store every part of a STOW-RS body and return the response to send.

    Raises MalformedBodyError when the body cannot be parsed; the parts
    stored before the error stay stored, since each was complete.
    """
    response = StoreResponse()
    with tempfile.TemporaryDirectory(prefix="viewbox-stow-") as folder:
        for headers, path in iter_parts(stream, boundary, Path(folder)):
            _store_part(headers, path, study_instance_uid, response)
            path.unlink(missing_ok=True)
    logger.info(
        "STOW-RS request: %d instances stored, %d failed",
        len(response.referenced),
        len(response.failed),
    )
    return response
