"""Import HL7 v2 messages from a RIS into patients, exams and report versions.

Each message is applied in one transaction. A message that cannot be applied
leaves nothing behind except an HL7Message row with status REJECTED, its text
and the reason. Reasons quote codes (message types, statuses, facility and
location codes) but never names, dates, identifiers or report text, so the
import command can print them. Log lines carry control IDs, message types,
field references like "OBR-25" and internal ids, but no patient data.

For every message type, an empty field leaves the stored value unchanged and
the HL7 null value "" clears an optional one.

The import command and the MLLP listener both call import_message, so a
message is applied the same way whichever way it arrives.
"""

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, tzinfo
from pathlib import Path
from typing import Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from django.conf import settings
from django.db import DataError, IntegrityError, models, transaction
from django.utils import timezone

from viewbox.audit.actions import record_event
from viewbox.directory.models import ImagingGroup, Location, State
from viewbox.ingest.hl7_parsing import (
    HL7_NULL,
    HL7Error,
    Message,
    NotHL7Error,
    Segment,
    parse_message,
    read_header_labels,
    read_sending_facility,
    split_file,
    split_messages,
)
from viewbox.ingest.models import HL7Message, QuarantinedFile
from viewbox.ingest.patient_merge import MergeConflict, merge_patients
from viewbox.ingest.quarantine import quarantine_file
from viewbox.records.actions import attach_waiting_studies
from viewbox.records.models import Exam, Patient, ReportVersion, Visit
from viewbox.records.release import SIGNED_STATUSES

logger = logging.getLogger(__name__)

# Signing times up to this far ahead of our clock are taken as clock skew.
SIGNING_CLOCK_SKEW = timedelta(minutes=5)

ACTOR_KIND = "hl7"
# ORC-1 order control codes (HL7 table 0119) that are applied.
ORDER_CONTROLS = ("NW", "XO", "SC", "CA")
# ORC-5 order status codes (HL7 table 0038) that are applied.
ORDER_STATUSES = {
    "SC": Exam.Status.SCHEDULED,
    "IP": Exam.Status.IN_PROGRESS,
    "CM": Exam.Status.COMPLETED,
    "CA": Exam.Status.CANCELLED,
}
# OBR-25 result status codes (HL7 table 0123) that are applied.
RESULT_STATUSES = {
    "P": ReportVersion.Status.PRELIMINARY,
    "F": ReportVersion.Status.FINAL,
    "C": ReportVersion.Status.CORRECTED,
}
# PID-8 administrative sex (HL7 table 0001).
ADMINISTRATIVE_SEXES = ("F", "M", "O", "U", "A", "N")
# OBX-2 value types whose OBX-5 is report text.
TEXT_VALUE_TYPES = ("TX", "FT", "ST")
# OBX-3 identifier (code or text, any case) that marks an addendum. An ORU
# whose text OBX segments all carry it appends to the last signed report
# instead of replacing it.
ADDENDUM_IDENTIFIER = "ADDENDUM"


@dataclass(frozen=True)
class ImportResult:
    """Outcome of importing one message, or a file that was not HL7 at all."""

    status: Literal["processed", "duplicate", "rejected"]
    control_id: str = ""
    message_type: str = ""
    error: str = ""
    # Where the error is, like "OBR-25"; never a value from the message.
    error_field: str = ""
    # MSA-1 acknowledgment code for the sender: AA, AE or AR.
    ack_code: str = "AA"
    # True when the whole file was not HL7 and was copied to quarantine.
    quarantined: bool = False


@dataclass(frozen=True)
class _Context:
    message: Message
    group: ImagingGroup
    # Times without an offset are read in the zone of the group's state.
    zone: tzinfo
    # The PROCESSED row stored for this message. Its id is the audit actor.
    row: HL7Message


@dataclass
class _Changes:
    """Internal ids of the rows a message created or updated, for the log."""

    patient_id: int | None = None
    exam_ids: list[int] = field(default_factory=list)
    report_version_id: int | None = None


def import_file(path: Path | str) -> list[ImportResult]:
    """Import every message of a file and return one result per message.

    A file that is not HL7 at all is copied to QUARANTINE_DIR/hl7 with a
    QuarantinedFile row, and gives one rejected result with ``quarantined``
    set. The file itself is left in place for the caller to move or keep.
    Raises OSError when the file cannot be read.
    """
    path = Path(path)
    size = path.stat().st_size
    if size > settings.HL7_MAX_FILE_BYTES:
        return [
            _quarantine(
                path,
                f"file is {size} bytes, more than the limit of "
                f"{settings.HL7_MAX_FILE_BYTES} (HL7_MAX_FILE_BYTES)",
            )
        ]
    data = path.read_bytes()
    try:
        messages = split_file(data)
    except NotHL7Error as error:
        return [_quarantine(path, str(error))]

    source_name = _keep_tail(str(path), HL7Message, "source_name")
    return [import_message(text, source_name) for text in messages]


