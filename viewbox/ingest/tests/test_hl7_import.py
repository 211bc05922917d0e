import logging
from datetime import UTC, date, datetime
from io import StringIO
from pathlib import Path
from typing import Any

import pytest
from django.core.management import CommandError, call_command

from viewbox.audit.models import AuditEvent
from viewbox.directory.models import Location
from viewbox.ingest.hl7_import import import_file, import_message
from viewbox.ingest.models import HL7Message, QuarantinedFile
from viewbox.records.models import Exam, Patient, ReportVersion, Study, Visit

# Obviously fake patients of RadNet Los Angeles (facility RLA, Pacific time).
ALICE_MRN = "MRN1001"
BOB_MRN = "MRN2002"


def segment(name: str, fields: dict[int, str]) -> str:
    """Build a segment from its fields, keyed by HL7 field number."""
    values = [""] * max(fields)
    for number, value in fields.items():
        values[number - 1] = value
    return "|".join([name, *values])


def message(*segments: str) -> str:
    return "\r".join(segments) + "\r"


def msh(
    message_type: str,
    control_id: str,
    *,
    facility: str = "RLA",
    sent: str = "20261120230000",
) -> str:
    return (
        f"MSH|^~\\&|RIS|{facility}|VIEWBOX|VIEWBOX|{sent}||{message_type}|"
        f"{control_id}|P|2.5.1"
    )


ALICE = segment(
    "PID",
    {
        1: "1",
        3: f"{ALICE_MRN}^^^RLA^MR",
        5: "TESTPATIENT^ALICE^Q",
        7: "19800412",
        8: "F",
        11: "100 Example Way^^Los Angeles^CA^90024",
        13: "(310)555-0100",
    },
)
BOB = segment(
    "PID",
    {
        1: "1",
        3: f"{BOB_MRN}^^^RLA^MR",
        5: "SAMPLE^BOB",
        7: "19721103",
        8: "M",
        11: "12 Sample Road^^Santa Monica^CA^90401",
        13: "(310)555-0199",
    },
)
SANTA_MONICA = segment("PV1", {1: "1", 2: "O", 3: "RLA-SANTAM"})
REPORT = (
    "OBX|1|TX|71250^CT CHEST||EXAM: CT chest without contrast.||||||F",
    "OBX|2|TX|71250^CT CHEST||FINDINGS: The lungs are clear.||||||F",
    "OBX|3|TX|71250^CT CHEST||IMPRESSION: No acute abnormality.||||||F",
)
REPORT_TEXT = (
    "EXAM: CT chest without contrast.\n"
    "FINDINGS: The lungs are clear.\n"
    "IMPRESSION: No acute abnormality."
)


def adt(event: str, control_id: str, pid: str = ALICE, **header: str) -> str:
    return message(
        msh(f"ADT^{event}", control_id, **header),
        segment("EVN", {1: event}),
        pid,
        SANTA_MONICA,
    )


def order_segments(
    accession: str = "ACC1001",
    *,
    control: str = "NW",
    status: str = "SC",
    observed: str = "20261120213000",
    ended: str = "",
    service: str = "71250^CT CHEST WITHOUT CONTRAST",
    modality: str = "CT",
) -> tuple[str, str]:
    orc = segment("ORC", {1: control, 2: accession, 3: accession, 5: status})
    obr = segment(
        "OBR",
        {
            1: "1",
            2: accession,
            3: accession,
            4: service,
            7: observed,
            8: ended,
            16: "1234567890^Example^Pat^^^Dr.",
            24: modality,
            31: "R05.1^Persistent cough for six weeks",
        },
    )
    return orc, obr


def orm(
    control_id: str,
    *,
    pid: str = ALICE,
    pv1: str = SANTA_MONICA,
    sent: str = "20261120230000",
    **order: str,
) -> str:
    return message(
        msh("ORM^O01", control_id, sent=sent), pid, pv1, *order_segments(**order)
    )


def oru(
    control_id: str,
    *,
    result_status: str = "F",
    accession: str = "ACC1001",
    pid: str = ALICE,
    interpreter: str = "1112223334&Reader&Ima&&&Dr.^20261121150000",
    status_changed: str = "20261121151500",
    observations: tuple[str, ...] = REPORT,
) -> str:
    obr = segment(
        "OBR",
        {
            1: "1",
            2: accession,
            3: accession,
            4: "71250^CT CHEST WITHOUT CONTRAST",
            7: "20261120213000",
            22: status_changed,
            25: result_status,
            32: interpreter,
        },
    )
    return message(msh("ORU^R01", control_id), pid, obr, *observations)


def stored_rows() -> dict[str, list[dict[str, Any]]]:
    """Return every record, audit and quarantine row, to compare before and after."""
    models = (Patient, Visit, Exam, ReportVersion, Study, AuditEvent, QuarantinedFile)
    return {
        model.__name__: list(model.objects.order_by("pk").values()) for model in models
    }


def rejected_row() -> HL7Message:
    return HL7Message.objects.get(status=HL7Message.Status.REJECTED)


def run_command(*paths: Path, verbosity: int = 1) -> tuple[str, str, int]:
    stdout, stderr = StringIO(), StringIO()
    try:
        call_command(
            "import_hl7",
            *map(str, paths),
            stdout=stdout,
            stderr=stderr,
            verbosity=verbosity,
        )
        status = 0
    except CommandError as error:
        status = error.returncode
    return stdout.getvalue(), stderr.getvalue(), status


@pytest.fixture
def alice_order(california: Location) -> Exam:
    """Alice registered with a scheduled CT, ACC1001, through the importer."""
    assert import_message(orm("SETUP-0001")).status == "processed"
    return Exam.objects.get()


# Refused input


