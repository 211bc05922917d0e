"""The DICOM receiver against real peers: dcmtk's storescu and dcmsend, and
Orthanc 1.10 in a private network namespace."""

import errno
import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import date
from io import StringIO
from pathlib import Path

import pydicom
import pytest
from django.core.management import call_command
from django.db import IntegrityError
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE, _config

from viewbox.audit.models import AuditEvent
from viewbox.conftest import make_exam, make_patient, package_path
from viewbox.ingest import dicom_import
from viewbox.ingest.dicom_receiver import start_receiver
from viewbox.ingest.models import QuarantinedFile
from viewbox.ingest.tests.test_database_writer import write_series
from viewbox.ingest.tests.test_dicom_import import write_copy
from viewbox.records.models import Instance, Study

pytestmark = [pytest.mark.peer, pytest.mark.django_db(transaction=True)]

DATA = package_path("data_store", "data")
TEST_FILES = package_path("pydicom", "data/test_files")
CALLERS = ["STORESCU", "DCMSEND", "ORTHANC"]
PEER_TIMEOUT_SECONDS = 120
# Real files in the transfer syntaxes that modalities send, with the syntax
# each must be stored in: the receiver never converts them.
COMPRESSED = {
    "JPEG baseline": (DATA / "color3d_jpeg_baseline.dcm", "1.2.840.10008.1.2.4.50"),
    "JPEG extended": (TEST_FILES / "JPEG-lossy.dcm", "1.2.840.10008.1.2.4.51"),
    "JPEG lossless SV1": (
        DATA / "JPGLosslessP14SV1_1s_1f_8b.dcm",
        "1.2.840.10008.1.2.4.70",
    ),
    "JPEG-LS lossless": (
        TEST_FILES / "MR_small_jpeg_ls_lossless.dcm",
        "1.2.840.10008.1.2.4.80",
    ),
    "JPEG 2000 lossless": (DATA / "693_J2KR.dcm", "1.2.840.10008.1.2.4.90"),
    "JPEG 2000": (DATA / "MR2_J2KI.dcm", "1.2.840.10008.1.2.4.91"),
    "RLE": (DATA / "OBXXXX1A_rle.dcm", "1.2.840.10008.1.2.5"),
    "deflated": (TEST_FILES / "image_dfl.dcm", "1.2.840.10008.1.2.1.99"),
}


def dcmtk(*arguments: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(argument) for argument in arguments],
        capture_output=True,
        text=True,
        timeout=PEER_TIMEOUT_SECONDS,
        env={**os.environ, "TCP_NODELAY": "1"},
    )


@pytest.fixture(autouse=True)
def need_dcmtk() -> None:
    if shutil.which("storescu") is None or shutil.which("dcmsend") is None:
        pytest.skip("dcmtk is not installed: apt-get install -y dcmtk")


@pytest.fixture
def receiver(settings) -> Iterator[int]:
    settings.DICOM_CALLING_AE_TITLES = CALLERS
    settings.DICOM_AE_TITLE = "VIEWBOX"
    server = start_receiver("127.0.0.1", 0)
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()


@pytest.fixture
def alice_exam(california):
    alice = make_patient(
        california, "DEMO-1001", "Alice", "Testpatient", date(1980, 4, 12)
    )
    return make_exam(alice, california, "ACC1001")


def stored_files(settings) -> list[Path]:
    """Return the files in the storage, except the running receiver's lock file."""
    media = Path(settings.STORAGES["default"]["OPTIONS"]["location"])
    return sorted(
        path for path in media.rglob("*") if path.is_file() and path.name != ".lock"
    )


def ct_copy(tmp_path: Path) -> Path:
    """Write a CT slice of Alice's exam (DEMO-1001, ACC1001) with fresh UIDs."""
    return write_copy(
        DATA / "693_UNCR.dcm", tmp_path / "ct.dcm", "DEMO-1001", "ACC1001"
    )


def pixel_data(path: Path) -> bytes:
    return pydicom.dcmread(path).PixelData