def import_message(
    raw: str, source_name: str = "", *, retry_of: HL7Message | None = None
) -> ImportResult:
    """Apply one message (ADT^A04, A08, A40, ORM^O01, OMI^O23 or ORU^R01).

    ``raw`` may carry MLLP framing and CR, LF or CR LF segment separators.
    A message whose MSH-10 was already processed for the same MSH-4 is a
    duplicate and changes nothing when its text is the same, and is
    rejected when it differs. A message rejected before may be sent again,
    and an identical rejection does not store a second row. ``retry_of`` is
    the REJECTED row that staff retry; it is updated instead of adding a row.
    """
    if "\x00" in raw:
        # HL7 v2 text has no NUL, and PostgreSQL cannot store one in a text
        # column, so the rejected row keeps U+FFFD in its place.
        kept = raw.replace("\x00", "\ufffd")
        return _reject(
            kept,
            source_name,
            *read_header_labels(kept),
            HL7Error("message contains a NUL character (0x00)"),
        )
    limit = settings.HL7_MAX_MESSAGE_LENGTH
    if len(raw) > limit:
        # Only the start is kept, so that the rejected row stays small.
        head = raw[:limit]
        return _reject(
            head,
            source_name,
            *read_header_labels(head),
            HL7Error(
                f"message is {len(raw)} characters, more than the limit of "
                f"{limit} (HL7_MAX_MESSAGE_LENGTH)"
            ),
        )
    texts = split_messages(raw)
    text = texts[0] if len(texts) == 1 else raw
    message_type, control_id = read_header_labels(text)
    try:
        if not texts:
            raise HL7Error("message is empty")
        if len(texts) > 1:
            raise HL7Error(f"expected one message, found {len(texts)}")
        message = parse_message(text)
        message_type, control_id = message.message_type, message.control_id
        with transaction.atomic():
            return _apply(message, text, source_name, retry_of)
    except HL7Error as error:
        return _reject(text, source_name, message_type, control_id, error, retry_of)
    except (DataError, IntegrityError) as error:
        # The database's text can quote values from the message, so only the
        # kind of error is kept.
        reason = f"the database refused the message ({type(error).__name__})"
        database_error = HL7Error(reason)
        database_error.ack_code = "AE"
        return _reject(
            text, source_name, message_type, control_id, database_error, retry_of
        )


def retry_message(row: HL7Message) -> ImportResult:
    """Apply a REJECTED message again, after staff fixed what it lacked.

    The row becomes RESOLVED when the message is processed (or was processed
    meanwhile from another copy), and keeps the new reason when it is
    rejected again.
    """
    if row.status != HL7Message.Status.REJECTED:
        raise ValueError(f"HL7 message {row.pk} is {row.status}, not rejected")
    return import_message(row.raw, row.source_name, retry_of=row)


def _apply(
    message: Message, text: str, source_name: str, retry_of: HL7Message | None
) -> ImportResult:
    control_id = message.control_id
    if not control_id:
        raise HL7Error("MSH-10 message control ID is missing", "MSH-10")
    _check_length(control_id, HL7Message, "control_id", "MSH-10", "message control ID")
    group = _lock_group(message)

    processed = _find_processed(group, control_id)
    if processed is not None and processed.raw != text:
        raise HL7Error(
            f"MSH-10 message control ID was already processed as HL7 message "
            f"{processed.pk} with other content; send a change with a new "
            "control ID",
            "MSH-10",
        )
    if processed is not None:
        logger.info(
            "Skipped HL7 message %s (%s): already processed as HL7 message %d",
            control_id,
            message.message_type,
            processed.pk,
        )
        if retry_of is not None:
            _resolve(retry_of, processed)
        return ImportResult("duplicate", control_id, message.message_type)

    handler = HANDLERS.get(message.message_type)
    if handler is None:
        raise HL7Error(
            f"MSH-9 unsupported message type '{message.message_type}' "
            f"(supported: {', '.join(HANDLERS)})",
            "MSH-9",
        )
    row = HL7Message.objects.create(
        control_id=control_id,
        sending_facility=message.sending_facility[:64],
        message_type=message.message_type,
        status=HL7Message.Status.PROCESSED,
        raw=text,
        source_name=source_name,
    )
    try:
        changes = handler(_Context(message, group, _read_zone(group.state), row))
    except HL7Error as error:
        # The message was read, but its content does not fit what is stored.
        error.ack_code = "AE"
        raise
    _resolve_earlier_rejections(row, group, retry_of)

    logger.info(
        "Processed HL7 message %s (%s) as HL7 message %d: "
        "patient %s, exams %s, report version %s",
        control_id,
        message.message_type,
        row.pk,
        changes.patient_id,
        changes.exam_ids,
        changes.report_version_id,
    )
    return ImportResult("processed", control_id, message.message_type)