@pytest.mark.django_db
class TestUnparseableInput:
    def test_text_without_msh_is_rejected(self, alice_order) -> None:
        before = stored_rows()

        result = import_message("Dear colleague, see the attached report.")

        assert result.status == "rejected"
        assert result.error == "message does not start with an MSH segment"
        row = rejected_row()
        assert row.raw == "Dear colleague, see the attached report.\r"
        assert row.error == "message does not start with an MSH segment"
        assert stored_rows() == before

    def test_broken_line_rejects_the_message(self, alice_order) -> None:
        before = stored_rows()
        text = oru("MSG0100").replace("The lungs are clear.", "The lungs\nare clear.")

        result = import_message(text)

        assert result.error == (
            "line 6 is not an HL7 segment "
            "(expected a segment ID like OBX followed by '|')"
        )
        assert (result.message_type, result.control_id) == ("ORU^R01", "MSG0100")
        assert stored_rows() == before

    def test_binary_file_is_quarantined_and_left_in_place(
        self, california, tmp_path, settings
    ) -> None:
        source = tmp_path / "scan.hl7"
        source.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR")

        [result] = import_file(source)

        quarantined = QuarantinedFile.objects.get()
        assert result.status == "rejected"
        assert result.quarantined
        assert result.error == (
            "not an HL7 file: binary data (byte 0x1a at offset 6); "
            f"copied to {quarantined.path}"
        )
        assert quarantined.kind == QuarantinedFile.Kind.HL7
        assert quarantined.original_name == "scan.hl7"
        assert (
            quarantined.reason == "not an HL7 file: binary data (byte 0x1a at offset 6)"
        )
        copy = Path(quarantined.path)
        assert copy.parent == Path(settings.QUARANTINE_DIR) / "hl7"
        assert copy.read_bytes() == source.read_bytes()
        assert source.exists()
        assert HL7Message.objects.count() == 0

    def test_text_file_without_msh_is_quarantined(self, california, tmp_path) -> None:
        source = tmp_path / "notes.txt"
        source.write_text("Patient called about her appointment.\n")

        [result] = import_file(source)

        assert result.quarantined
        assert QuarantinedFile.objects.get().reason == (
            "not an HL7 file: no MSH segment found"
        )
        assert HL7Message.objects.count() == 0
        assert Patient.objects.count() == 0


@pytest.mark.django_db
class TestUnknownFacility:
    def test_message_from_unknown_facility_is_rejected(self, alice_order) -> None:
        before = stored_rows()
        text = adt("A08", "MSG0200", facility="ELSEWHERE")

        result = import_message(text, source_name="inbox/adt.hl7")

        reason = (
            "MSH-4 sending facility 'ELSEWHERE' is not the RIS facility "
            "of any imaging group"
        )
        assert result.error == reason
        row = rejected_row()
        assert row.control_id == "MSG0200"
        assert row.message_type == "ADT^A08"
        assert row.raw == text
        assert row.error == reason
        assert row.source_name == "inbox/adt.hl7"
        assert stored_rows() == before

    def test_facility_is_matched_without_regard_to_case(self, california) -> None:
        result = import_message(adt("A04", "MSG0201", facility="rla"))

        assert result.status == "processed"
        assert Patient.objects.get().group == california.group


@pytest.mark.django_db
class TestUnsupportedMessageType:
    def test_other_message_type_is_rejected(self, alice_order) -> None:
        before = stored_rows()

        result = import_message(adt("A01", "MSG0300"))

        assert result.error == (
            "MSH-9 unsupported message type 'ADT^A01' "
            "(supported: ADT^A04, ADT^A08, ADT^A40, ORM^O01, OMI^O23, ORU^R01)"
        )
        assert result.ack_code == "AR"
        assert stored_rows() == before


@pytest.mark.django_db
class TestUnknownLocation:
    def test_order_for_unknown_location_is_rejected(self, california) -> None:
        before = stored_rows()
        unknown = segment("PV1", {1: "1", 2: "O", 3: "RLA-NOWHERE"})

        result = import_message(orm("MSG0400", pv1=unknown))

        assert result.error == (
            "PV1-3 location 'RLA-NOWHERE' was not found in imaging group "
            "'radnet-los-angeles'"
        )
        # The patient that the same message registered is rolled back too.
        assert stored_rows() == before
        assert Patient.objects.count() == 0

    def test_location_of_another_group_is_rejected(self, california, maryland) -> None:
        before = stored_rows()
        towson = segment("PV1", {1: "1", 2: "O", 3: "AR-TOWSON"})

        result = import_message(orm("MSG0401", pv1=towson))

        assert result.error == (
            "PV1-3 location 'AR-TOWSON' was not found in imaging group "
            "'radnet-los-angeles'"
        )
        assert stored_rows() == before


@pytest.mark.django_db
class TestReportForUnknownExam:
    def test_report_for_unknown_accession_is_rejected(self, alice_order) -> None:
        before = stored_rows()

        result = import_message(oru("MSG0500", accession="ACC9999"))

        assert result.error == (
            "OBR-3 accession number was not found in imaging group 'radnet-los-angeles'"
        )
        assert stored_rows() == before
        assert ReportVersion.objects.count() == 0

    def test_report_for_unknown_patient_is_rejected(self, alice_order) -> None:
        before = stored_rows()

        result = import_message(oru("MSG0501", pid=BOB))

        assert result.error == (
            "PID-3 patient ID was not found in imaging group 'radnet-los-angeles'"
        )
        assert stored_rows() == before

    def test_report_for_exam_of_another_patient_is_rejected(self, alice_order) -> None:
        import_message(adt("A04", "MSG0502", pid=BOB))
        before = stored_rows()

        result = import_message(oru("MSG0503", pid=BOB))

        assert result.error == (
            f"OBR-3 accession number belongs to exam {alice_order.pk} of another "
            "patient than PID-3"
        )
        assert stored_rows() == before