class TestAssociation:
    def test_unknown_calling_ae_is_rejected(self, receiver, tmp_path) -> None:
        path = ct_copy(tmp_path)
        result = dcmtk(
            "storescu",
            "-aet",
            "INTRUDER",
            "-aec",
            "VIEWBOX",
            "127.0.0.1",
            receiver,
            path,
        )
        assert result.returncode != 0
        assert "Calling AE Title Not Recognized" in result.stderr
        assert Instance.objects.count() == 0

    def test_empty_caller_list_is_refused(self, settings) -> None:
        settings.DICOM_CALLING_AE_TITLES = []
        with pytest.raises(
            ValueError, match="VIEWBOX_DICOM_CALLING_AE_TITLES is empty"
        ):
            start_receiver("127.0.0.1", 0)

    def test_echo_is_answered(self, receiver) -> None:
        result = dcmtk("echoscu", "-aet", "STORESCU", "127.0.0.1", receiver)
        assert result.returncode == 0, result.stderr


class TestStorescu:
    def test_ct_is_stored_and_matched(
        self, receiver, alice_exam, settings, tmp_path
    ) -> None:
        path = ct_copy(tmp_path)
        result = dcmtk("storescu", "127.0.0.1", receiver, path)
        assert result.returncode == 0, result.stderr
        instance = Instance.objects.get()
        assert instance.series.study.exam == alice_exam
        assert instance.sop_instance_uid == pydicom.dcmread(path).SOPInstanceUID
        [stored] = stored_files(settings)
        assert pixel_data(stored) == pixel_data(path)
        assert stored.stat().st_size == instance.size

    def test_jpeg_2000_is_stored_as_sent(self, receiver, settings, tmp_path) -> None:
        path = write_copy(
            DATA / "693_J2KR.dcm", tmp_path / "ct.dcm", "DEMO-1001", "ACC1001"
        )
        result = dcmtk(
            "storescu", "--propose-j2k-lossless", "127.0.0.1", receiver, path
        )
        assert result.returncode == 0, result.stderr
        instance = Instance.objects.get()
        assert instance.transfer_syntax_uid == "1.2.840.10008.1.2.4.90"
        assert pixel_data(stored_files(settings)[0]) == pixel_data(path)

    def test_resend_is_stored_once(self, receiver, settings, tmp_path) -> None:
        path = ct_copy(tmp_path)
        first = dcmtk("storescu", "127.0.0.1", receiver, path)
        second = dcmtk("storescu", "127.0.0.1", receiver, path)
        assert first.returncode == 0, first.stderr
        assert second.returncode == 0, second.stderr
        assert Instance.objects.count() == 1
        assert len(stored_files(settings)) == 1

    def test_resend_with_other_pixels_is_rejected(
        self, receiver, settings, tmp_path
    ) -> None:
        path = ct_copy(tmp_path)
        first = dcmtk("storescu", "127.0.0.1", receiver, path)
        [stored] = stored_files(settings)
        kept_bytes = stored.read_bytes()
        ds = pydicom.dcmread(path)
        pixels = bytearray(ds.PixelData)
        pixels[-1] ^= 0xFF
        ds.PixelData = bytes(pixels)
        ds.save_as(path)

        second = dcmtk("storescu", "-v", "127.0.0.1", receiver, path)

        assert first.returncode == 0, first.stderr
        assert "Received Store Response (Error: CannotUnderstand)" in second.stderr
        assert Instance.objects.count() == 1
        assert stored_files(settings) == [stored]
        assert stored.read_bytes() == kept_bytes
        assert QuarantinedFile.objects.get().reason == (
            "SOPInstanceUID is already stored with different content; "
            "the stored file is kept"
        )

    def test_resend_restores_a_missing_file(
        self, receiver, settings, tmp_path, caplog
    ) -> None:
        path = ct_copy(tmp_path)
        first = dcmtk("storescu", "127.0.0.1", receiver, path)
        [stored] = stored_files(settings)
        stored_bytes = stored.read_bytes()
        stored.unlink()

        second = dcmtk("storescu", "127.0.0.1", receiver, path)

        assert first.returncode == 0, first.stderr
        assert second.returncode == 0, second.stderr
        instance = Instance.objects.get()
        assert stored_files(settings) == [stored]
        assert stored.read_bytes() == stored_bytes
        assert f"Restored the missing file of instance {instance.pk}" in caplog.text

    def test_import_of_a_received_file_is_a_duplicate(
        self, receiver, settings, tmp_path
    ) -> None:
        path = ct_copy(tmp_path)
        result = dcmtk("storescu", "127.0.0.1", receiver, path)
        stdout = StringIO()

        call_command("import_dicom", str(path), stdout=stdout)

        assert result.returncode == 0, result.stderr
        assert "0 stored, 1 duplicate, 0 rejected" in stdout.getvalue()
        assert Instance.objects.count() == 1
        assert QuarantinedFile.objects.count() == 0

    def test_padded_import_is_a_duplicate(self, receiver, tmp_path) -> None:
        # storescu drops Data Set Trailing Padding (FFFC,FFFC) as it sends.
        path = ct_copy(tmp_path)
        ds = pydicom.dcmread(path)
        ds.add_new(0xFFFCFFFC, "OB", bytes(64))
        ds.save_as(path)
        result = dcmtk("storescu", "127.0.0.1", receiver, path)
        stdout = StringIO()

        call_command("import_dicom", str(path), stdout=stdout)

        assert result.returncode == 0, result.stderr
        assert "0 stored, 1 duplicate, 0 rejected" in stdout.getvalue()
        assert QuarantinedFile.objects.count() == 0

    def test_import_without_meta_group_length_is_a_duplicate(
        self, receiver, settings, tmp_path
    ) -> None:
        path = ct_copy(tmp_path)
        data = path.read_bytes()
        # (0002,0000) UL, 4 bytes long, is the first element after "DICM".
        assert data[132:138] == b"\x02\x00\x00\x00UL"
        path.write_bytes(data[:132] + data[144:])
        result = dcmtk("storescu", "127.0.0.1", receiver, path)
        stdout = StringIO()

        call_command("import_dicom", str(path), stdout=stdout)

        assert result.returncode == 0, result.stderr
        assert "0 stored, 1 duplicate, 0 rejected" in stdout.getvalue()

    def test_resend_in_another_syntax_is_rejected(
        self, receiver, settings, tmp_path
    ) -> None:
        path = ct_copy(tmp_path)
        first = dcmtk("storescu", "127.0.0.1", receiver, path)
        ds = pydicom.dcmread(path)
        ds.file_meta.TransferSyntaxUID = pydicom.uid.ImplicitVRLittleEndian
        ds.save_as(path, enforce_file_format=True)

        second = dcmtk("storescu", "-v", "127.0.0.1", receiver, path)

        # NOTE: the same instance in another transfer syntax is taken for a
        # conflict, because only the bytes of the data sets are compared.
        assert first.returncode == 0, first.stderr
        assert "Received Store Response (Error: CannotUnderstand)" in second.stderr
        assert Instance.objects.get().transfer_syntax_uid == ExplicitVRLittleEndian

    def test_corrupt_file_fails_and_is_quarantined(
        self, receiver, settings, tmp_path
    ) -> None:
        path = ct_copy(tmp_path)
        ds = pydicom.dcmread(path)
        ds.Rows = 1024  # the pixel data now contains half the rows
        ds.save_as(path)
        result = dcmtk("storescu", "-v", "127.0.0.1", receiver, path)
        assert "Received Store Response (Error: CannotUnderstand)" in result.stderr
        assert Instance.objects.count() == 0
        assert stored_files(settings) == []
        kept = QuarantinedFile.objects.get()
        assert kept.reason == (
            "Pixel Data (7FE0,0010) is truncated: 524288 bytes, 1048576 expected"
        )
        assert kept.original_name.startswith("C-STORE from STORESCU ")
        assert pixel_data(Path(kept.path)) == ds.PixelData

    def test_storage_failure_fails_and_keeps_nothing(
        self, receiver, settings, monkeypatch, tmp_path
    ) -> None:
        def full_disk(path: Path) -> None:
            raise OSError(errno.ENOSPC, "No space left on device")

        monkeypatch.setattr(dicom_import, "_fsync_path", full_disk)
        path = ct_copy(tmp_path)
        result = dcmtk("storescu", "-v", "127.0.0.1", receiver, path)
        assert "Received Store Response (Refused: OutOfResources)" in result.stderr
        assert Instance.objects.count() == 0
        assert QuarantinedFile.objects.count() == 0
        assert stored_files(settings) == []

        monkeypatch.undo()
        retry = dcmtk("storescu", "127.0.0.1", receiver, path)
        assert retry.returncode == 0, retry.stderr
        assert Instance.objects.count() == 1

    def test_database_failure_log_quotes_no_uid(
        self, receiver, monkeypatch, tmp_path, caplog
    ) -> None:
        path = ct_copy(tmp_path)
        uid = pydicom.dcmread(path).SOPInstanceUID

        def failing_insert(instance: Instance) -> None:
            # As PostgreSQL words a duplicate key.
            raise IntegrityError(
                "duplicate key value violates unique constraint\n"
                f"DETAIL:  Key (sop_instance_uid)=({uid}) already exists."
            )

        monkeypatch.setattr(dicom_import, "_insert_instance", failing_insert)
        with caplog.at_level(logging.INFO):
            result = dcmtk("storescu", "-v", "127.0.0.1", receiver, path)
        assert "Received Store Response (Refused: OutOfResources)" in result.stderr
        assert "Could not store a C-STORE data set: IntegrityError" in caplog.text
        assert uid not in caplog.text