def _lock_group(message: Message) -> ImagingGroup:
    """Return the group whose RIS facility is MSH-4, locking its row.

    The lock serialises imports for one group until the transaction ends, so
    two copies of a message that arrive at once cannot both pass the
    duplicate check, and two messages for a new MRN cannot both create it.
    """
    facility = message.sending_facility
    if not facility:
        raise HL7Error("MSH-4 sending facility is missing", "MSH-4")
    groups = list(
        ImagingGroup.objects.select_for_update().filter(ris_facility__iexact=facility)
    )
    if not groups:
        raise HL7Error(
            f"MSH-4 sending facility '{facility}' is not the RIS facility "
            "of any imaging group",
            "MSH-4",
        )
    if len(groups) > 1:
        raise HL7Error(
            f"MSH-4 sending facility '{facility}' matches {len(groups)} imaging "
            "groups that differ only in case",
            "MSH-4",
        )
    return groups[0]


def _find_processed(group: ImagingGroup, control_id: str) -> HL7Message | None:
    """Return the PROCESSED row of this group's MSH-10, or None.

    Rows stored before HL7Message had a sending_facility column have the
    facility read back from their text.
    """
    stored = HL7Message.objects.filter(
        control_id=control_id, status=HL7Message.Status.PROCESSED
    ).order_by("pk")
    for row in stored:
        facility = row.sending_facility or read_sending_facility(row.raw)
        if facility.casefold() == group.ris_facility.casefold():
            return row
    return None


def _resolve_earlier_rejections(
    row: HL7Message, group: ImagingGroup, retry_of: HL7Message | None
) -> None:
    """Mark the rejected copies of a message that is now processed."""
    earlier = HL7Message.objects.filter(
        status=HL7Message.Status.REJECTED,
        control_id=row.control_id,
        sending_facility__iexact=group.ris_facility,
    )
    for rejected in earlier:
        _resolve(rejected, row)
    if retry_of is not None:
        _resolve(retry_of, row)


def _resolve(rejected: HL7Message, processed: HL7Message) -> None:
    rejected.status = HL7Message.Status.RESOLVED
    rejected.resolved_by = processed
    rejected.save(update_fields=["status", "resolved_by"])
    logger.info(
        "Resolved rejected HL7 message %d by HL7 message %d",
        rejected.pk,
        processed.pk,
    )


def _reject(
    text: str,
    source_name: str,
    message_type: str,
    control_id: str,
    error: HL7Error,
    retry_of: HL7Message | None = None,
) -> ImportResult:
    """Store the REJECTED row, unless an identical rejection is stored already.

    A retried row keeps its place in the list and gets the new reason.
    """
    message_type = message_type[: _max_length(HL7Message, "message_type")]
    control_id = control_id[: _max_length(HL7Message, "control_id")]
    facility = read_sending_facility(text)[
        : _max_length(HL7Message, "sending_facility")
    ]
    if retry_of is not None:
        retry_of.error = error.reason
        retry_of.retried_at = timezone.now()
        retry_of.save(update_fields=["error", "retried_at"])
        row, created = retry_of, False
    else:
        row, created = HL7Message.objects.get_or_create(
            status=HL7Message.Status.REJECTED,
            control_id=control_id,
            raw=text,
            error=error.reason,
            defaults={
                "message_type": message_type,
                "source_name": source_name,
                "sending_facility": facility,
            },
        )
    logger.warning(
        "Rejected HL7 message %s (%s) at %s with %s, stored as HL7 message %d%s",
        control_id or "-",
        message_type or "-",
        error.field or "-",
        error.ack_code,
        row.pk,
        "" if created else " earlier",
    )
    return ImportResult(
        "rejected",
        control_id,
        message_type,
        error.reason,
        error_field=error.field,
        ack_code=error.ack_code,
    )