@pytest.mark.django_db
class TestReportStatus:
    @pytest.mark.parametrize("status", ["X", "I", "R"])
    def test_other_result_status_is_rejected(self, alice_order, status) -> None:
        before = stored_rows()

        result = import_message(oru("MSG0600", result_status=status))

        assert result.error == (
            f"OBR-25 result status '{status}' is not one of P, F, C"
        )
        assert stored_rows() == before

    def test_missing_result_status_is_rejected(self, alice_order) -> None:
        result = import_message(oru("MSG0601", result_status=""))

        assert result.error == "OBR-25 result status is missing"


@pytest.mark.django_db
class TestFinalReportWithoutSigningTime:
    @pytest.mark.parametrize("status", ["F", "C"])
    def test_signed_report_without_time_is_rejected(self, alice_order, status) -> None:
        import_message(oru("MSG0700", result_status="P"))
        before = stored_rows()

        result = import_message(
            oru(
                "MSG0701",
                result_status=status,
                interpreter="1112223334&Reader&Ima&&&Dr.",
                status_changed="",
            )
        )

        assert result.error == (
            "final report without a signing time: OBR-32.2 and OBR-22 are empty"
        )
        assert stored_rows() == before
        assert ReportVersion.objects.get().status == ReportVersion.Status.PRELIMINARY


@pytest.mark.django_db
class TestSigningTimeInTheFuture:
    def test_report_signed_in_the_future_is_rejected(self, alice_order) -> None:
        before = stored_rows()

        result = import_message(
            oru(
                "MSG0710",
                interpreter="1112223334&Reader&Ima&&&Dr.^20991121150000",
                status_changed="20991121151500",
            )
        )

        assert result.status == "rejected"
        assert "is in the future" in result.error
        assert stored_rows() == before


@pytest.mark.django_db
class TestOrderForAnotherPatient:
    def test_order_cannot_move_an_exam_to_another_patient(self, alice_order) -> None:
        before = stored_rows()

        result = import_message(orm("MSG0800", pid=BOB, status="CM"))

        assert result.error == (
            f"OBR-3 accession number belongs to exam {alice_order.pk} of another "
            "patient; an order cannot move an exam to another patient"
        )
        assert stored_rows() == before
        assert not Patient.objects.filter(mrn=BOB_MRN).exists()


@pytest.mark.django_db
class TestInvalidFields:
    @pytest.mark.parametrize(
        ("text", "reason"),
        [
            (
                adt("A04", "MSG0900").replace("19800412", "19801332"),
                "PID-7 birth date is not a valid date (expected YYYYMMDD)",
            ),
            (
                adt("A04", "MSG0901").replace("|F|", "|W|"),
                "PID-8 administrative sex 'W' is not one of F, M, O, U, A, N",
            ),
            (
                adt("A04", "MSG0902").replace(ALICE_MRN, ""),
                "PID-3 patient ID (MRN) is missing",
            ),
            (
                adt("A04", "MSG0903").replace("19800412", ""),
                "PID-7 birth date is missing",
            ),
            (
                adt("A04", "MSG0904").replace("TESTPATIENT^ALICE^Q", ""),
                "PID-5 family name is missing",
            ),
            (
                adt("A04", "MSG0905").replace("90024", "90024-1234-5678"),
                "PID-11.5 ZIP code is longer than 10 characters",
            ),
            (
                adt("A04", "MSG0906").replace("|MSG0906|", "||"),
                "MSH-10 message control ID is missing",
            ),
            (
                orm("MSG0907", control="DC"),
                "ORC-1 order control 'DC' is not one of NW, XO, SC, CA",
            ),
            (
                orm("MSG0908", status="HD"),
                "ORC-5 order status 'HD' is not one of SC, IP, CM, CA",
            ),
            (
                orm("MSG0909", control="CA", status="CM"),
                "ORC-1 order control 'CA' conflicts with ORC-5 order status 'CM'",
            ),
            (
                orm("MSG0910", accession="ACC-0123456789-XYZ"),
                "OBR-3 accession number is longer than 16 characters",
            ),
            (orm("MSG0911", observed=""), "OBR-7 observation date/time is missing"),
            (
                orm("MSG0912", observed="20261120 2130"),
                "OBR-7 observation date/time is not a valid HL7 timestamp "
                "(expected YYYYMMDD[HHMM[SS[.S]]][+/-ZZZZ])",
            ),
            (orm("MSG0913", service=""), "OBR-4 universal service ID is missing"),
            (
                orm("MSG0914", control="CA", status=""),
                "ORC-1 order control 'CA' cancels an accession number (OBR-3) that "
                "was not found in imaging group 'radnet-los-angeles'",
            ),
            (
                orm("MSG0915", status="CM", sent=""),
                "MSH-7 date/time of message is missing",
            ),
            (
                message(msh("ORM^O01", "MSG0916"), ALICE, SANTA_MONICA),
                "ORC segment is missing",
            ),
        ],
    )
    def test_invalid_field_is_rejected_with_its_reason(
        self, california, text, reason
    ) -> None:
        before = stored_rows()

        result = import_message(text)

        assert result.status == "rejected"
        assert result.error == reason
        assert rejected_row().error == reason
        assert stored_rows() == before

    def test_report_without_obr_is_rejected(self, alice_order) -> None:
        before = stored_rows()

        result = import_message(message(msh("ORU^R01", "MSG0917"), ALICE, *REPORT))

        assert result.error == "OBR segment is missing"
        assert stored_rows() == before

    def test_report_without_text_is_rejected(self, alice_order) -> None:
        numeric = ("OBX|1|NM|BI-RADS||1||||||F",)

        result = import_message(oru("MSG0920", observations=numeric))

        assert result.error == (
            "report text is missing: no OBX segment of value type TX, FT, ST "
            "has an OBX-5"
        )

    def test_report_covering_two_accessions_is_rejected(self, alice_order) -> None:
        text = oru("MSG0921").replace("\rOBX|1|", "\rOBR|2||ACC1002|X\rOBX|1|", 1)

        result = import_message(text)

        assert result.error == (
            "ORU^R01 contains 2 OBR segments, but only one report per message "
            "is supported"
        )

    def test_error_in_second_order_names_the_order(self, california) -> None:
        text = message(
            msh("ORM^O01", "MSG0922"),
            ALICE,
            SANTA_MONICA,
            *order_segments("ACC1001"),
            *order_segments("ACC1002", status="XX"),
        )

        result = import_message(text)

        assert result.error == (
            "order 2: ORC-5 order status 'XX' is not one of SC, IP, CM, CA"
        )
        assert Exam.objects.count() == 0

    def test_two_messages_where_one_is_expected_are_rejected(self, california) -> None:
        result = import_message(adt("A04", "MSG0923") + adt("A08", "MSG0924"))

        assert result.error == "expected one message, found 2"
        assert Patient.objects.count() == 0


