"""Mutated DICOM files and HL7 messages fed to the real importers.

Each input must either be imported or be rejected cleanly: a DICOM file is
stored or quarantined with a QuarantinedFile row, an HL7 message is
processed or kept as a REJECTED row. Any other exception fails the test.
Hypothesis runs a fixed number of examples from a fixed seed
(``derandomize``), so that a CI run is repeatable; a failure prints the
smallest input that shows it.
"""

import os
import random
import resource
import signal
import subprocess
import sys
import time
from datetime import date, timedelta
from io import BytesIO, StringIO
from pathlib import Path

import pydicom
import pytest
from django.core.management import CommandError, call_command
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom.uid import generate_uid

from viewbox.browser_fixtures import REPO, drop_separate_database, separate_database_url
from viewbox.conftest import make_exam, make_patient, package_path
from viewbox.ingest.hl7_import import import_message
from viewbox.ingest.models import HL7Message, QuarantinedFile
from viewbox.records.models import Instance

# Small real images in three encodings: native, JPEG 2000 and RLE.
SOURCES = [
    package_path("pydicom", "data/test_files/CT_small.dcm"),
    package_path("data_store", "data/693_J2KR.dcm"),
    package_path("data_store", "data/emri_small_RLE.dcm"),
]
# Growth of the process's peak resident memory allowed over a whole corpus.
# The largest source is about 200 KB, so a parser that fills a buffer of a
# forged length, or keeps every input, goes far beyond this.
# NOTE: Python's peak allocation (tracemalloc) is no measure here: pydicom
# asks for a buffer of a forged element length (64 MB seen) before it
# finds the file shorter, which costs address space but no resident memory.
MAX_RESIDENT_GROWTH = 256 * 1024 * 1024
# pydicom warns about every broken element it reads; the importer's answer
# is what is tested.
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning:pydicom.*")
FUZZ_SETTINGS = settings(
    max_examples=400,
    deadline=timedelta(seconds=10),
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def base_dicom(number: int, new_uids: bool = False) -> bytes:
    """Return a source image given the identifiers of the test exam."""
    ds = pydicom.dcmread(SOURCES[number % len(SOURCES)])
    ds.PatientID = "DEMO-1001"
    ds.AccessionNumber = "ACC1001"
    ds.PatientName = "TESTPATIENT^ALICE"
    ds.PatientBirthDate = "19800412"
    if new_uids:
        ds.StudyInstanceUID = ds.SeriesInstanceUID = generate_uid()
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    buffer = BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


BASE_DICOM = [base_dicom(number) for number in range(len(SOURCES))]


@st.composite
def mutated_dicom(draw: st.DrawFn) -> bytes:
    data = bytearray(BASE_DICOM[draw(st.integers(0, len(BASE_DICOM) - 1))])
    for _ in range(draw(st.integers(1, 8))):
        if not data:
            break
        kind = draw(st.sampled_from(["flip", "overwrite", "length", "cut", "insert"]))
        # Most structure, and every tag the importer reads, sits in the
        # first few kilobytes; the pixel data follows.
        end = min(len(data), 4096) if draw(st.booleans()) else len(data)
        at = draw(st.integers(0, max(end - 1, 0)))
        if kind == "flip":
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif kind == "overwrite":
            chunk = draw(st.binary(min_size=1, max_size=16))
            data[at : at + len(chunk)] = chunk
        elif kind == "length":
            # A huge or odd value where a length field may sit.
            value = draw(st.sampled_from([0xFFFFFFFF, 0x7FFFFFFF, 0xFFFF, 1, 3]))
            data[at : at + 4] = value.to_bytes(4, "little")
        elif kind == "cut":
            del data[at:]
        else:
            data[at:at] = draw(st.binary(min_size=1, max_size=64))
    return bytes(data)


@pytest.fixture
def alice_exam(california):
    alice = make_patient(
        california, "DEMO-1001", "Alice", "Testpatient", date(1980, 4, 12)
    )
    return make_exam(alice, california, "ACC1001")


def peak_resident_bytes() -> int:
    # Linux reports ru_maxrss in kilobytes.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def import_one(path: Path) -> str:
    """Import one file with the command; return "stored" or "rejected"."""
    quarantined = QuarantinedFile.objects.count()
    try:
        call_command("import_dicom", str(path), stdout=StringIO(), stderr=StringIO())
    except CommandError as error:
        assert error.returncode == 1, error
        assert QuarantinedFile.objects.count() == quarantined + 1
        return "rejected"
    return "stored"


@pytest.mark.django_db
class TestDicomFuzz:
    def test_mutated_files_are_stored_or_quarantined(
        self, alice_exam, tmp_path
    ) -> None:
        outcomes: dict[str, int] = {"stored": 0, "rejected": 0}
        resident_before = peak_resident_bytes()

        @FUZZ_SETTINGS
        @given(data=mutated_dicom())
        def check(data: bytes) -> None:
            # Each example starts without stored images, so that an intact
            # copy is stored again instead of being a duplicate.
            Instance.objects.all().delete()
            path = tmp_path / f"in-{sum(outcomes.values())}.dcm"
            path.write_bytes(data)
            outcomes[import_one(path)] += 1

        check()
        assert peak_resident_bytes() - resident_before < MAX_RESIDENT_GROWTH
        # Both branches ran, so the corpus was neither all broken nor
        # all intact.
        assert outcomes["stored"] > 0, outcomes
        assert outcomes["rejected"] > 0, outcomes
        assert Instance.objects.count() <= outcomes["stored"]


BASE_HL7 = [
    "\r".join(
        [
            "MSH|^~\\&|RIS|RLA|VIEWBOX|VIEWBOX|20261120090000+0000||ADT^A04|F-1|P|2.5.1",
            "EVN|A04",
            "PID|1||DEMO-1001^^^RLA^MR||TESTPATIENT^ALICE^Q||19800412|F|||"
            "100 Example Way^^Los Angeles^CA^90024||(310)555-0100",
            "PV1|1|O|RLA-SANTAM||||1234567890^EXAMPLE^PAT^^^Dr.",
        ]
    ),
    "\r".join(
        [
            "MSH|^~\\&|RIS|RLA|VIEWBOX|VIEWBOX|20261120090000+0000||ORM^O01|F-2|P|2.5.1",
            "PID|1||DEMO-1001^^^RLA^MR||TESTPATIENT^ALICE^Q||19800412|F",
            "PV1|1|O|RLA-SANTAM||||1234567890^EXAMPLE^PAT^^^Dr.",
            "ORC|NW|ACC2002|ACC2002||CM||||20261120090000+0000",
            "OBR|1|ACC2002|ACC2002|71045^XR CHEST 1 VIEW|||20261120090000+0000|"
            "20261120090000+0000||||||||1234567890^EXAMPLE^PAT^^^Dr.||||||||CR|||||"
            "||R06.02^Shortness of breath",
        ]
    ),
    "\r".join(
        [
            "MSH|^~\\&|RIS|RLA|VIEWBOX|VIEWBOX|20261121090000+0000||ORU^R01|F-3|P|2.5.1",
            "PID|1||DEMO-1001^^^RLA^MR||TESTPATIENT^ALICE^Q||19800412|F",
            "OBR|1|ACC2002|ACC2002|71045^XR CHEST 1 VIEW|||20261120090000+0000||||||"
            "|||||||||20261121090000+0000|||F|||||||"
            "1112223334&READER&IMA&&&Dr.^20261121090000+0000",
            "OBX|1|TX|71045^XR CHEST 1 VIEW||FINDINGS: Normal heart size.||||||F",
            "OBX|2|TX|71045^XR CHEST 1 VIEW||IMPRESSION: Normal.||||||F",
        ]
    ),
]
# Characters that mean something to HL7 v2 or to MLLP framing, and some
# that mean something to the database or to a terminal.
SPECIAL = "|^~\\&\r\n\x0b\x1c\x00'\"%<>\u202e\ufeff"


@st.composite
def mutated_hl7(draw: st.DrawFn) -> str:
    text = list(BASE_HL7[draw(st.integers(0, len(BASE_HL7) - 1))])
    for _ in range(draw(st.integers(1, 6))):
        at = draw(st.integers(0, len(text)))
        kind = draw(st.sampled_from(["special", "text", "delete", "repeat", "cut"]))
        if kind == "special":
            text[at:at] = draw(st.text(alphabet=SPECIAL, min_size=1, max_size=4))
        elif kind == "text":
            text[at:at] = draw(st.text(max_size=40))
        elif kind == "delete":
            del text[at : at + draw(st.integers(1, 20))]
        elif kind == "repeat":
            text[at:at] = text[at : at + draw(st.integers(1, 200))] * draw(
                st.integers(2, 50)
            )
        else:
            del text[at:]
    return "".join(text)


@pytest.mark.django_db
class TestHl7Fuzz:
    def test_mutated_messages_are_processed_or_rejected(self, california) -> None:
        outcomes: dict[str, int] = {"processed": 0, "duplicate": 0, "rejected": 0}
        resident_before = peak_resident_bytes()

        @FUZZ_SETTINGS
        @given(text=mutated_hl7())
        def check(text: str) -> None:
            # Each example starts with no stored message, so that a copy is
            # applied again instead of being skipped as a duplicate, and an
            # applied message cannot resolve rejections of earlier examples.
            # Resolved rows point at the message that resolved them: first.
            HL7Message.objects.exclude(resolved_by=None).delete()
            HL7Message.objects.all().delete()
            rejected = HL7Message.objects.filter(status=HL7Message.Status.REJECTED)
            before = rejected.count()
            result = import_message(text)
            outcomes[result.status] += 1
            if result.status == "rejected":
                assert result.error
                assert rejected.count() in (before, before + 1)
            else:
                assert rejected.count() == before

        check()
        assert peak_resident_bytes() - resident_before < MAX_RESIDENT_GROWTH
        assert outcomes["rejected"] > 0, outcomes
        assert outcomes["processed"] + outcomes["duplicate"] > 0, outcomes


@pytest.mark.django_db
class TestNulCharacters:
    def test_hl7_message_with_nul_is_rejected(self, california) -> None:
        result = import_message("\x00" + BASE_HL7[0])
        assert result.status == "rejected"
        assert result.error == "message contains a NUL character (0x00)"
        row = HL7Message.objects.get()
        assert row.raw == "\ufffd" + BASE_HL7[0]

    def test_dicom_text_with_nul_is_stored_without_it(
        self, alice_exam, tmp_path
    ) -> None:
        ds = pydicom.dcmread(BytesIO(BASE_DICOM[0]))
        ds.SeriesDescription = "Head\x00axial"
        path = tmp_path / "nul.dcm"
        ds.save_as(path, enforce_file_format=True)
        assert import_one(path) == "stored"
        assert Instance.objects.get().series.description == "Headaxial"


def corrupt_copies(folder: Path, count: int) -> None:
    """Write ``count`` mutated images whose header still parses, so that most
    are stored and reach the renderer with broken pixel data."""
    generator = random.Random(20261204)
    folder.mkdir(parents=True, exist_ok=True)
    for number in range(count):
        data = bytearray(base_dicom(number, new_uids=True))
        start = len(data) // 2
        for _ in range(generator.randint(1, 64)):
            at = generator.randrange(start, len(data))
            data[at] = generator.randrange(256)
        if number % 5 == 0:
            del data[generator.randrange(start, len(data)) :]
        (folder / f"{number:03}.dcm").write_bytes(data)


@pytest.mark.slow
class TestWorkerSurvivesCorruptImages:
    def test_worker_renders_corpus_and_stays_up(self, tmp_path) -> None:
        database_url = separate_database_url(tmp_path, "fuzz")
        env = {
            **os.environ,
            "VIEWBOX_DATA_DIR": str(tmp_path),
            "VIEWBOX_DATABASE_URL": database_url,
        }

        def manage(*args: str, check: bool = True) -> subprocess.CompletedProcess:
            return subprocess.run(
                [sys.executable, str(REPO / "manage.py"), *args],
                env=env,
                cwd=REPO,
                capture_output=True,
                text=True,
                check=check,
                timeout=120,
            )

        try:
            manage("migrate", "-v0")
            corrupt_copies(tmp_path / "in", 24)
            imported = manage(
                "import_dicom", "--keep-rejected", str(tmp_path / "in"), check=False
            )
            stored = int(imported.stdout.split()[-6])
            # Most copies keep a readable header and reach the renderer.
            assert stored >= 12, imported.stdout
            worker = subprocess.Popen(
                [
                    sys.executable,
                    str(REPO / "manage.py"),
                    "db_worker",
                    "--interval",
                    "0.2",
                ],
                env=env,
                cwd=REPO,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            try:
                deadline = time.monotonic() + 60
                while time.monotonic() < deadline:
                    pending = manage("shell", "-c", PENDING_TASKS).stdout.split()[-1]
                    if pending == "0":
                        break
                    assert worker.poll() is None, "the worker exited"
                    time.sleep(0.5)
                assert pending == "0", "the worker did not finish the renders"
                assert worker.poll() is None, "the worker exited"
                finished = manage("shell", "-c", FINISHED_TASKS).stdout.split()[-1]
                assert int(finished) == stored
            finally:
                worker.send_signal(signal.SIGTERM)
                worker.wait(timeout=30)
        finally:
            drop_separate_database(database_url)


FINISHED_TASKS = """
from django_tasks_db.models import DBTaskResult
print(DBTaskResult.objects.filter(status__in=["SUCCESSFUL", "FAILED"]).count())
"""
PENDING_TASKS = """
from django_tasks_db.models import DBTaskResult
print(DBTaskResult.objects.filter(status__in=["READY", "RUNNING"]).count())
"""