def _quarantine(path: Path, problem: str) -> ImportResult:
    """Copy a file that is not HL7 aside for staff and return its result."""
    reason = f"not an HL7 file: {problem}"
    row = quarantine_file(path, QuarantinedFile.Kind.HL7, reason, move=False)
    logger.warning("Quarantined HL7 input as quarantined file %d: %s", row.pk, problem)
    return ImportResult(
        "rejected",
        error=f"{reason}; copied to {row.path}",
        ack_code="AR",
        quarantined=True,
    )


# Patients (PID, in every message type)


def _import_patient(context: _Context) -> _Changes:
    """Register (ADT^A04) or update (ADT^A08) a patient.

    Both create the patient when the MRN is new. An A08 for an unknown MRN
    means the registration was missed (for example it predates the
    interface), and the A08 carries the whole PID, so creating the patient
    keeps later orders and reports from being rejected.
    """
    patient = _save_patient(context, context.message.segment("PID"))
    return _Changes(patient_id=patient.pk)


def _save_patient(context: _Context, pid: Segment) -> Patient:
    """Create or update the patient that PID describes."""
    mrn = _read_mrn(pid)
    birth_date = _read_birth_date(pid)
    text_values = {
        "family_name": _read_optional(
            pid, 5, 1, must_fit=(Patient, "family_name", "family name")
        ),
        "given_name": _read_optional(
            pid, 5, 2, must_fit=(Patient, "given_name", "given name")
        ),
        "sex": _read_sex(pid),
        "postal_code": _read_optional(
            pid, 11, 5, must_fit=(Patient, "postal_code", "ZIP code")
        ),
        "phone": _read_optional(
            pid, 13, 1, must_fit=(Patient, "phone", "phone number")
        ),
    }
    if text_values["family_name"] == "":
        raise HL7Error("PID-5 family name is required and cannot be cleared", "PID-5")

    patient = Patient.objects.filter(group=context.group, mrn=mrn).first()
    if patient is None:
        if text_values["family_name"] is None:
            raise HL7Error("PID-5 family name is missing", "PID-5")
        if birth_date is None:
            raise HL7Error("PID-7 birth date is missing", "PID-7")
        patient = Patient.objects.create(
            group=context.group,
            mrn=mrn,
            birth_date=birth_date,
            **{name: value or "" for name, value in text_values.items()},
        )
        changed = True
    else:
        changed_fields = _set_values(patient, {**text_values, "birth_date": birth_date})
        if changed_fields:
            patient.save(update_fields=changed_fields)
        changed = bool(changed_fields)

    if changed:
        record_event(
            "hl7.patient",
            actor_kind=ACTOR_KIND,
            actor_id=context.row.pk,
            patient_id=patient.pk,
        )
    return patient


def _read_mrn(pid: Segment) -> str:
    mrn = pid.required(3, "patient ID (MRN)")
    return _check_length(mrn, Patient, "mrn", "PID-3", "patient ID (MRN)")


def _read_birth_date(pid: Segment) -> date | None:
    if pid.is_null(7):
        raise HL7Error("PID-7 birth date is required and cannot be cleared", "PID-7")
    return pid.date(7, "birth date")


def _read_sex(pid: Segment) -> str | None:
    sex = _read_optional(pid, 8, 1)
    if sex and sex.upper() not in ADMINISTRATIVE_SEXES:
        raise HL7Error(
            f"PID-8 administrative sex '{sex}' is not one of "
            f"{', '.join(ADMINISTRATIVE_SEXES)}",
            "PID-8",
        )
    return sex.upper() if sex else sex


# Orders (ORM^O01)


def _import_order(context: _Context) -> _Changes:
    """Create or update the patient, then each ORC/OBR order of the message."""
    message = context.message
    patient = _save_patient(context, message.segment("PID"))
    location = _find_location(context, message.segment("PV1"))
    orders = _pair_orders(message)

    changes = _Changes(patient_id=patient.pk)
    for number, (orc, obr) in enumerate(orders, start=1):
        try:
            exam = _save_order(context, patient, location, orc, obr)
        except HL7Error as error:
            if len(orders) == 1:
                raise
            raise HL7Error(f"order {number}: {error.reason}", error.field) from error
        changes.exam_ids.append(exam.pk)
    return changes


def _find_location(context: _Context, pv1: Segment) -> Location:
    code = pv1.required(3, "assigned patient location")
    location = (
        Location.objects.select_related("state")
        .filter(group=context.group, ris_code=code)
        .first()
    )
    if location is None:
        raise HL7Error(
            f"PV1-3 location '{code}' was not found in imaging group "
            f"'{context.group.slug}'",
            "PV1-3",
        )
    return location