# Patients


@pytest.mark.django_db
class TestPatientRegistration:
    def test_a04_creates_the_patient_with_every_field(self, california) -> None:
        result = import_message(adt("A04", "MSG1000"))

        assert result.status == "processed"
        assert (result.control_id, result.message_type) == ("MSG1000", "ADT^A04")
        patient = Patient.objects.get()
        assert patient.group == california.group
        assert patient.mrn == ALICE_MRN
        assert patient.family_name == "TESTPATIENT"
        assert patient.given_name == "ALICE"
        assert patient.birth_date == date(1980, 4, 12)
        assert patient.sex == "F"
        assert patient.postal_code == "90024"
        assert patient.phone == "(310)555-0100"

    def test_processed_message_is_stored(self, california) -> None:
        text = adt("A04", "MSG1001")

        import_message(text, source_name="inbox/a04.hl7")

        row = HL7Message.objects.get()
        assert row.status == HL7Message.Status.PROCESSED
        assert row.control_id == "MSG1001"
        assert row.message_type == "ADT^A04"
        assert row.raw == text
        assert row.error == ""
        assert row.source_name == "inbox/a04.hl7"

    def test_registration_is_audited_with_internal_ids(self, california) -> None:
        import_message(adt("A04", "MSG1002"))

        event = AuditEvent.objects.get()
        assert event.action == "hl7.patient"
        assert event.actor_kind == "hl7"
        assert event.actor_id == str(HL7Message.objects.get().pk)
        assert event.patient_id == Patient.objects.get().pk
        assert event.exam_id is None
        assert event.outcome == AuditEvent.Outcome.SUCCESS

    def test_a04_for_a_known_patient_updates_it(self, california) -> None:
        import_message(adt("A04", "MSG1003"))

        import_message(adt("A04", "MSG1004", pid=ALICE.replace("90024", "90401")))

        assert Patient.objects.get().postal_code == "90401"


@pytest.mark.django_db
class TestPatientUpdate:
    def test_a08_updates_changed_fields(self, california) -> None:
        import_message(adt("A04", "MSG1100"))
        moved = ALICE.replace("90024", "90066").replace(
            "(310)555-0100", "(424)555-0111"
        )

        result = import_message(adt("A08", "MSG1101", pid=moved))

        assert result.status == "processed"
        patient = Patient.objects.get()
        assert patient.postal_code == "90066"
        assert patient.phone == "(424)555-0111"
        assert patient.family_name == "TESTPATIENT"
        assert patient.birth_date == date(1980, 4, 12)
        assert AuditEvent.objects.filter(action="hl7.patient").count() == 2

    def test_empty_field_keeps_the_stored_value(self, california) -> None:
        import_message(adt("A04", "MSG1102"))
        short = segment("PID", {1: "1", 3: ALICE_MRN, 5: "TESTPATIENT^ALICE"})

        import_message(adt("A08", "MSG1103", pid=short))

        patient = Patient.objects.get()
        assert patient.phone == "(310)555-0100"
        assert patient.postal_code == "90024"
        assert patient.sex == "F"
        assert patient.birth_date == date(1980, 4, 12)

    def test_null_value_clears_an_optional_field(self, california) -> None:
        import_message(adt("A04", "MSG1104"))
        cleared = ALICE.replace("(310)555-0100", '""')

        import_message(adt("A08", "MSG1105", pid=cleared))

        assert Patient.objects.get().phone == ""

    def test_null_value_cannot_clear_the_family_name(self, california) -> None:
        import_message(adt("A04", "MSG1106"))

        result = import_message(
            adt("A08", "MSG1107", pid=ALICE.replace("TESTPATIENT^ALICE^Q", '""'))
        )

        assert result.error == "PID-5 family name is required and cannot be cleared"
        assert Patient.objects.get().family_name == "TESTPATIENT"

    def test_a08_for_an_unknown_patient_creates_it(self, california) -> None:
        result = import_message(adt("A08", "MSG1108", pid=BOB))

        assert result.status == "processed"
        assert Patient.objects.get().mrn == BOB_MRN

    def test_unchanged_update_writes_no_audit_row(self, california) -> None:
        import_message(adt("A04", "MSG1109"))

        import_message(adt("A08", "MSG1110"))

        assert AuditEvent.objects.count() == 1
        assert HL7Message.objects.filter(status="processed").count() == 2


# Orders


