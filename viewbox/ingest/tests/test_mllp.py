"""The MLLP listener, driven over real TCP connections on 127.0.0.1.

Each test starts a listener on a free port and sends framed messages for
obviously fake patients of RadNet Los Angeles (facility RLA, California,
where signed reports are held for 96 hours).
"""

import io
import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest
import time_machine
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.core.management import CommandError, call_command

from viewbox.access.actions import issue_icode
from viewbox.access.models import ICode
from viewbox.accounts.models import Account
from viewbox.audit.models import AuditEvent
from viewbox.conftest import log_in_verified_staff
from viewbox.directory.models import Location
from viewbox.ingest.hl7_parsing import Message, parse_message
from viewbox.ingest.mllp import FrameReader, HL7Listener, OversizedFrame, start_listener
from viewbox.ingest.models import HL7Message, QuarantinedFile
from viewbox.ingest.tests.test_hl7_import import (
    ALICE,
    ALICE_MRN,
    BOB,
    REPORT,
    SANTA_MONICA,
    adt,
    message,
    msh,
    order_segments,
    orm,
    oru,
    segment,
    stored_rows,
)
from viewbox.records.models import Exam, Patient, ReportVersion, Visit
from viewbox.records.release import report_state

START, END = b"\x0b", b"\x1c\r"
MAX_MESSAGE_BYTES = 16 * 1024


def framed(text: str) -> bytes:
    return START + text.encode() + END


class MLLPClient:
    """A RIS end of one connection: send bytes, read framed ACKs."""

    def __init__(self, port: int) -> None:
        self.socket = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.received = b""

    def send(self, data: bytes) -> None:
        self.socket.sendall(data)

    def read_acks(self, count: int = 1) -> list[Message]:
        while self.received.count(END) < count:
            chunk = self.socket.recv(65536)
            if not chunk:
                break
            self.received += chunk
        parts = self.received.split(END)
        self.received = END.join(parts[count:])
        return [
            parse_message(part.removeprefix(START).decode()) for part in parts[:count]
        ]

    def exchange(self, text: str) -> Message:
        self.send(framed(text))
        [ack] = self.read_acks()
        return ack

    def is_closed_by_peer(self) -> bool:
        return self.socket.recv(65536) == b""

    def close(self) -> None:
        self.socket.close()


@pytest.fixture
def listener(settings: Any) -> Iterator[HL7Listener]:
    settings.HL7_LISTENER_MAX_MESSAGE_BYTES = MAX_MESSAGE_BYTES
    settings.HL7_LISTENER_IDLE_TIMEOUT_SECONDS = 5
    settings.HL7_LISTENER_MAX_CONNECTIONS = 4
    server, thread = start_listener("127.0.0.1", 0)
    yield server
    server.stop()
    thread.join(timeout=10)


@pytest.fixture
def ris(listener: HL7Listener) -> Iterator[MLLPClient]:
    client = MLLPClient(listener.port)
    yield client
    client.close()


@pytest.fixture
def alice_order(california: Location, ris: MLLPClient) -> Exam:
    """Alice with a completed CT, ACC1001, ordered over MLLP."""
    ack = ris.exchange(orm("SETUP-0001", status="CM", ended="20261120220000"))
    assert msa(ack) == ("AA", "SETUP-0001", "")
    return Exam.objects.get()


def msa(ack: Message) -> tuple[str, str, str]:
    segment = ack.segment("MSA")
    return segment.get(1), segment.get(2), segment.get(3)


def err(ack: Message) -> tuple[str, str, str]:
    """Return ERR-2 location, ERR-3 code and ERR-8 message."""
    segment = ack.segment("ERR")
    location = "^".join(segment.get(2, number) for number in range(1, 6)).rstrip("^")
    return location, segment.get(3), segment.get(8)


def wait_until_closed(client: MLLPClient, seconds: float) -> float:
    started = time.monotonic()
    client.socket.settimeout(seconds)
    assert client.is_closed_by_peer()
    return time.monotonic() - started


transactional = pytest.mark.django_db(transaction=True)


# Frames cut from a stream, without a network