class TestAudit:
    def test_study_is_audited_once_per_association(
        self, receiver, alice_exam, tmp_path
    ) -> None:
        first, second = tmp_path / "first", tmp_path / "second"
        paths = write_series(tmp_path, 5)
        for index, path in enumerate(paths):
            target = first if index < 3 else second
            target.mkdir(exist_ok=True)
            path.rename(target / path.name)
        for folder in (first, second):
            result = dcmtk("storescu", "+sd", "127.0.0.1", receiver, folder)
            assert result.returncode == 0, result.stderr
        assert Instance.objects.count() == 5
        imports = AuditEvent.objects.filter(action="images.import")
        assert [(event.exam_id, event.patient_id) for event in imports] == [
            (alice_exam.pk, alice_exam.visit.patient_id)
        ] * 2

    def test_unmatched_study_logged_once_per_association(
        self, receiver, tmp_path, caplog
    ) -> None:
        folder = tmp_path / "series"
        folder.mkdir()
        for path in write_series(tmp_path, 3):
            path.rename(folder / path.name)
        caplog.set_level(logging.INFO, logger="viewbox.ingest.dicom_receiver")

        result = dcmtk("storescu", "+sd", "127.0.0.1", receiver, folder)

        assert result.returncode == 0, result.stderr
        study = Study.objects.get()
        assert study.exam is None
        assert [
            record.getMessage()
            for record in caplog.records
            if "unmatched study" in record.getMessage()
        ] == [
            f"Storing instances in unmatched study {study.pk}, the first as "
            f"instance {Instance.objects.order_by('pk').first().pk}"
        ]

    def test_resent_instance_is_not_audited(self, receiver, tmp_path) -> None:
        [path] = write_series(tmp_path, 1)
        for _ in range(2):
            result = dcmtk("storescu", "127.0.0.1", receiver, path)
            assert result.returncode == 0, result.stderr
        assert AuditEvent.objects.filter(action="images.import").count() == 1