@pytest.mark.django_db
class TestNewOrder:
    def test_new_order_stores_every_field(self, california) -> None:
        result = import_message(orm("MSG1200"))

        assert result.status == "processed"
        exam = Exam.objects.select_related("visit__patient").get()
        assert exam.group == california.group
        assert exam.accession_number == "ACC1001"
        assert exam.procedure_code == "71250"
        assert exam.description == "CT CHEST WITHOUT CONTRAST"
        assert exam.modality == "CT"
        assert exam.reason == "Persistent cough for six weeks"
        assert exam.referring_physician == "Dr. Pat Example"
        # 21:30 Pacific on Nov 20 is 05:30 UTC on Nov 21.
        assert exam.performed_at == datetime(2026, 11, 21, 5, 30, tzinfo=UTC)
        assert exam.status == Exam.Status.SCHEDULED
        assert exam.completed_at is None
        assert exam.visit.patient.mrn == ALICE_MRN
        assert exam.visit.location == california
        assert exam.visit.date_of_service == date(2026, 11, 20)

    def test_new_order_registers_its_patient(self, california) -> None:
        import_message(orm("MSG1201"))

        patient = Patient.objects.get()
        assert patient.family_name == "TESTPATIENT"
        assert patient.birth_date == date(1980, 4, 12)

    def test_order_is_audited_with_internal_ids(self, california) -> None:
        import_message(orm("MSG1202"))

        exam = Exam.objects.get()
        event = AuditEvent.objects.get(action="hl7.order")
        assert event.actor_kind == "hl7"
        assert event.actor_id == str(HL7Message.objects.get().pk)
        assert event.patient_id == exam.visit.patient_id
        assert event.exam_id == exam.pk

    def test_two_orders_in_one_message_share_the_visit(self, california) -> None:
        text = message(
            msh("ORM^O01", "MSG1203"),
            ALICE,
            SANTA_MONICA,
            *order_segments("ACC1001"),
            *order_segments("ACC1002", service="71260^CT CHEST WITH CONTRAST"),
        )

        import_message(text)

        first, second = Exam.objects.order_by("accession_number")
        assert first.description == "CT CHEST WITHOUT CONTRAST"
        assert second.description == "CT CHEST WITH CONTRAST"
        assert first.visit == second.visit
        assert Visit.objects.count() == 1

    def test_ordering_provider_without_prefix_is_called_doctor(
        self, california
    ) -> None:
        text = orm("MSG1204").replace(
            "1234567890^Example^Pat^^^Dr.", "1234567890^Example^Pat^J^Jr"
        )

        import_message(text)

        assert Exam.objects.get().referring_physician == "Dr. Pat Example Jr"

    def test_reason_without_text_uses_the_code(self, california) -> None:
        text = orm("MSG1205").replace("R05.1^Persistent cough for six weeks", "R05.1")

        import_message(text)

        assert Exam.objects.get().reason == "R05.1"


@pytest.mark.django_db
class TestOrderUpdates:
    def test_completed_order_takes_its_time_from_obr8(self, alice_order) -> None:
        result = import_message(
            orm("MSG1300", control="SC", status="CM", ended="20261120220000")
        )

        assert result.status == "processed"
        exam = Exam.objects.get()
        assert exam.status == Exam.Status.COMPLETED
        assert exam.completed_at == datetime(2026, 11, 21, 6, 0, tzinfo=UTC)

    def test_completed_order_without_obr8_uses_the_message_time(
        self, alice_order
    ) -> None:
        import_message(orm("MSG1301", control="SC", status="CM"))

        # MSH-7 is 23:00 Pacific on Nov 20.
        assert Exam.objects.get().completed_at == datetime(
            2026, 11, 21, 7, 0, tzinfo=UTC
        )

    def test_repeated_completion_keeps_the_first_time(self, alice_order) -> None:
        import_message(orm("MSG1302", control="SC", status="CM"))

        import_message(orm("MSG1303", control="XO", status="CM", sent="20261122090000"))

        assert Exam.objects.get().completed_at == datetime(
            2026, 11, 21, 7, 0, tzinfo=UTC
        )

    def test_order_back_in_progress_has_no_completion_time(self, alice_order) -> None:
        import_message(orm("MSG1304", control="SC", status="CM"))

        import_message(orm("MSG1305", control="SC", status="IP"))

        exam = Exam.objects.get()
        assert exam.status == Exam.Status.IN_PROGRESS
        assert exam.completed_at is None

    def test_cancel_sets_the_exam_cancelled(self, alice_order) -> None:
        import_message(orm("MSG1306", control="CA", status=""))

        assert Exam.objects.get().status == Exam.Status.CANCELLED

    def test_change_updates_fields_in_place(self, alice_order) -> None:
        import_message(
            orm("MSG1307", control="XO", service="71260^CT CHEST WITH CONTRAST")
        )

        exam = Exam.objects.get()
        assert exam.pk == alice_order.pk
        assert exam.procedure_code == "71260"
        assert exam.description == "CT CHEST WITH CONTRAST"
        assert AuditEvent.objects.filter(action="hl7.order").count() == 2

    def test_new_date_moves_exam_to_visit(self, alice_order) -> None:
        import_message(orm("MSG1308", control="XO", observed="20261124100000"))

        exam = Exam.objects.select_related("visit").get()
        assert exam.visit.date_of_service == date(2026, 11, 24)
        assert exam.visit.patient == alice_order.visit.patient


@pytest.mark.django_db
class TestWaitingStudies:
    def test_study_that_arrived_first_is_attached(self, california) -> None:
        study = Study.objects.create(
            study_instance_uid="1.2.826.0.1.3680043.8.498.1",
            accession_number="ACC1001",
            patient_id=ALICE_MRN,
        )

        import_message(orm("MSG1400"))

        study.refresh_from_db()
        assert study.exam == Exam.objects.get()
        assert AuditEvent.objects.filter(action="images.attach").count() == 1

    def test_study_of_another_patient_keeps_waiting(self, california) -> None:
        study = Study.objects.create(
            study_instance_uid="1.2.826.0.1.3680043.8.498.2",
            accession_number="ACC1001",
            patient_id=BOB_MRN,
        )

        import_message(orm("MSG1401"))

        study.refresh_from_db()
        assert study.exam is None