class TestFrameReader:
    def test_frame_split_in_single_bytes_is_joined(self) -> None:
        reader = FrameReader(1024)
        frames = []

        for byte in framed("MSH|^~\\&|A"):
            frames += reader.feed(bytes([byte]))

        assert [item.payload for item in frames] == [b"MSH|^~\\&|A"]
        assert reader.discarded_bytes == 0

    def test_late_carriage_return_is_not_discarded(self) -> None:
        reader = FrameReader(1024)

        reader.feed(b"\x0bA\x1c")
        frames = reader.feed(b"\r\x0bB\x1c\r")

        assert [item.payload for item in frames] == [b"B"]
        assert reader.discarded_bytes == 0

    def test_new_start_block_drops_the_unfinished_frame(self) -> None:
        reader = FrameReader(1024)

        frames = reader.feed(b"\x0bhalf a mess\x0bwhole\x1c\r")

        assert [item.payload for item in frames] == [b"whole"]
        assert reader.discarded_bytes == len(b"half a mess") + 1

    def test_frame_over_the_limit_is_reported_once(self) -> None:
        reader = FrameReader(8)

        frames = reader.feed(b"\x0bMSH|0123456789")

        assert frames == [OversizedFrame(b"MSH|0123456789")]
        assert reader.pending_bytes == 0


# Refused input over the network


@transactional
class TestUnknownPatientReport:
    def test_unknown_patient_gets_ae(self, alice_order, ris) -> None:
        before = stored_rows()

        ack = ris.exchange(oru("MSG2000", pid=BOB))

        reason = "PID-3 patient ID was not found in imaging group 'radnet-los-angeles'"
        assert msa(ack) == ("AE", "MSG2000", reason)
        assert err(ack) == ("PID^1^3", "204", reason)
        assert ack.segment("ERR").get(4) == "E"
        assert stored_rows() == before
        row = HL7Message.objects.get(status=HL7Message.Status.REJECTED)
        assert row.error == reason
        assert row.control_id == "MSG2000"
        assert row.sending_facility == "RLA"
        assert row.source_name == "mllp:127.0.0.1"

    def test_ack_header_answers_the_sender(self, alice_order, ris) -> None:
        ack = ris.exchange(oru("MSG2001", pid=BOB))

        header = ack.header
        assert (header.get(3), header.get(4)) == ("VIEWBOX", "VIEWBOX")
        assert (header.get(5), header.get(6)) == ("RIS", "RLA")
        assert ack.message_type == "ACK^R01"
        assert header.get(9, 3) == "ACK"
        assert header.get(10) != "MSG2001"
        assert (header.get(11), header.get(12)) == ("P", "2.5.1")


@transactional
class TestRejectedMessages:
    def test_unsupported_type_gets_ar(self, california, ris) -> None:
        ack = ris.exchange(adt("A01", "MSG2100"))

        assert msa(ack)[:2] == ("AR", "MSG2100")
        location, code, reason = err(ack)
        assert (location, code) == ("MSH^1^9", "200")
        assert reason.startswith("MSH-9 unsupported message type 'ADT^A01'")
        assert Patient.objects.count() == 0

    def test_plain_text_gets_ar(self, california, ris) -> None:
        ack = ris.exchange("Hello, is this the reading room?")

        assert msa(ack) == ("AR", "", "message does not start with an MSH segment")
        assert HL7Message.objects.get().status == HL7Message.Status.REJECTED

    def test_binary_payload_is_quarantined(self, california, ris) -> None:
        ris.send(START + b"MSH|^~\\&|RIS|RLA\x00\x01\x02" + END)
        [ack] = ris.read_acks()

        reason = (
            "binary data (byte 0x00 at offset 16); the message was copied to "
            "the quarantine"
        )
        assert msa(ack)[0] == "AR"
        assert err(ack)[2] == reason
        quarantined = QuarantinedFile.objects.get()
        assert quarantined.reason == f"not an HL7 message: {reason}"
        assert quarantined.original_name == "MLLP message from mllp:127.0.0.1"
        assert HL7Message.objects.count() == 0

    def test_reason_with_separators_is_escaped(self, california, ris) -> None:
        unknown = segment("PV1", {1: "1", 2: "O", 3: "RLA|X^Y&Z~W"})
        text = message(msh("ORM^O01", "MSG2102"), ALICE, unknown, *order_segments())
        text = text.replace("RLA|X^Y&Z~W", "RLA\\F\\X\\S\\Y\\T\\Z\\R\\W")

        ack = ris.exchange(text)

        assert msa(ack)[0] == "AE"
        assert err(ack)[2] == (
            "PV1-3 location 'RLA|X^Y&Z~W' was not found in imaging group "
            "'radnet-los-angeles'"
        )