def _pair_orders(message: Message) -> list[tuple[Segment, Segment]]:
    """Return each order of an ORM as its ORC and the OBR that follows it."""
    if not message.find("ORC"):
        raise HL7Error("ORC segment is missing", "ORC")
    orders = []
    pending: Segment | None = None
    for segment in message.segments:
        if segment.name == "ORC":
            if pending is not None:
                raise HL7Error("ORC segment without an OBR segment", "ORC")
            pending = segment
        elif segment.name == "OBR":
            if pending is None:
                raise HL7Error("OBR segment without an ORC segment before it", "OBR")
            orders.append((pending, segment))
            pending = None
    if pending is not None:
        raise HL7Error("ORC segment without an OBR segment", "ORC")
    return orders


def _save_order(
    context: _Context, patient: Patient, location: Location, orc: Segment, obr: Segment
) -> Exam:
    """Create or update the exam of one order and attach waiting studies."""
    control = orc.required(1, "order control").upper()
    if control not in ORDER_CONTROLS:
        raise HL7Error(
            f"ORC-1 order control '{control}' is not one of "
            f"{', '.join(ORDER_CONTROLS)}",
            "ORC-1",
        )
    status = _read_order_status(orc, control)
    accession_number = _check_length(
        obr.required(3, "filler order number (accession number)"),
        Exam,
        "accession_number",
        "OBR-3",
        "accession number",
    )
    text_values = _read_order_values(obr)
    performed_at = obr.timestamp(7, "observation date/time", context.zone)
    observation_end = obr.timestamp(8, "observation end date/time", context.zone)

    exam = (
        Exam.objects.select_for_update()
        .select_related("visit")
        .filter(group=context.group, accession_number=accession_number)
        .first()
    )
    if exam is not None and exam.visit.patient_id != patient.pk:
        raise HL7Error(
            f"OBR-3 accession number belongs to exam {exam.pk} of another patient; "
            "an order cannot move an exam to another patient",
            "OBR-3",
        )
    if exam is None and control == "CA":
        raise HL7Error(
            "ORC-1 order control 'CA' cancels an accession number (OBR-3) that was "
            f"not found in imaging group '{context.group.slug}'",
            "OBR-3",
        )
    if exam is None and performed_at is None:
        raise HL7Error("OBR-7 observation date/time is missing", "OBR-7")
    if exam is None and text_values["description"] is None:
        raise HL7Error("OBR-4 universal service ID is missing", "OBR-4")

    performed_at = performed_at or (exam.performed_at if exam else None)
    status = status or (Exam.Status(exam.status) if exam else Exam.Status.SCHEDULED)
    completed_at = None
    if status == Exam.Status.COMPLETED:
        # A repeated completion keeps the first time unless OBR-8 states one.
        completed_at = (
            observation_end
            or (exam.completed_at if exam else None)
            or _read_message_time(context)
        )
    visit = _get_visit(patient, location, performed_at, exam)

    if exam is None:
        exam = Exam.objects.create(
            group=context.group,
            visit=visit,
            accession_number=accession_number,
            status=status,
            performed_at=performed_at,
            completed_at=completed_at,
            **{name: value or "" for name, value in text_values.items()},
        )
        attach_waiting_studies(exam)
        changed = True
    else:
        changed_fields = _set_values(
            exam,
            {
                **text_values,
                "visit": visit,
                "status": status,
                "performed_at": performed_at,
            },
        )
        # completed_at is written even when it becomes None: an exam that is
        # no longer completed has no completion time.
        if exam.completed_at != completed_at:
            exam.completed_at = completed_at
            changed_fields.append("completed_at")
        if changed_fields:
            exam.save(update_fields=changed_fields)
        changed = bool(changed_fields)

    if changed:
        record_event(
            "hl7.order",
            actor_kind=ACTOR_KIND,
            actor_id=context.row.pk,
            patient_id=patient.pk,
            exam_id=exam.pk,
        )
    return exam


def _read_order_status(orc: Segment, control: str) -> Exam.Status | None:
    """Return the status ORC-5 sets, or None to keep the stored one."""
    code = orc.get(5).upper()
    if code and code not in ORDER_STATUSES:
        raise HL7Error(
            f"ORC-5 order status '{code}' is not one of {', '.join(ORDER_STATUSES)}",
            "ORC-5",
        )
    if control == "CA":
        if code and code != "CA":
            raise HL7Error(
                f"ORC-1 order control 'CA' conflicts with ORC-5 order status '{code}'",
                "ORC-5",
            )
        return Exam.Status.CANCELLED
    return ORDER_STATUSES[code] if code else None