# Reports


@pytest.mark.django_db
class TestReportVersions:
    def test_preliminary_final_and_corrected_make_three_versions(
        self, alice_order
    ) -> None:
        import_message(
            oru(
                "MSG1500",
                result_status="P",
                interpreter="1112223334&Reader&Ima&&&Dr.^20261121090000",
                status_changed="20261121090500",
            )
        )
        import_message(oru("MSG1501", result_status="F"))
        import_message(
            oru(
                "MSG1502",
                result_status="C",
                interpreter="1112223334&Reader&Ima&&&Dr.",
                status_changed="20261123080000",
            )
        )

        preliminary, final, corrected = ReportVersion.objects.order_by("pk")
        assert [version.exam for version in (preliminary, final, corrected)] == [
            alice_order
        ] * 3
        assert preliminary.status == ReportVersion.Status.PRELIMINARY
        assert preliminary.signed_at is None
        assert preliminary.sent_to_referrer_at == datetime(
            2026, 11, 21, 17, 5, tzinfo=UTC
        )
        assert final.status == ReportVersion.Status.FINAL
        # 15:00 Pacific, read in America/Los_Angeles because no offset is given.
        assert final.signed_at == datetime(2026, 11, 21, 23, 0, tzinfo=UTC)
        assert final.sent_to_referrer_at == datetime(2026, 11, 21, 23, 15, tzinfo=UTC)
        assert corrected.status == ReportVersion.Status.CORRECTED
        # Without OBR-32.2 the signing time is OBR-22.
        assert corrected.signed_at == datetime(2026, 11, 23, 16, 0, tzinfo=UTC)
        assert corrected.sent_to_referrer_at == datetime(
            2026, 11, 23, 16, 0, tzinfo=UTC
        )
        assert [v.message_control_id for v in (preliminary, final, corrected)] == [
            "MSG1500",
            "MSG1501",
            "MSG1502",
        ]

    def test_version_has_radiologist_and_text(self, alice_order) -> None:
        import_message(oru("MSG1503"))

        version = ReportVersion.objects.get()
        assert version.radiologist == "Dr. Ima Reader"
        assert version.text == REPORT_TEXT

    def test_offset_in_the_message_is_used(self, alice_order) -> None:
        import_message(
            oru(
                "MSG1504",
                interpreter="1112223334&Reader&Ima&&&Dr.^20261121150000-0500",
                status_changed="20261121151500+0000",
            )
        )

        version = ReportVersion.objects.get()
        assert version.signed_at == datetime(2026, 11, 21, 20, 0, tzinfo=UTC)
        assert version.sent_to_referrer_at == datetime(2026, 11, 21, 15, 15, tzinfo=UTC)

    def test_plain_interpreter_name_is_kept_as_sent(self, alice_order) -> None:
        import_message(oru("MSG1505", interpreter="Ima Reader MD^20261121150000"))

        assert ReportVersion.objects.get().radiologist == "Ima Reader MD"

    def test_report_is_audited_with_internal_ids(self, alice_order) -> None:
        import_message(oru("MSG1506"))

        event = AuditEvent.objects.get(action="hl7.report")
        assert event.actor_kind == "hl7"
        assert event.actor_id == str(HL7Message.objects.latest("pk").pk)
        assert event.patient_id == alice_order.visit.patient_id
        assert event.exam_id == alice_order.pk


@pytest.mark.django_db
class TestReportText:
    def test_escape_sequences_are_decoded(self, alice_order) -> None:
        observations = (
            "OBX|1|FT|||FINDINGS:\\.br\\Liver \\T\\ spleen normal.\\.br\\"
            "Ratio 1\\S\\2, path C:\\E\\pacs, a \\F\\ b, x \\R\\ y.||||||F",
            "OBX|2|FT|||\\H\\IMPRESSION:\\N\\ Caf\\XC3A9\\ au lait spot."
            "\\.in+4\\||||||F",
        )

        import_message(oru("MSG1600", observations=observations))

        assert ReportVersion.objects.get().text == (
            "FINDINGS:\n"
            "Liver & spleen normal.\n"
            "Ratio 1^2, path C:\\pacs, a | b, x ~ y.\n"
            "IMPRESSION: Café au lait spot."
        )

    def test_repetitions_and_segments_give_one_line_each(self, alice_order) -> None:
        observations = (
            "OBX|1|TX|||First line~Second line||||||F",
            "OBX|2|ST|||Third line||||||F",
            "OBX|3|TX|||||||||F",
            "OBX|4|TX|||After a blank line||||||F",
        )

        import_message(oru("MSG1601", observations=observations))

        assert ReportVersion.objects.get().text == (
            "First line\nSecond line\nThird line\n\nAfter a blank line"
        )

    def test_other_value_types_are_left_out(self, alice_order) -> None:
        observations = (
            "OBX|1|CE|BIRADS||1^Negative||||||F",
            "OBX|2|NM|DLP||412|mGy.cm|||||F",
            "OBX|3|TX|||Only this line.||||||F",
        )

        import_message(oru("MSG1602", observations=observations))

        assert ReportVersion.objects.get().text == "Only this line."


# Files, separators and repeated input