@transactional
class TestOversizedMessage:
    def test_oversized_message_is_refused_and_closed(self, alice_order, ris) -> None:
        before = stored_rows()
        long_text = "FINDINGS: " + "normal " * (MAX_MESSAGE_BYTES // 7)
        observation = f"OBX|1|TX|71250^CT CHEST||{long_text}||||||F"

        ris.send(framed(oru("MSG2200", observations=(observation,))))
        [ack] = ris.read_acks()

        reason = (
            f"message is larger than the limit of {MAX_MESSAGE_BYTES} bytes "
            "(VIEWBOX_HL7_MAX_MESSAGE_BYTES)"
        )
        assert msa(ack) == ("AR", "MSG2200", reason)
        assert ris.is_closed_by_peer()
        assert stored_rows() == before
        row = HL7Message.objects.get(status=HL7Message.Status.REJECTED)
        assert row.raw == msh("ORU^R01", "MSG2200")
        assert row.error == f"{reason}; only its MSH segment was kept"

    def test_listener_serves_the_next_connection(self, alice_order, listener, ris):
        ris.send(START + b"MSH|" + b"x" * (MAX_MESSAGE_BYTES + 10))
        ris.read_acks()
        other = MLLPClient(listener.port)

        ack = other.exchange(adt("A04", "MSG2201", pid=BOB))

        assert msa(ack)[0] == "AA"
        other.close()


@transactional
class TestLogging:
    def test_log_lines_carry_no_health_information(
        self, alice_order, ris, caplog
    ) -> None:
        caplog.set_level(logging.INFO)

        ris.exchange(oru("MSG2250"))
        ris.exchange(oru("MSG2251", pid=BOB))
        ris.exchange(adt("A08", "MSG2252"))

        logged = "\n".join(caplog.messages)
        assert "MSG2251" in logged
        for value in (
            ALICE_MRN,
            "MRN2002",
            "TESTPATIENT",
            "ALICE",
            "SAMPLE",
            "19800412",
            "ACC1001",
            "lungs are clear",
            "555-0100",
        ):
            assert value not in logged


@transactional
class TestCharacterSet:
    def test_ack_uses_the_message_character_set(self, california, ris) -> None:
        nino = segment("PV1", {1: "1", 2: "O", 3: "RLA-NIÑO"})
        text = message(
            msh("ORM^O01", "MSG2260") + "||||||8859/1", ALICE, nino, *order_segments()
        )

        ris.send(START + text.encode("latin-1") + END)
        ris.socket.settimeout(10)
        raw = ris.socket.recv(65536)

        assert raw.startswith(START)
        assert raw.endswith(END)
        assert b"|8859/1\r" in raw
        assert b"MSA|AE|MSG2260|PV1-3 location 'RLA-NI\xd1O' was not found" in raw
        assert HL7Message.objects.get().raw == text


# Framing variants


@transactional
class TestSegmentSeparators:
    @pytest.mark.parametrize("separator", ["\r", "\n", "\r\n"])
    def test_every_separator_is_accepted(self, california, ris, separator) -> None:
        text = adt("A04", "MSG2300").replace("\r", separator)

        ack = ris.exchange(text)

        assert msa(ack) == ("AA", "MSG2300", "")
        assert Patient.objects.get().mrn == ALICE_MRN
        assert HL7Message.objects.get().raw == adt("A04", "MSG2300")


@transactional
class TestEscapeSequences:
    def test_report_text_is_decoded(self, alice_order, ris) -> None:
        observations = (
            "OBX|1|TX|71250^CT CHEST||Sizes 3\\F\\4 cm\\S\\left\\T\\right||||||F",
            "OBX|2|TX|71250^CT CHEST||Tokens \\R\\ and \\E\\ stay||||||F",
            "OBX|3|TX|71250^CT CHEST||Degree \\XC2B0\\\\.br\\Second line||||||F",
        )

        ack = ris.exchange(oru("MSG2400", observations=observations))

        assert msa(ack)[0] == "AA"
        assert ReportVersion.objects.get().text == (
            "Sizes 3|4 cm^left&right\nTokens ~ and \\ stay\nDegree °\nSecond line"
        )


@transactional
class TestPartialAndJoinedWrites:
    def test_message_split_across_writes(self, alice_order, ris) -> None:
        data = framed(oru("MSG2500"))

        for start in range(0, len(data), 37):
            ris.send(data[start : start + 37])
            time.sleep(0.005)
        [ack] = ris.read_acks()

        assert msa(ack) == ("AA", "MSG2500", "")
        assert ReportVersion.objects.get().message_control_id == "MSG2500"

    def test_two_messages_in_one_write(self, california, ris) -> None:
        ris.send(framed(adt("A04", "MSG2501")) + framed(adt("A04", "MSG2502", pid=BOB)))

        first, second = ris.read_acks(2)

        assert msa(first) == ("AA", "MSG2501", "")
        assert msa(second) == ("AA", "MSG2502", "")
        assert Patient.objects.count() == 2

    def test_garbage_before_start_block_is_dropped(
        self, california, ris, caplog
    ) -> None:
        caplog.set_level(logging.WARNING, logger="viewbox.ingest.mllp")

        ris.send(b"GET / HTTP/1.0\r\n\r\n" + framed(adt("A04", "MSG2503")))
        [ack] = ris.read_acks()

        assert msa(ack) == ("AA", "MSG2503", "")
        assert "Discarded 18 bytes outside MLLP frames from 127.0.0.1" in (
            caplog.messages
        )

    def test_unfinished_frame_is_dropped_for_a_new_one(self, california, ris) -> None:
        ris.send(b"\x0bMSH|^~\\&|RIS|RLA|VIEW")

        ack = ris.exchange(adt("A04", "MSG2504"))

        assert msa(ack) == ("AA", "MSG2504", "")
        assert HL7Message.objects.count() == 1


@transactional
class TestConnections:
    def test_several_connections_are_served_at_once(self, california, listener):
        clients = [MLLPClient(listener.port) for _ in range(3)]
        texts = [
            adt(
                "A04",
                f"MSG260{number}",
                pid=ALICE.replace(ALICE_MRN, f"MRN700{number}"),
            )
            for number in range(3)
        ]
        for client, text in zip(clients, texts, strict=True):
            client.send(framed(text)[:40])

        # Completed in reverse order: a server that served one connection at
        # a time would wait for the first one forever.
        acks = {}
        for number in reversed(range(3)):
            clients[number].send(framed(texts[number])[40:])
            acks[number] = clients[number].read_acks()[0]

        assert [msa(acks[number])[1] for number in range(3)] == [
            "MSG2600",
            "MSG2601",
            "MSG2602",
        ]
        assert Patient.objects.count() == 3
        for client in clients:
            client.close()

    def test_connection_over_the_limit_is_closed(self, california, listener):
        clients = [MLLPClient(listener.port) for _ in range(4)]
        for client in clients:
            assert msa(client.exchange(adt("A04", "MSG2610")))[0] == "AA"

        extra = MLLPClient(listener.port)

        assert wait_until_closed(extra, 5) < 5
        for client in clients:
            client.close()
        extra.close()

    def test_idle_connection_is_closed(self, california, listener, settings):
        listener.idle_timeout_seconds = 1
        client = MLLPClient(listener.port)
        client.send(b"\x0bMSH|^~\\&|RIS")

        waited = wait_until_closed(client, 10)

        assert 0.9 < waited < 5
        client.close()

    def test_peer_closing_mid_frame_stores_nothing(
        self, california, listener, ris
    ) -> None:
        client = MLLPClient(listener.port)
        client.send(framed(adt("A04", "MSG2620"))[:50])
        client.close()

        ack = ris.exchange(adt("A04", "MSG2621", pid=BOB))

        assert msa(ack)[0] == "AA"
        assert list(HL7Message.objects.values_list("control_id", flat=True)) == [
            "MSG2621"
        ]


# Control IDs


@transactional
class TestDuplicateControlId:
    def test_resend_is_acknowledged_and_changes_nothing(self, alice_order, ris) -> None:
        assert msa(ris.exchange(oru("MSG2700")))[0] == "AA"
        before = stored_rows()
        messages_before = list(HL7Message.objects.values())

        ack = ris.exchange(oru("MSG2700"))

        assert msa(ack) == ("AA", "MSG2700", "")
        assert stored_rows() == before
        assert list(HL7Message.objects.values()) == messages_before

    def test_same_control_id_with_other_content_is_refused(
        self, alice_order, ris
    ) -> None:
        assert msa(ris.exchange(oru("MSG2701")))[0] == "AA"
        first = HL7Message.objects.get(control_id="MSG2701")
        before = stored_rows()

        ack = ris.exchange(oru("MSG2701", result_status="C"))

        reason = (
            f"MSH-10 message control ID was already processed as HL7 message "
            f"{first.pk} with other content; send a change with a new control ID"
        )
        assert msa(ack) == ("AR", "MSG2701", reason[:80])
        assert err(ack) == ("MSH^1^10", "205", reason)
        assert stored_rows() == before
        kept = HL7Message.objects.get(status=HL7Message.Status.REJECTED)
        assert kept.raw == oru("MSG2701", result_status="C")


# Patients


@transactional
class TestPatientUpdate:
    def test_a08_updates_demographics(self, california, ris) -> None:
        assert msa(ris.exchange(adt("A04", "MSG2800")))[0] == "AA"
        renamed = ALICE.replace("TESTPATIENT^ALICE^Q", "EXAMPLE^ALICE^Q").replace(
            "(310)555-0100", "(424)555-0142"
        )

        ack = ris.exchange(adt("A08", "MSG2801", pid=renamed))

        assert msa(ack) == ("AA", "MSG2801", "")
        patient = Patient.objects.get()
        assert patient.family_name == "EXAMPLE"
        assert patient.given_name == "ALICE"
        assert patient.phone == "(424)555-0142"
        assert patient.birth_date == date(1980, 4, 12)


PRIOR_MRN = "MRN9009"
PRIOR = ALICE.replace(ALICE_MRN, PRIOR_MRN)


def a40(control_id: str, prior_mrn: str = PRIOR_MRN) -> str:
    return message(
        msh("ADT^A40", control_id),
        segment("EVN", {1: "A40"}),
        ALICE,
        segment("MRG", {1: f"{prior_mrn}^^^RLA^MR"}),
    )


@pytest.fixture
def duplicate_alice(alice_order: Exam, ris: MLLPClient) -> Patient:
    """A second record for Alice with two exams.

    ACC3001 is on the date and at the location of Alice's ACC1001, so its
    visit folds into hers. ACC3002 is on another date. The prior record has
    a portal account and an I-Code.
    """
    for control_id, accession, observed in (
        ("SETUP-0002", "ACC3001", "20261120223000"),
        ("SETUP-0003", "ACC3002", "20261001100000"),
    ):
        text = orm(control_id, pid=PRIOR, accession=accession, observed=observed)
        assert msa(ris.exchange(text))[0] == "AA"
    prior = Patient.objects.get(mrn=PRIOR_MRN)
    issue_icode(Exam.objects.get(accession_number="ACC3002").visit)
    user = get_user_model().objects.create_user("alice.example", password="x" * 16)
    Account.objects.create(user=user, patient=prior)
    return prior


@transactional
class TestPatientMerge:
    def test_unknown_prior_patient_gets_ae(self, alice_order, ris) -> None:
        before = stored_rows()

        ack = ris.exchange(a40("MSG2900", prior_mrn="MRN0000"))

        reason = (
            "MRG-1 prior patient ID was not found in imaging group 'radnet-los-angeles'"
        )
        assert msa(ack) == ("AE", "MSG2900", reason[:80])
        assert err(ack)[:2] == ("MRG^1^1", "204")
        assert stored_rows() == before

    def test_same_mrn_in_pid_and_mrg_is_refused(self, alice_order, ris) -> None:
        before = stored_rows()

        ack = ris.exchange(a40("MSG2907", prior_mrn=ALICE_MRN))

        assert msa(ack) == (
            "AE",
            "MSG2907",
            "MRG-1 prior patient ID is the same as PID-3",
        )
        assert stored_rows() == before

    def test_two_mrg_segments_are_refused(self, duplicate_alice, ris) -> None:
        before = stored_rows()
        text = a40("MSG2908") + segment("MRG", {1: "MRN0001^^^RLA^MR"}) + "\r"

        ack = ris.exchange(text)

        assert msa(ack)[0] == "AE"
        assert err(ack)[2] == (
            "ADT^A40 contains 2 MRG segments, but only one merge per message "
            "is supported"
        )
        assert stored_rows() == before

    def test_merge_into_a_new_mrn_creates_it(self, duplicate_alice, ris) -> None:
        text = a40("MSG2909").replace(f"|{ALICE_MRN}^", "|MRN5005^")
        Patient.objects.get(mrn=ALICE_MRN)

        ack = ris.exchange(text)

        assert msa(ack)[0] == "AA"
        survivor = Patient.objects.get(mrn="MRN5005")
        assert not Patient.objects.filter(mrn=PRIOR_MRN).exists()
        assert sorted(
            Exam.objects.filter(visit__patient=survivor).values_list(
                "accession_number", flat=True
            )
        ) == ["ACC3001", "ACC3002"]
        assert Exam.objects.get(accession_number="ACC1001").visit.patient.mrn == (
            ALICE_MRN
        )

    def test_two_accounts_block_the_merge(self, duplicate_alice, ris) -> None:
        surviving = Patient.objects.get(mrn=ALICE_MRN)
        user = get_user_model().objects.create_user("alice.two", password="y" * 16)
        Account.objects.create(user=user, patient=surviving)
        before = stored_rows()

        ack = ris.exchange(a40("MSG2901"))

        assert msa(ack)[0] == "AE"
        assert err(ack)[2] == (
            "MRG-1 prior patient cannot be merged: both patients have a "
            "account; merge those by hand first"
        )
        assert stored_rows() == before
        assert Account.objects.get(user=user).patient == surviving

    def test_merge_moves_everything_to_the_surviving_patient(
        self, duplicate_alice, ris
    ) -> None:
        prior_id = duplicate_alice.pk
        surviving = Patient.objects.get(mrn=ALICE_MRN)
        report_before = ris.exchange(oru("MSG2902", pid=PRIOR, accession="ACC3002"))
        assert msa(report_before)[0] == "AA"
        exam_ids = set(Exam.objects.values_list("pk", flat=True))

        ack = ris.exchange(a40("MSG2903"))

        assert msa(ack) == ("AA", "MSG2903", "")
        assert not Patient.objects.filter(pk=prior_id).exists()
        assert (
            set(
                Exam.objects.filter(visit__patient=surviving).values_list(
                    "pk", flat=True
                )
            )
            == exam_ids
        )
        visits = Visit.objects.filter(patient=surviving).order_by("date_of_service")
        assert [visit.date_of_service for visit in visits] == [
            date(2026, 10, 1),
            date(2026, 11, 20),
        ]
        assert visits[1].exams.count() == 2
        assert ICode.objects.get().visit == visits[0]
        assert Account.objects.get().patient == surviving
        assert ReportVersion.objects.get().exam.visit.patient == surviving

    def test_merge_is_audited(self, duplicate_alice, ris) -> None:
        prior_id = duplicate_alice.pk
        surviving = Patient.objects.get(mrn=ALICE_MRN)

        ris.exchange(a40("MSG2904"))

        row = HL7Message.objects.get(control_id="MSG2904")
        events = AuditEvent.objects.filter(action__startswith="patient.merge")
        assert {(event.action, event.patient_id) for event in events} == {
            ("patient.merge_prior", prior_id),
            ("patient.merge", surviving.pk),
            ("patient.merge_exam", surviving.pk),
        }
        assert {event.actor_kind for event in events} == {"hl7"}
        assert {event.actor_id for event in events} == {str(row.pk)}
        assert events.filter(action="patient.merge_exam").count() == 2

    def test_later_report_for_the_prior_mrn_is_refused(
        self, duplicate_alice, ris
    ) -> None:
        ris.exchange(a40("MSG2905"))

        ack = ris.exchange(oru("MSG2906", pid=PRIOR, accession="ACC3002"))

        assert msa(ack)[0] == "AE"
        assert err(ack)[0] == "PID^1^3"


# Orders


def omi(control_id: str, accession: str = "ACC4001") -> str:
    orc, obr = order_segments(accession, status="CM", ended="20261120221500")
    return message(
        msh("OMI^O23", control_id),
        ALICE,
        SANTA_MONICA,
        orc,
        segment("TQ1", {1: "1", 7: "20261120213000"}),
        obr,
        segment("IPC", {1: accession, 2: "1.2.840.99999.1", 3: "1.2.840.99999.2"}),
    )


@transactional
class TestImagingOrder:
    def test_omi_creates_a_completed_exam(self, california, ris) -> None:
        ack = ris.exchange(omi("MSG3000"))

        assert msa(ack) == ("AA", "MSG3000", "")
        assert ack.message_type == "ACK^O23"
        exam = Exam.objects.get()
        assert exam.accession_number == "ACC4001"
        assert exam.status == Exam.Status.COMPLETED
        # 22:15 Pacific on Nov 20 is 06:15 UTC on Nov 21.
        assert exam.completed_at == datetime(2026, 11, 21, 6, 15, tzinfo=UTC)
        assert exam.visit.patient.mrn == ALICE_MRN


# Reports and when they are released


SIGNED = datetime(2026, 11, 21, 23, 0, tzinfo=UTC)
# OBR-32.2 and OBR-22 in Pacific time; 15:00 PST is 23:00 UTC.
SIGNED_HL7 = "20261121150000"


def signed_report(
    control_id: str,
    status: str,
    signed: datetime,
    observations: tuple[str, ...] = REPORT,
) -> str:
    stamp = signed.astimezone(UTC).strftime("%Y%m%d%H%M%S+0000")
    return oru(
        control_id,
        result_status=status,
        interpreter=f"1112223334&Reader&Ima&&&Dr.^{stamp}",
        status_changed=stamp,
        observations=observations,
    )


ADDENDUM = (
    "OBX|1|TX|ADDENDUM^Addendum||ADDENDUM: Comparison with the CT of "
    "2025-02-03 shows no change.||||||F",
)
CORRECTED = (
    "OBX|1|TX|71250^CT CHEST||EXAM: CT chest without contrast.||||||C",
    "OBX|2|TX|71250^CT CHEST||IMPRESSION: Stable 4 mm nodule in the right "
    "upper lobe.||||||C",
)


@transactional
class TestCorrectedReportRelease:
    def test_correction_is_held_from_its_own_signing(self, alice_order, ris) -> None:
        corrected_at = SIGNED + timedelta(hours=50)
        assert msa(ris.exchange(signed_report("MSG3100", "F", SIGNED)))[0] == "AA"
        assert (
            msa(ris.exchange(signed_report("MSG3101", "C", corrected_at, CORRECTED)))[0]
            == "AA"
        )
        final, corrected = ReportVersion.objects.order_by("pk")

        with time_machine.travel(SIGNED + timedelta(hours=95), tick=False):
            state = report_state(alice_order)
            assert state.released is None
            assert state.held == corrected
        with time_machine.travel(SIGNED + timedelta(hours=96), tick=False):
            state = report_state(alice_order)
            assert state.released == final
            assert state.held_until == corrected_at + timedelta(hours=96)
        with time_machine.travel(corrected_at + timedelta(hours=96), tick=False):
            assert report_state(alice_order).released == corrected

        assert corrected.status == ReportVersion.Status.CORRECTED
        assert corrected.text == (
            "EXAM: CT chest without contrast.\n"
            "IMPRESSION: Stable 4 mm nodule in the right upper lobe."
        )
        assert corrected.signed_at == corrected_at


@transactional
class TestAddendum:
    def test_addendum_without_signed_report_is_refused(self, alice_order, ris) -> None:
        before = stored_rows()

        ack = ris.exchange(signed_report("MSG3200", "F", SIGNED, ADDENDUM))

        assert msa(ack)[0] == "AE"
        assert err(ack) == (
            "OBX^1^3",
            "207",
            "addendum (OBX-3 ADDENDUM) for an exam without a signed report; "
            "send the final report first",
        )
        assert stored_rows() == before

    def test_addendum_appends_and_holds(self, alice_order, ris) -> None:
        addendum_at = SIGNED + timedelta(hours=120)
        ris.exchange(signed_report("MSG3201", "F", SIGNED))

        ack = ris.exchange(signed_report("MSG3202", "F", addendum_at, ADDENDUM))

        assert msa(ack) == ("AA", "MSG3202", "")
        final, addendum = ReportVersion.objects.order_by("pk")
        assert addendum.status == ReportVersion.Status.CORRECTED
        assert addendum.text == (
            f"{final.text}\n\n"
            "ADDENDUM: Comparison with the CT of 2025-02-03 shows no change."
        )
        assert addendum.signed_at == addendum_at
        with time_machine.travel(addendum_at + timedelta(hours=95), tick=False):
            assert report_state(alice_order).released == final
        with time_machine.travel(addendum_at + timedelta(hours=96), tick=False):
            assert report_state(alice_order).released == addendum


# Dead letters that staff retry


@pytest.fixture
def staff_client(client: Any) -> Any:
    user = get_user_model().objects.create_superuser(
        "staff.example", "staff@example.org", "z" * 16
    )
    log_in_verified_staff(client, user)
    return client


@transactional
class TestRetry:
    def test_report_before_its_order_is_applied_on_retry(
        self, california, ris, staff_client
    ) -> None:
        ack = ris.exchange(oru("MSG3300"))
        assert msa(ack)[0] == "AE"
        rejected = HL7Message.objects.get(status=HL7Message.Status.REJECTED)
        assert msa(ris.exchange(orm("MSG3301")))[0] == "AA"

        response = staff_client.post(
            "/staff/ingest/hl7message/",
            {"action": "retry", "_selected_action": [rejected.pk]},
            follow=True,
        )

        assert response.status_code == 200
        assert "1 message was applied." in response.content.decode()
        rejected.refresh_from_db()
        assert rejected.status == HL7Message.Status.RESOLVED
        processed = rejected.resolved_by
        assert processed.status == HL7Message.Status.PROCESSED
        assert processed.raw == rejected.raw
        assert ReportVersion.objects.get().message_control_id == "MSG3300"
        event = AuditEvent.objects.get(action="hl7.retry")
        assert event.actor_kind == "user"
        assert event.outcome == AuditEvent.Outcome.SUCCESS

    def test_retry_that_fails_again_keeps_the_row(
        self, california, ris, staff_client
    ) -> None:
        ris.exchange(oru("MSG3302"))
        rejected = HL7Message.objects.get()
        before = stored_rows()

        response = staff_client.post(
            "/staff/ingest/hl7message/",
            {"action": "retry", "_selected_action": [rejected.pk]},
            follow=True,
        )

        assert "1 message was rejected again; its reason is updated." in (
            response.content.decode()
        )
        rejected.refresh_from_db()
        assert rejected.status == HL7Message.Status.REJECTED
        assert rejected.retried_at is not None
        assert HL7Message.objects.count() == 1
        assert {
            name: rows for name, rows in stored_rows().items() if name != "AuditEvent"
        } == {name: rows for name, rows in before.items() if name != "AuditEvent"}

    def test_processed_message_is_not_retried(self, alice_order, staff_client) -> None:
        processed = HL7Message.objects.get()
        before = stored_rows()

        response = staff_client.post(
            "/staff/ingest/hl7message/",
            {"action": "retry", "_selected_action": [processed.pk]},
            follow=True,
        )

        assert "Only rejected messages can be retried." in response.content.decode()
        assert stored_rows() == before
        assert HL7Message.objects.get().status == HL7Message.Status.PROCESSED

    def test_staff_without_permission_cannot_retry(
        self, california, ris, client
    ) -> None:
        ris.exchange(oru("MSG3303"))
        rejected = HL7Message.objects.get()
        user = get_user_model().objects.create_user(
            "viewer.example", password="v" * 16, is_staff=True
        )
        user.user_permissions.add(Permission.objects.get(codename="view_hl7message"))
        log_in_verified_staff(client, user)

        client.post(
            "/staff/ingest/hl7message/",
            {"action": "retry", "_selected_action": [rejected.pk]},
        )

        rejected.refresh_from_db()
        assert rejected.status == HL7Message.Status.REJECTED
        assert rejected.retried_at is None


# The command


class StartupOutput(io.StringIO):
    """The command's stdout, which signals once the listening line is written."""

    def __init__(self) -> None:
        super().__init__()
        self.started = threading.Event()

    def write(self, text: str) -> int:
        written = super().write(text)
        if "Listening for HL7 on" in self.getvalue():
            self.started.set()
        return written


@transactional
class TestListenerCommand:
    def test_command_serves_until_sigterm(self, california) -> None:
        output = StartupOutput()
        acks: list[Message] = []

        def send_then_stop() -> None:
            assert output.started.wait(10)
            port = int(output.getvalue().split(":")[-1])
            client = MLLPClient(port)
            acks.append(client.exchange(adt("A04", "MSG3400")))
            client.close()
            os.kill(os.getpid(), signal.SIGTERM)

        sender = threading.Thread(target=send_then_stop)
        sender.start()
        call_command("run_hl7_listener", "--port", "0", stdout=output)
        sender.join(10)

        assert output.getvalue().startswith("Listening for HL7 on 127.0.0.1:")
        assert [msa(ack) for ack in acks] == [("AA", "MSG3400", "")]
        assert Patient.objects.get().mrn == ALICE_MRN
        assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL

    def test_port_in_use_is_reported(self, california) -> None:
        taken = socket.socket()
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]

        with pytest.raises(CommandError) as raised:
            call_command("run_hl7_listener", "--port", str(port))

        assert str(raised.value).startswith(f"could not listen on 127.0.0.1:{port}: ")
        taken.close()