def _read_order_values(obr: Segment) -> dict[str, str | None]:
    """Read the descriptive fields of an exam from OBR (None keeps a value)."""
    procedure_code = _read_optional(
        obr, 4, 1, must_fit=(Exam, "procedure_code", "procedure code")
    )
    # The description is required, so a null OBR-4 keeps the stored one.
    description = _read_optional(obr, 4, 2) or procedure_code or None
    modality = _read_optional(
        obr, 24, 1, must_fit=(Exam, "modality", "diagnostic service section ID")
    )

    referring_physician = None
    if obr.is_null(16):
        referring_physician = ""
    elif obr.get(16, 2) or obr.get(16, 3):
        referring_physician = _format_doctor(
            family_name=obr.get(16, 2),
            given_name=obr.get(16, 3),
            suffix=obr.get(16, 5),
            prefix=obr.get(16, 6),
        )

    return {
        "procedure_code": procedure_code,
        "description": _truncate(description, Exam, "description"),
        "modality": modality,
        "reason": _truncate(_read_reason(obr), Exam, "reason"),
        "referring_physician": _truncate(
            referring_physician, Exam, "referring_physician"
        ),
    }


def _read_reason(obr: Segment) -> str | None:
    """Read OBR-31 (CE code^text, repeating) as text, the code if it has none."""
    if obr.is_null(31):
        return ""
    reasons = []
    for number in range(1, len(obr.repetitions(31)) + 1):
        text = obr.get(31, 2, repetition=number) or obr.get(31, 1, repetition=number)
        if text:
            reasons.append(text)
    return "; ".join(reasons) or None


def _read_message_time(context: _Context) -> datetime:
    header = context.message.header
    sent_at = header.timestamp(7, "date/time of message", context.zone)
    if sent_at is None:
        raise HL7Error("MSH-7 date/time of message is missing", "MSH-7")
    return sent_at


def _get_visit(
    patient: Patient,
    location: Location,
    performed_at: datetime | None,
    exam: Exam | None,
) -> Visit:
    """Return the visit of the exam's patient, location and date of service.

    The date of service is the date of OBR-7 in the location's own zone.
    """
    if performed_at is None:
        # Only an exam stored without a time reaches this; keep its date.
        assert exam is not None
        date_of_service = exam.visit.date_of_service
    else:
        date_of_service = performed_at.astimezone(_read_zone(location.state)).date()
    visit, _ = Visit.objects.get_or_create(
        patient=patient, location=location, date_of_service=date_of_service
    )
    return visit


# Reports (ORU^R01)


def _import_report(context: _Context) -> _Changes:
    """Store the report of an ORU^R01 as a new ReportVersion."""
    message = context.message
    patient = _find_patient(context, message.segment("PID"))
    obr = _single_obr(message)
    exam = _find_reported_exam(context, patient, obr)

    code = obr.required(25, "result status").upper()
    if code not in RESULT_STATUSES:
        raise HL7Error(
            f"OBR-25 result status '{code}' is not one of {', '.join(RESULT_STATUSES)}",
            "OBR-25",
        )
    status = RESULT_STATUSES[code]
    interpreted_at = obr.timestamp(
        32, "principal result interpreter date/time", context.zone, component=2
    )
    sent_at = obr.timestamp(22, "results report/status change date/time", context.zone)

    # A preliminary report has no signing time, even when OBR-32.2 has one.
    signed_at = None
    if status != ReportVersion.Status.PRELIMINARY:
        signed_at = interpreted_at or sent_at
        if signed_at is None:
            raise HL7Error(
                "final report without a signing time: OBR-32.2 and OBR-22 are empty",
                "OBR-32",
            )
        if signed_at > timezone.now() + SIGNING_CLOCK_SKEW:
            # The release hold counts from the signing time; one in the
            # future would hold the report for longer than the law requires.
            raise HL7Error(
                f"signing time {signed_at.isoformat()} is in the future; "
                "check the RIS clock and time zone, then retry",
                "OBR-32" if interpreted_at is not None else "OBR-22",
            )
    text = _read_report_text(message)
    if not text.strip():
        raise HL7Error(
            "report text is missing: no OBX segment of value type "
            f"{', '.join(TEXT_VALUE_TYPES)} has an OBX-5",
            "OBX-5",
        )
    if _is_addendum(message):
        text = _append_addendum(exam, text)
        if status == ReportVersion.Status.FINAL:
            status = ReportVersion.Status.CORRECTED
    if ReportVersion.objects.filter(message_control_id=message.control_id).exists():
        raise HL7Error(
            "MSH-10 message control ID is already used by a report version "
            "from another sending facility",
            "MSH-10",
        )

    version = ReportVersion.objects.create(
        exam=exam,
        status=status,
        text=text,
        radiologist=_truncate(_read_radiologist(obr), ReportVersion, "radiologist")
        or "",
        signed_at=signed_at,
        sent_to_referrer_at=sent_at,
        message_control_id=message.control_id,
    )
    record_event(
        "hl7.report",
        actor_kind=ACTOR_KIND,
        actor_id=context.row.pk,
        patient_id=patient.pk,
        exam_id=exam.pk,
    )
    return _Changes(
        patient_id=patient.pk, exam_ids=[exam.pk], report_version_id=version.pk
    )