class TestAnnouncedUids:
    def test_mismatched_instance_uid_fails(
        self, receiver, monkeypatch, tmp_path
    ) -> None:
        # dcmtk announces the UIDs of the data set itself; pynetdicom sending
        # a file announces those of its File Meta Information instead.
        path = ct_copy(tmp_path)
        ds = pydicom.dcmread(path)
        announced = pydicom.uid.generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = announced
        ds.save_as(path)
        monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", True)

        sender = AE(ae_title="STORESCU")
        sender.add_requested_context(ds.SOPClassUID, ExplicitVRLittleEndian)
        association = sender.associate("127.0.0.1", receiver, ae_title="VIEWBOX")
        assert association.is_established
        status = association.send_c_store(path)
        association.release()

        assert status.Status == 0xA900
        assert Instance.objects.count() == 0
        assert QuarantinedFile.objects.get().reason == (
            "SOPInstanceUID differs from the one announced in the C-STORE request"
        )

    def test_mismatched_class_uids_are_quoted(
        self, receiver, monkeypatch, tmp_path, caplog
    ) -> None:
        path = ct_copy(tmp_path)
        ds = pydicom.dcmread(path)
        mr_image = "1.2.840.10008.5.1.4.1.1.4"
        ds.file_meta.MediaStorageSOPClassUID = mr_image
        ds.save_as(path)
        monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", True)

        sender = AE(ae_title="STORESCU")
        sender.add_requested_context(mr_image, ExplicitVRLittleEndian)
        association = sender.associate("127.0.0.1", receiver, ae_title="VIEWBOX")
        assert association.is_established
        status = association.send_c_store(path)
        association.release()

        expected = (
            f"SOPClassUID '{ds.SOPClassUID}' differs from the announced '{mr_image}'"
        )
        assert status.Status == 0xA900
        # Error Comment (0000,0902) is an LO value of at most 64 characters.
        assert status.ErrorComment == expected[:64]
        assert Instance.objects.count() == 0
        assert QuarantinedFile.objects.get().reason == expected
        assert expected in caplog.text