@pytest.mark.django_db
class TestSegmentSeparators:
    @pytest.mark.parametrize(
        "frame",
        [
            lambda text: text,
            lambda text: text.replace("\r", "\n"),
            lambda text: text.replace("\r", "\r\n"),
            lambda text: f"\x0b{text}\x1c\r",
        ],
        ids=["cr", "lf", "crlf", "mllp"],
    )
    def test_file_is_imported_whatever_its_separators(
        self, california, tmp_path, frame
    ) -> None:
        path = tmp_path / "in.hl7"
        text = orm("MSG1700") + oru("MSG1701")
        path.write_bytes(frame(text).encode())

        results = import_file(path)

        assert [result.status for result in results] == ["processed", "processed"]
        assert ReportVersion.objects.get().text == REPORT_TEXT
        assert HL7Message.objects.get(control_id="MSG1701").raw == oru("MSG1701")

    def test_mllp_framed_message_is_imported(self, california) -> None:
        result = import_message(f"\x0b{adt('A04', 'MSG1702')}\x1c\r")

        assert result.status == "processed"
        assert HL7Message.objects.get().raw == adt("A04", "MSG1702")

    def test_latin1_file_is_decoded(self, california, tmp_path) -> None:
        pid = ALICE.replace("TESTPATIENT^ALICE", "MÜLLER^JOSÉ")
        path = tmp_path / "latin1.hl7"
        path.write_bytes(adt("A04", "MSG1703", pid=pid).encode("latin-1"))

        import_file(path)

        patient = Patient.objects.get()
        assert (patient.family_name, patient.given_name) == ("MÜLLER", "JOSÉ")


def write_batch(path: Path) -> Path:
    """Write a batch of five messages whose third has an invalid result status."""
    text = message(
        "FHS|^~\\&|RIS|RLA",
        "BHS|^~\\&|RIS|RLA",
        adt("A04", "MSG1800").rstrip("\r"),
        orm("MSG1801", status="CM", ended="20261120220000").rstrip("\r"),
        oru("MSG1802", result_status="X").rstrip("\r"),
        oru("MSG1803", result_status="F").rstrip("\r"),
        adt("A08", "MSG1804", pid=BOB).rstrip("\r"),
        "BTS|5",
        "FTS|1",
    )
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.django_db
class TestBatchFile:
    def test_bad_message_is_rejected_and_the_others_import(
        self, california, tmp_path
    ) -> None:
        results = import_file(write_batch(tmp_path / "batch.hl7"))

        assert [(r.control_id, r.status) for r in results] == [
            ("MSG1800", "processed"),
            ("MSG1801", "processed"),
            ("MSG1802", "rejected"),
            ("MSG1803", "processed"),
            ("MSG1804", "processed"),
        ]
        assert results[2].error == "OBR-25 result status 'X' is not one of P, F, C"
        assert rejected_row().control_id == "MSG1802"
        assert rejected_row().source_name == str(tmp_path / "batch.hl7")
        assert HL7Message.objects.filter(status="processed").count() == 4
        assert Patient.objects.count() == 2
        assert ReportVersion.objects.get().message_control_id == "MSG1803"

    def test_lines_before_the_first_msh_are_rejected(
        self, california, tmp_path
    ) -> None:
        path = tmp_path / "cut.hl7"
        path.write_text("OBX|4|TX|||IMPRESSION: cut off.\r" + adt("A04", "MSG1810"))

        results = import_file(path)

        assert [(result.status, result.error) for result in results] == [
            ("rejected", "message does not start with an MSH segment"),
            ("processed", ""),
        ]
        assert rejected_row().raw == "OBX|4|TX|||IMPRESSION: cut off.\r"
        assert Patient.objects.count() == 1


@pytest.mark.django_db
class TestRepeatedImport:
    def test_same_file_twice_changes_nothing(self, california, tmp_path) -> None:
        path = write_batch(tmp_path / "batch.hl7")
        import_file(path)
        before = stored_rows()
        messages_before = list(HL7Message.objects.order_by("pk").values())

        results = import_file(path)

        assert [result.status for result in results] == [
            "duplicate",
            "duplicate",
            "rejected",
            "duplicate",
            "duplicate",
        ]
        assert stored_rows() == before
        assert list(HL7Message.objects.order_by("pk").values()) == messages_before

    def test_same_control_id_with_other_content_is_rejected(self, alice_order) -> None:
        before = stored_rows()
        first = HL7Message.objects.get()

        result = import_message(orm("SETUP-0001", status="CM"))

        assert result.status == "rejected"
        assert result.ack_code == "AR"
        assert result.error_field == "MSH-10"
        assert result.error == (
            f"MSH-10 message control ID was already processed as HL7 message "
            f"{first.pk} with other content; send a change with a new control ID"
        )
        assert stored_rows() == before
        assert rejected_row().raw == orm("SETUP-0001", status="CM")

    def test_rejected_message_may_be_sent_again(self, california) -> None:
        unknown = segment("PV1", {1: "1", 2: "O", 3: "RLA-WESTLO"})
        assert import_message(orm("MSG1900", pv1=unknown)).status == "rejected"
        Location.objects.create(
            group=california.group,
            state=california.state,
            slug="westwood",
            name="Westwood Imaging Center",
            city="Los Angeles",
            ris_code="RLA-WESTLO",
        )

        result = import_message(orm("MSG1900", pv1=unknown))

        assert result.status == "processed"
        assert Exam.objects.get().visit.location.ris_code == "RLA-WESTLO"
        rejected, processed = HL7Message.objects.order_by("pk")
        assert processed.status == HL7Message.Status.PROCESSED
        assert rejected.status == HL7Message.Status.RESOLVED
        assert rejected.resolved_by == processed

    def test_other_facility_is_no_duplicate(self, california, maryland) -> None:
        import_message(adt("A04", "MSG1901"))
        barbara = segment(
            "PID", {3: "MRN3003", 5: "SAMPLE^BARBARA", 7: "19750930", 8: "F"}
        )

        result = import_message(adt("A04", "MSG1901", pid=barbara, facility="AR"))

        assert result.status == "processed"
        assert Patient.objects.get(mrn="MRN3003").group == maryland.group