def _find_patient(context: _Context, pid: Segment) -> Patient:
    patient = Patient.objects.filter(group=context.group, mrn=_read_mrn(pid)).first()
    if patient is None:
        raise HL7Error(
            f"PID-3 patient ID was not found in imaging group '{context.group.slug}'",
            "PID-3",
        )
    return patient


def _single_obr(message: Message) -> Segment:
    # NOTE: ReportVersion.message_control_id is unique, so one message can
    # store one report. A report covering several accessions is rejected.
    obr = message.segment("OBR")
    count = len(message.find("OBR"))
    if count > 1:
        raise HL7Error(
            f"ORU^R01 contains {count} OBR segments, but only one report "
            "per message is supported",
            "OBR",
        )
    return obr


def _find_reported_exam(context: _Context, patient: Patient, obr: Segment) -> Exam:
    accession_number = obr.required(3, "filler order number (accession number)")
    exam = (
        Exam.objects.select_related("visit")
        .filter(group=context.group, accession_number=accession_number)
        .first()
    )
    if exam is None:
        raise HL7Error(
            "OBR-3 accession number was not found in imaging group "
            f"'{context.group.slug}'",
            "OBR-3",
        )
    if exam.visit.patient_id != patient.pk:
        raise HL7Error(
            f"OBR-3 accession number belongs to exam {exam.pk} of another patient "
            "than PID-3",
            "OBR-3",
        )
    return exam


def _read_radiologist(obr: Segment) -> str:
    """Read the name in OBR-32.1, which may be ID&Family&Given&Middle&Suffix&Prefix."""
    parts = obr.subcomponents(32, 1)
    if len(parts) <= 1:
        return parts[0] if parts else ""
    parts += [""] * (6 - len(parts))
    return _format_doctor(
        family_name=parts[1], given_name=parts[2], suffix=parts[4], prefix=parts[5]
    )


def _read_report_text(message: Message) -> str:
    """Join OBX-5 of the text OBX segments, one line per value, in order."""
    lines = []
    for obx in _text_observations(message):
        lines += ["" if text == HL7_NULL else text for text in obx.texts(5)]
    return "\n".join(lines)


def _text_observations(message: Message) -> list[Segment]:
    return [
        obx for obx in message.find("OBX") if obx.get(2).upper() in TEXT_VALUE_TYPES
    ]


def _is_addendum(message: Message) -> bool:
    """Return whether every text OBX has ADDENDUM as OBX-3 code or text.

    A message that also carries other report text is a whole report, and
    replaces the stored one like any corrected report.
    """
    observations = _text_observations(message)
    return bool(observations) and all(
        ADDENDUM_IDENTIFIER in (obx.get(3, 1).upper(), obx.get(3, 2).upper())
        for obx in observations
    )


def _append_addendum(exam: Exam, addendum: str) -> str:
    """Return the last signed report of the exam followed by the addendum."""
    previous = (
        exam.report_versions.filter(status__in=SIGNED_STATUSES)
        .order_by("received_at", "pk")
        .last()
    )
    if previous is None:
        raise HL7Error(
            "addendum (OBX-3 ADDENDUM) for an exam without a signed report; "
            "send the final report first",
            "OBX-3",
        )
    if not addendum.lstrip().upper().startswith(ADDENDUM_IDENTIFIER):
        addendum = f"ADDENDUM:\n{addendum}"
    return f"{previous.text}\n\n{addendum}"


# Merges (ADT^A40)