class TestDcmsend:
    def test_compressed_files_are_stored_unchanged(
        self, receiver, settings, tmp_path
    ) -> None:
        sent = {}
        for name, (source, syntax) in COMPRESSED.items():
            path = tmp_path / f"{len(sent)}.dcm"
            write_copy(source, path, "DEMO-1001", "ACC1001")
            sent[pydicom.dcmread(path).SOPInstanceUID] = (name, syntax)
        result = dcmtk(
            "dcmsend",
            "-aet",
            "DCMSEND",
            "127.0.0.1",
            receiver,
            *sorted(tmp_path.glob("*.dcm")),
        )
        assert result.returncode == 0, result.stderr
        stored = {
            instance.sop_instance_uid: instance.transfer_syntax_uid
            for instance in Instance.objects.all()
        }
        assert stored == {uid: syntax for uid, (_, syntax) in sent.items()}


def relay_unix_socket_to(port: int, path: Path) -> socket.socket:
    """Forward each connection on a Unix socket to a loopback TCP port."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen()

    def pump(source: socket.socket, target: socket.socket) -> None:
        try:
            while chunk := source.recv(1 << 16):
                target.sendall(chunk)
        except OSError:
            pass
        finally:
            for end in (source, target):
                try:
                    end.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def accept() -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", port))
            threading.Thread(target=pump, args=(client, upstream), daemon=True).start()
            threading.Thread(target=pump, args=(upstream, client), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    return listener


class TestOrthanc:
    def test_orthanc_pushes_a_study(self, receiver, alice_exam, tmp_path) -> None:
        if shutil.which("Orthanc") is None or shutil.which("unshare") is None:
            pytest.skip("Orthanc is not installed: apt-get install -y orthanc")
        study, series = pydicom.uid.generate_uid(), pydicom.uid.generate_uid()
        files = [
            write_copy(
                source,
                tmp_path / "in" / f"{number}.dcm",
                "DEMO-1001",
                "ACC1001",
                study=study,
                series=series,
            )
            for number, source in enumerate(
                [DATA / "693_UNCR.dcm", DATA / "693_J2KR.dcm", DATA / "693_UNCI.dcm"]
            )
        ]
        relay = relay_unix_socket_to(receiver, tmp_path / "receiver.sock")
        try:
            result = subprocess.run(
                [
                    "unshare",
                    "--net",
                    # Without root, a user namespace grants the right to
                    # bring up the new namespace's loopback interface.
                    *([] if os.geteuid() == 0 else ["--map-root-user"]),
                    "--",
                    sys.executable,
                    str(Path(__file__).with_name("orthanc_push.py")),
                    "--socket",
                    str(tmp_path / "receiver.sock"),
                    "--ae-title",
                    "VIEWBOX",
                    *map(str, files),
                ],
                capture_output=True,
                text=True,
                timeout=PEER_TIMEOUT_SECONDS,
                env={**os.environ, "TCP_NODELAY": "1"},
            )
        finally:
            relay.close()
        assert result.returncode == 0, result.stderr
        response = json.loads(result.stdout)
        assert response["status"] == 200, response["body"]
        instances = Instance.objects.filter(series__study__study_instance_uid=study)
        assert instances.count() == 3
        assert {instance.series.study.exam for instance in instances} == {alice_exam}
        assert {instance.transfer_syntax_uid for instance in instances} == {
            "1.2.840.10008.1.2.1",
            "1.2.840.10008.1.2.4.90",
        }