# The command


@pytest.mark.django_db
class TestImportCommand:
    def test_output_lists_each_message_and_exits_with_1(
        self, california, tmp_path
    ) -> None:
        batch = write_batch(tmp_path / "batch.hl7")

        stdout, stderr, status = run_command(batch)

        assert status == 1
        assert stdout.splitlines() == [
            f"{batch}: message 1 (ADT^A04 MSG1800) processed",
            f"{batch}: message 2 (ORM^O01 MSG1801) processed",
            f"{batch}: message 4 (ORU^R01 MSG1803) processed",
            f"{batch}: message 5 (ADT^A08 MSG1804) processed",
            "4 processed, 0 duplicate, 1 rejected",
        ]
        assert stderr.splitlines() == [
            f"{batch}: message 3 (ORU^R01 MSG1802) rejected: "
            "OBR-25 result status 'X' is not one of P, F, C",
        ]

    def test_exit_error_says_where_staff_find_rejections(
        self, california, tmp_path
    ) -> None:
        with pytest.raises(CommandError) as caught:
            call_command(
                "import_hl7",
                str(write_batch(tmp_path / "batch.hl7")),
                stdout=StringIO(),
                stderr=StringIO(),
            )

        assert caught.value.returncode == 1
        assert str(caught.value) == (
            "1 rejected, each kept with its reason as an HL7 message or a "
            "quarantined file"
        )

    def test_second_run_reports_duplicates_and_exits_with_0(
        self, california, tmp_path
    ) -> None:
        path = tmp_path / "orders.hl7"
        path.write_text(adt("A04", "MSG2000") + orm("MSG2001"))
        run_command(path)

        stdout, stderr, status = run_command(path)

        assert status == 0
        assert stderr == ""
        assert stdout.splitlines() == [
            f"{path}: message 1 (ADT^A04 MSG2000) duplicate",
            f"{path}: message 2 (ORM^O01 MSG2001) duplicate",
            "0 processed, 2 duplicate, 0 rejected",
        ]

    def test_folders_are_read_recursively_in_sorted_order(
        self, california, tmp_path
    ) -> None:
        inbox = tmp_path / "inbox"
        (inbox / "b").mkdir(parents=True)
        (inbox / ".cache").mkdir()
        (inbox / "b" / "orders.txt").write_text(orm("MSG2101"))
        (inbox / "a.hl7").write_text(adt("A04", "MSG2100"))
        (inbox / "c").write_text(oru("MSG2102"))
        (inbox / ".partial.hl7").write_text("MSH|")
        (inbox / ".cache" / "x.hl7").write_text("MSH|")

        stdout, _, status = run_command(inbox, verbosity=0)

        assert status == 0
        assert stdout == "3 processed, 0 duplicate, 0 rejected\n"
        assert list(
            HL7Message.objects.order_by("pk").values_list("source_name", flat=True)
        ) == [
            str(inbox / "a.hl7"),
            str(inbox / "b" / "orders.txt"),
            str(inbox / "c"),
        ]

    def test_non_hl7_file_goes_to_stderr(self, california, tmp_path) -> None:
        path = tmp_path / "photo.hl7"
        path.write_bytes(b"\xff\xd8\xff\xe0\x00\x10JFIF")

        stdout, stderr, status = run_command(path)

        assert status == 1
        copy = QuarantinedFile.objects.get().path
        assert stderr.splitlines() == [
            f"{path}: rejected: not an HL7 file: binary data (byte 0x00 at offset "
            f"4); copied to {copy}"
        ]
        assert stdout.splitlines() == ["0 processed, 0 duplicate, 1 rejected"]

    def test_missing_path_is_an_error(self, california, tmp_path) -> None:
        with pytest.raises(CommandError) as caught:
            call_command("import_hl7", str(tmp_path / "nowhere"), stdout=StringIO())

        assert str(caught.value) == f"{tmp_path / 'nowhere'}: no such file or folder"
        assert HL7Message.objects.count() == 0


# The log


@pytest.mark.django_db
class TestLogging:
    def test_log_has_no_patient_data(self, california, tmp_path, caplog) -> None:
        caplog.set_level(logging.DEBUG)
        (tmp_path / "TESTPATIENT_ALICE.hl7").write_bytes(b"\x00ALICE")
        write_batch(tmp_path / "batch.hl7")
        (tmp_path / "more.hl7").write_text(
            oru("MSG2200", accession="ACC9999") + orm("MSG2201", pid=BOB)
        )

        run_command(tmp_path)

        logged = caplog.text
        assert "MSG1800" in logged
        for value in (
            "TESTPATIENT",
            "ALICE",
            "SAMPLE",
            "BOB",
            "19800412",
            "1980-04-12",
            "19721103",
            ALICE_MRN,
            BOB_MRN,
            "ACC1001",
            "ACC9999",
            "90024",
            "555-0100",
            "lungs are clear",
            "IMPRESSION",
            "Reader",
        ):
            assert value not in logged

    def test_one_line_is_logged_per_message(self, california, tmp_path, caplog) -> None:
        caplog.set_level(logging.DEBUG)

        import_file(write_batch(tmp_path / "batch.hl7"))
        import_file(tmp_path / "batch.hl7")

        records = [
            record
            for record in caplog.records
            if record.name == "viewbox.ingest.hl7_import"
        ]
        assert [record.levelname for record in records] == [
            "INFO",
            "INFO",
            "WARNING",
            "INFO",
            "INFO",
        ] * 2
        assert (
            records[2]
            .getMessage()
            .startswith("Rejected HL7 message MSG1802 (ORU^R01) at OBR-25")
        )