def _merge_patient(context: _Context) -> _Changes:
    """Merge the patient of MRG-1 into the patient of PID-3.

    PID describes the surviving patient and is applied like an A08, so the
    surviving MRN may be new. The prior patient must exist. A resend after
    the merge is a duplicate, so it is not rejected for a missing MRG-1.
    """
    message = context.message
    pid = message.segment("PID")
    mrg = message.segment("MRG")
    count = len(message.find("MRG"))
    if count > 1:
        raise HL7Error(
            f"ADT^A40 contains {count} MRG segments, but only one merge per "
            "message is supported",
            "MRG",
        )
    prior_mrn = mrg.required(1, "prior patient identifier list")
    if prior_mrn == _read_mrn(pid):
        raise HL7Error("MRG-1 prior patient ID is the same as PID-3", "MRG-1")
    prior = (
        Patient.objects.select_for_update()
        .filter(group=context.group, mrn=prior_mrn)
        .first()
    )
    if prior is None:
        raise HL7Error(
            "MRG-1 prior patient ID was not found in imaging group "
            f"'{context.group.slug}'",
            "MRG-1",
        )

    surviving = _save_patient(context, pid)
    try:
        result = merge_patients(
            prior, surviving, actor_kind=ACTOR_KIND, actor_id=context.row.pk
        )
    except MergeConflict as error:
        raise HL7Error(
            f"MRG-1 prior patient cannot be merged: {error}", "MRG-1"
        ) from error
    return _Changes(patient_id=surviving.pk, exam_ids=result.exam_ids)


HANDLERS: dict[str, Callable[[_Context], _Changes]] = {
    "ADT^A04": _import_patient,
    "ADT^A08": _import_patient,
    "ADT^A40": _merge_patient,
    "ORM^O01": _import_order,
    # OMI^O23 (imaging order, HL7 v2.5) carries the same ORC and OBR fields
    # as ORM^O01; its TQ1 and IPC segments are not read.
    "OMI^O23": _import_order,
    "ORU^R01": _import_report,
}


# Shared helpers


def _read_optional(
    segment: Segment,
    field_number: int,
    component: int = 1,
    must_fit: tuple[type[models.Model], str, str] | None = None,
) -> str | None:
    """Return a value, "" for the HL7 null value, or None when it is empty.

    ``must_fit`` names a model, its field and a label for the error raised
    when the value is longer than that field allows.
    """
    if (
        segment.is_null(field_number)
        or segment.raw(field_number, component) == HL7_NULL
    ):
        return ""
    value = segment.get(field_number, component).strip()
    if must_fit is not None and value:
        model, name, label = must_fit
        _check_length(value, model, name, segment.ref(field_number, component), label)
    return value or None


def _format_doctor(
    family_name: str, given_name: str, suffix: str = "", prefix: str = ""
) -> str:
    """Return a display name like "Dr. Ima Reader", with the sender's prefix if any."""
    if not family_name and not given_name:
        return ""
    parts = (prefix or "Dr.", given_name, family_name, suffix)
    return " ".join(part for part in parts if part)


def _read_zone(state: State) -> tzinfo:
    try:
        return ZoneInfo(state.time_zone)
    except (ZoneInfoNotFoundError, ValueError):
        raise HL7Error(
            f"state {state.code} has an unknown time zone '{state.time_zone}'"
        ) from None


def _set_values(instance: models.Model, values: dict[str, object]) -> list[str]:
    """Set the values that are not None and differ; return their names."""
    changed = [
        name
        for name, value in values.items()
        if value is not None and getattr(instance, name) != value
    ]
    for name in changed:
        setattr(instance, name, values[name])
    return changed


def _max_length(model: type[models.Model], name: str) -> int:
    max_length = getattr(model._meta.get_field(name), "max_length", None)
    assert isinstance(max_length, int), f"{model.__name__}.{name} has no max_length"
    return max_length


def _check_length(
    value: str, model: type[models.Model], name: str, ref: str, label: str
) -> str:
    """Return the value, raising HL7Error when it does not fit the model field."""
    max_length = _max_length(model, name)
    if len(value) > max_length:
        raise HL7Error(f"{ref} {label} is longer than {max_length} characters", ref)
    return value


def _truncate(value: str | None, model: type[models.Model], name: str) -> str | None:
    """Shorten display text to fit the model field, marking the cut with "…"."""
    max_length = _max_length(model, name)
    if value is None or len(value) <= max_length:
        return value
    return value[: max_length - 1] + "…"


def _keep_tail(path: str, model: type[models.Model], name: str) -> str:
    """Fit a path to a model field, keeping its end, which names the file."""
    return path[-_max_length(model, name) :]
