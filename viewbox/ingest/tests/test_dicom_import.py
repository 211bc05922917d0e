import errno
import logging
import warnings
from datetime import date
from io import StringIO
from pathlib import Path

import pydicom
import pytest
from django.apps import apps
from django.core.files.storage import default_storage
from django.core.management import CommandError, call_command
from django.db import IntegrityError
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset, write_file_meta_info
from pydicom.uid import generate_uid

from viewbox.conftest import (
    make_exam,
    make_patient,
    package_path,
    replace_is_value,
)
from viewbox.ingest import dicom_import
from viewbox.ingest.dicom_import import (
    INSERTED_INSTANCE_FIELDS,
    DatasetMismatchError,
    check_dicom_file,
    describe_storage_error,
    quoted_uid,
)
from viewbox.ingest.models import QuarantinedFile
from viewbox.records.actions import attach_waiting_studies
from viewbox.records.models import Instance, Series, Study

CT = package_path("data_store", "data/693_J2KR.dcm")
# 128 by 128 pixels of 16 bits in Explicit VR Little Endian.
SMALL_CT = package_path("pydicom", "data/test_files/CT_small.dcm")
# Preamble, "DICM" and the (0002,0000) element that counts the rest of the
# File Meta Information.
_META_START = 128 + 4 + 12
US_MULTIFRAME = package_path("data_store", "data/color3d_jpeg_baseline.dcm")


def write_copy(
    source: Path, target: Path, patient_id: str, accession: str, **uids: str
) -> Path:
    ds = pydicom.dcmread(source)
    ds.PatientID = patient_id
    ds.PatientName = "TESTPATIENT^ALICE"
    ds.AccessionNumber = accession
    ds.StudyInstanceUID = uids.get("study", generate_uid())
    ds.SeriesInstanceUID = uids.get("series", generate_uid())
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = uids.get(
        "sop", generate_uid()
    )
    target.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(target, enforce_file_format=True)
    return target


def assert_rejected(path: Path, message: str) -> None:
    """Import path and check that it is rejected with message and not stored."""
    _, stderr, status = run_import(path)
    assert status == 1
    assert message in stderr
    assert Instance.objects.count() == 0


def run_import(*paths: Path) -> tuple[str, str, int]:
    stdout, stderr = StringIO(), StringIO()
    try:
        call_command("import_dicom", *map(str, paths), stdout=stdout, stderr=stderr)
        status = 0
    except CommandError as error:
        status = error.returncode
    return stdout.getvalue(), stderr.getvalue(), status


@pytest.fixture
def alice_exam(california):
    alice = make_patient(
        california, "DEMO-1001", "Alice", "Testpatient", date(1980, 4, 12)
    )
    return make_exam(alice, california, "ACC1001")


@pytest.mark.django_db
class TestRejectedFiles:
    @pytest.fixture(autouse=True, params=["read whole", "read from disk"])
    def header_reading(self, request, monkeypatch) -> None:
        # Files above a size have their header parsed from the file itself.
        if request.param == "read from disk":
            monkeypatch.setattr(dicom_import, "_READ_WHOLE_BYTES", 0)

    def test_non_dicom_file_is_quarantined(self, alice_exam, tmp_path) -> None:
        folder = tmp_path / "in"
        write_copy(CT, folder / "good.dcm", "DEMO-1001", "ACC1001")
        (folder / "notes.txt").write_text("not an image")
        stdout, stderr, status = run_import(folder)
        assert status == 1
        assert f"{folder / 'notes.txt'}: rejected: not a DICOM file" in stderr
        assert "1 stored, 0 duplicate, 1 rejected" in stdout
        assert Instance.objects.count() == 1
        kept = QuarantinedFile.objects.get()
        assert kept.original_name == "notes.txt"
        assert Path(kept.path).read_text() == "not an image"
        assert not (folder / "notes.txt").exists()

    def test_truncated_pixel_data_is_quarantined(self, alice_exam, tmp_path) -> None:
        source = package_path("data_store", "data/693_UNCI.dcm")
        path = write_copy(source, tmp_path / "in" / "short.dcm", "DEMO-1001", "ACC1001")
        path.write_bytes(path.read_bytes()[:-1000])
        assert_rejected(
            path,
            "Pixel Data (7FE0,0010) is truncated: the file ends 1000 bytes before "
            "its value does",
        )

    def test_cut_compressed_pixels_are_quarantined(self, alice_exam, tmp_path) -> None:
        path = write_copy(CT, tmp_path / "in" / "cut.dcm", "DEMO-1001", "ACC1001")
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
        assert_rejected(path, "the file may end inside compressed Pixel Data")

    def test_image_without_pixel_data_is_quarantined(
        self, alice_exam, tmp_path
    ) -> None:
        path = write_copy(SMALL_CT, tmp_path / "in" / "cut.dcm", "DEMO-1001", "ACC1001")
        pixel_data = pydicom.dcmread(path, defer_size=0).get_item(
            "PixelData", keep_deferred=True
        )
        # The file ends where the Pixel Data element starts, its header
        # (tag, VR, reserved bytes and length) included.
        path.write_bytes(path.read_bytes()[: pixel_data.value_tell - 12])
        assert_rejected(path, "Pixel Data (7FE0,0010) is missing from the image")

    @pytest.mark.parametrize(
        "frames", ["-5", "0", "99999999999999999999", "1.5", "inf", "2\\3"]
    )
    def test_invalid_number_of_frames_is_quarantined(
        self, alice_exam, tmp_path, frames
    ) -> None:
        path = write_copy(CT, tmp_path / "in" / "a.dcm", "DEMO-1001", "ACC1001")
        ds = pydicom.dcmread(path)
        ds.NumberOfFrames = "1234567890"
        ds.save_as(path)
        replace_is_value(path, 0x00280008, "1234567890", frames)
        assert_rejected(path, "Number of Frames (0028,0008) is invalid")

    def test_invalid_uid_is_not_quoted(self, alice_exam, tmp_path, caplog) -> None:
        path = write_copy(
            CT,
            tmp_path / "in" / "a.dcm",
            "DEMO-1001",
            "ACC1001",
            study="Testpatient^Alice 19800412",
        )
        with caplog.at_level(logging.INFO):
            _, stderr, status = run_import(path)
        assert status == 1
        assert "StudyInstanceUID is not a valid UID" in stderr
        assert "Testpatient" not in stderr
        assert "Testpatient" not in caplog.text
        assert QuarantinedFile.objects.get().reason.startswith(
            "StudyInstanceUID is not a valid UID"
        )

    def test_short_value_is_quarantined(self, alice_exam, tmp_path) -> None:
        # The pixel data of this image is smaller than the size that pydicom
        # leaves on disk, so pydicom reads what there is of it. The file ends
        # with 138 bytes of Data Set Trailing Padding (FFFC,FFFC) after it.
        path = write_copy(
            SMALL_CT, tmp_path / "in" / "short.dcm", "DEMO-1001", "ACC1001"
        )
        path.write_bytes(path.read_bytes()[:-5000])
        assert_rejected(
            path,
            "Pixel Data (7FE0,0010) is truncated: the file ends 4862 bytes before "
            "its value does",
        )

    def test_implicit_vr_under_explicit_syntax_is_quarantined(
        self, alice_exam, tmp_path
    ) -> None:
        path = write_copy(SMALL_CT, tmp_path / "in" / "a.dcm", "DEMO-1001", "ACC1001")
        ds = pydicom.dcmread(path)
        assert ds.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1"
        data_set = DicomBytesIO()
        data_set.is_little_endian, data_set.is_implicit_VR = True, True
        write_dataset(data_set, ds)
        meta = DicomBytesIO()
        write_file_meta_info(meta, ds.file_meta)
        path.write_bytes(bytes(128) + b"DICM" + meta.getvalue() + data_set.getvalue())

        assert_rejected(
            path,
            "the data set is not encoded in Explicit VR as Transfer Syntax UID "
            "1.2.840.10008.1.2.1 says",
        )

    def test_native_pixels_under_compressed_syntax_are_quarantined(
        self, alice_exam, tmp_path
    ) -> None:
        path = write_copy(SMALL_CT, tmp_path / "in" / "a.dcm", "DEMO-1001", "ACC1001")
        ds = pydicom.dcmread(path)
        data = path.read_bytes()
        data_set = data[_META_START + ds.file_meta.FileMetaInformationGroupLength :]
        ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.50"  # JPEG Baseline
        meta = DicomBytesIO()
        write_file_meta_info(meta, ds.file_meta)
        path.write_bytes(bytes(128) + b"DICM" + meta.getvalue() + data_set)

        assert_rejected(
            path,
            "Pixel Data (7FE0,0010) is not encapsulated, as Transfer Syntax UID "
            "1.2.840.10008.1.2.4.50 requires",
        )

    def test_missing_uid_is_quarantined(self, alice_exam, tmp_path) -> None:
        path = write_copy(CT, tmp_path / "in" / "a.dcm", "DEMO-1001", "ACC1001")
        ds = pydicom.dcmread(path)
        del ds.SeriesInstanceUID
        ds.save_as(path)
        _, stderr, _ = run_import(path)
        assert "SeriesInstanceUID is missing" in stderr
        assert Study.objects.count() == 0

    def test_import_restores_a_missing_file(self, alice_exam, tmp_path) -> None:
        path = write_copy(CT, tmp_path / "a" / "1.dcm", "DEMO-1001", "ACC1001")
        run_import(path)
        stored = Path(default_storage.path(Instance.objects.get().file))
        stored.unlink()

        stdout, _, status = run_import(path)

        assert status == 0
        assert "1 stored, 0 duplicate, 0 rejected" in stdout
        assert stored.read_bytes() == path.read_bytes()
        assert Instance.objects.count() == 1

    def test_file_restored_meanwhile_is_a_duplicate(self, alice_exam, tmp_path) -> None:
        path = write_copy(CT, tmp_path / "a" / "1.dcm", "DEMO-1001", "ACC1001")
        run_import(path)
        stored = Path(default_storage.path(Instance.objects.get().file))
        stored.unlink()

        def restored_by_another(name: str) -> None:
            stored.write_bytes(path.read_bytes())
            raise FileExistsError(name)

        checked = dicom_import.check_dicom_file(path)
        result = dicom_import.find_stored_copy(checked, restored_by_another)

        assert result is not None
        assert result.status == "duplicate"

    def test_missing_file_is_not_restored_from_another_patient(
        self, alice_exam, tmp_path
    ) -> None:
        sop = generate_uid()
        first = write_copy(
            CT, tmp_path / "a" / "1.dcm", "DEMO-1001", "ACC1001", sop=sop
        )
        run_import(first)
        stored = Path(default_storage.path(Instance.objects.get().file))
        stored.unlink()
        other = write_copy(
            CT, tmp_path / "b" / "2.dcm", "DEMO-2002", "ACC2002", sop=sop
        )

        _, stderr, status = run_import(other)

        assert status == 1
        assert "SOPInstanceUID is already stored in another series or study" in stderr
        assert not stored.exists()
        assert Instance.objects.get().series.study.patient_id == "DEMO-1001"

    def test_conflicting_uid_keeps_stored_file(self, alice_exam, tmp_path) -> None:
        sop = generate_uid()
        first = write_copy(
            CT, tmp_path / "a" / "1.dcm", "DEMO-1001", "ACC1001", sop=sop
        )
        run_import(first)
        stored = Instance.objects.get()
        second = write_copy(
            US_MULTIFRAME, tmp_path / "b" / "2.dcm", "DEMO-1001", "ACC1001", sop=sop
        )
        _, stderr, status = run_import(second)
        assert status == 1
        assert "SOPInstanceUID is already stored with different content" in stderr
        assert Instance.objects.get().sop_class_uid == stored.sop_class_uid
        assert Path(default_storage.path(stored.file)).read_bytes() == (
            first.read_bytes()
        )

    def test_study_uid_of_another_patient_is_refused(
        self, alice_exam, tmp_path
    ) -> None:
        study = generate_uid()
        run_import(
            write_copy(CT, tmp_path / "a.dcm", "DEMO-1001", "ACC1001", study=study)
        )
        _, stderr, _ = run_import(
            write_copy(CT, tmp_path / "b.dcm", "DEMO-9999", "ACC1001", study=study)
        )
        expected = (
            "StudyInstanceUID is already stored with another Accession Number "
            "or Patient ID"
        )
        assert expected in stderr
        assert Instance.objects.count() == 1

    def test_rejection_log_holds_no_patient_data(
        self, alice_exam, tmp_path, caplog
    ) -> None:
        caplog.set_level(logging.INFO)
        path = write_copy(CT, tmp_path / "x.dcm", "DEMO-1001", "ACC1001")
        path.write_bytes(path.read_bytes()[:200])
        run_import(path)
        assert "Rejected DICOM file, quarantined as" in caplog.text
        for secret in ("DEMO-1001", "ACC1001", "TESTPATIENT"):
            assert secret not in caplog.text


@pytest.mark.django_db
class TestStorageErrors:
    def test_database_error_is_named_without_values(self) -> None:
        error = IntegrityError("Key (sop_instance_uid)=(1.2.3.4) already exists.")
        assert describe_storage_error(error) == "IntegrityError"

    def test_only_a_valid_uid_is_quoted(self) -> None:
        assert quoted_uid("1.2.840.10008.1.2.1") == "'1.2.840.10008.1.2.1'"
        assert quoted_uid("Testpatient^Alice") == "(not a valid UID)"
        assert quoted_uid("1." * 40) == "(not a valid UID)"

    def test_os_error_keeps_reason_not_path(self) -> None:
        error = FileNotFoundError(errno.ENOENT, "No such file", "/media/dicom/1/x.dcm")
        assert describe_storage_error(error) == "FileNotFoundError: No such file"


class TestAnnouncedUids:
    # Only the DICOM receiver announces UIDs, from the C-STORE request.
    def test_announced_class_not_a_uid_is_not_quoted(self, tmp_path) -> None:
        path = write_copy(SMALL_CT, tmp_path / "a.dcm", "DEMO-1001", "ACC1001")
        ds = pydicom.dcmread(path)
        announced = ("Testpatient^Alice 19800412", ds.SOPInstanceUID)
        with pytest.raises(DatasetMismatchError) as raised:
            check_dicom_file(path, announced)
        assert str(raised.value) == (
            "SOPClassUID '1.2.840.10008.5.1.4.1.1.2' differs from the announced "
            "(not a valid UID)"
        )

    def test_announced_class_too_long_is_not_quoted(self, tmp_path) -> None:
        path = write_copy(SMALL_CT, tmp_path / "a.dcm", "DEMO-1001", "ACC1001")
        ds = pydicom.dcmread(path)
        announced = ("1.2." * 20, ds.SOPInstanceUID)
        with pytest.raises(DatasetMismatchError) as raised:
            check_dicom_file(path, announced)
        assert str(raised.value).endswith(
            "differs from the announced (not a valid UID)"
        )

    def test_other_announced_class_is_quoted(self, tmp_path) -> None:
        path = write_copy(SMALL_CT, tmp_path / "a.dcm", "DEMO-1001", "ACC1001")
        ds = pydicom.dcmread(path)
        announced = ("1.2.840.10008.5.1.4.1.1.4", ds.SOPInstanceUID)
        with pytest.raises(DatasetMismatchError) as raised:
            check_dicom_file(path, announced)
        assert str(raised.value) == (
            "SOPClassUID '1.2.840.10008.5.1.4.1.1.2' differs from the announced "
            "'1.2.840.10008.5.1.4.1.1.4'"
        )

    def test_announced_uids_of_the_file_pass(self, tmp_path) -> None:
        path = write_copy(SMALL_CT, tmp_path / "a.dcm", "DEMO-1001", "ACC1001")
        ds = pydicom.dcmread(path)
        checked = check_dicom_file(path, (ds.SOPClassUID, ds.SOPInstanceUID))
        assert checked.sop_class_uid == ds.SOPClassUID


class TestStoredFiles:
    def test_file_stored_unchanged_under_internal_name(
        self, alice_exam, tmp_path
    ) -> None:
        path = write_copy(CT, tmp_path / "../../evil name.dcm", "DEMO-1001", "ACC1001")
        run_import(path)
        instance = Instance.objects.get()
        public_id = instance.public_id.hex
        assert instance.file == f"dicom/{public_id[:2]}/{public_id}.dcm"
        with default_storage.open(instance.file, "rb") as stored:
            assert stored.read() == path.read_bytes()

    def test_insert_sets_every_column(self, alice_exam, tmp_path) -> None:
        columns = {
            field.name
            for field in Instance._meta.concrete_fields
            if not field.primary_key
        }
        assert set(INSERTED_INSTANCE_FIELDS) == columns
        path = write_copy(CT, tmp_path / "a.dcm", "DEMO-1001", "ACC1001")
        run_import(path)
        instance = Instance.objects.get()
        ds = pydicom.dcmread(path)
        assert (instance.sop_instance_uid, instance.sop_class_uid) == (
            ds.SOPInstanceUID,
            ds.SOPClassUID,
        )
        assert (instance.rows, instance.columns, instance.number_of_frames) == (
            ds.Rows,
            ds.Columns,
            1,
        )
        assert instance.size == path.stat().st_size
        assert instance.instance_number == ds.InstanceNumber
        assert instance.transfer_syntax_uid == ds.file_meta.TransferSyntaxUID

    def test_file_is_matched_to_its_exam(self, alice_exam, tmp_path) -> None:
        run_import(write_copy(CT, tmp_path / "a.dcm", "DEMO-1001", "ACC1001"))
        assert Study.objects.get().exam == alice_exam

    def test_large_file_header_read_from_disk(
        self, alice_exam, tmp_path, monkeypatch
    ) -> None:
        monkeypatch.setattr(dicom_import, "_READ_WHOLE_BYTES", 0)
        run_import(
            write_copy(US_MULTIFRAME, tmp_path / "a.dcm", "DEMO-1001", "ACC1001")
        )
        assert Instance.objects.get().number_of_frames == 120

    def test_oversized_instance_number_is_dropped(self, alice_exam, tmp_path) -> None:
        path = write_copy(CT, tmp_path / "a.dcm", "DEMO-1001", "ACC1001")
        ds = pydicom.dcmread(path)
        ds.InstanceNumber = "2147483648"
        ds.save_as(path)
        run_import(path)
        assert Instance.objects.get().instance_number is None

    def test_infinite_instance_number_is_dropped(self, alice_exam, tmp_path) -> None:
        path = write_copy(CT, tmp_path / "a.dcm", "DEMO-1001", "ACC1001")
        ds = pydicom.dcmread(path)
        ds.InstanceNumber = "99"
        ds.SeriesNumber = "1234567890"
        ds.save_as(path)
        replace_is_value(path, 0x00200013, "99", "inf")
        replace_is_value(path, 0x00200011, "1234567890", "-Infinity")
        run_import(path)
        assert Instance.objects.get().instance_number is None
        assert Series.objects.get().series_number is None

    @pytest.mark.parametrize("number", ["3.5", "-2.5", "0.1", "7.000001"])
    def test_fractional_instance_number_is_dropped(
        self, alice_exam, tmp_path, number
    ) -> None:
        path = write_copy(SMALL_CT, tmp_path / "a.dcm", "DEMO-1001", "ACC1001")
        ds = pydicom.dcmread(path)
        ds.InstanceNumber = "99"
        ds.SeriesNumber = "1234567890"
        ds.save_as(path)
        replace_is_value(path, 0x00200013, "99", number)
        replace_is_value(path, 0x00200011, "1234567890", number)
        run_import(path)
        instance = Instance.objects.get()
        assert instance.instance_number is None
        assert Series.objects.get().series_number is None
        # Rows and Columns (US) are read by the same helper.
        assert instance.rows == 128
        assert instance.columns == 128
        assert instance.number_of_frames == 1

    @pytest.mark.parametrize(
        ("number", "stored"),
        [
            ("3", 3),
            ("-7", -7),
            ("+12", 12),
            ("0", 0),
            ("3.0", 3),
            ("-2147483648", -(2**31)),
        ],
    )
    def test_whole_instance_number_is_kept(
        self, alice_exam, tmp_path, number, stored
    ) -> None:
        path = write_copy(SMALL_CT, tmp_path / "a.dcm", "DEMO-1001", "ACC1001")
        ds = pydicom.dcmread(path)
        ds.InstanceNumber = "99"
        ds.save_as(path)
        replace_is_value(path, 0x00200013, "99", number)
        run_import(path)
        instance = Instance.objects.get()
        assert instance.instance_number == stored
        assert (instance.rows, instance.columns) == (128, 128)

    def test_unknown_character_set_is_not_quoted(
        self, alice_exam, tmp_path, caplog
    ) -> None:
        path = write_copy(CT, tmp_path / "a.dcm", "DEMO-1001", "ACC1001")
        ds = pydicom.dcmread(path)
        ds.SpecificCharacterSet = "Zzcsname^Patient"
        ds.save_as(path)
        with (
            caplog.at_level(logging.DEBUG),
            warnings.catch_warnings(record=True) as caught,
        ):
            # pytest restores the warning filters after each test, so the
            # filter that the app adds as it starts is added again here.
            apps.get_app_config("ingest").ready()
            run_import(path)
        assert Study.objects.count() == 1
        assert "Zzcsname" not in caplog.text
        assert [str(w.message) for w in caught if "Zzcsname" in str(w.message)] == []

    def test_multiframe_file_is_one_instance(self, alice_exam, tmp_path) -> None:
        run_import(
            write_copy(US_MULTIFRAME, tmp_path / "a.dcm", "DEMO-1001", "ACC1001")
        )
        instance = Instance.objects.get()
        assert instance.number_of_frames == 120
        assert (instance.rows, instance.columns) == (480, 640)

    def test_importing_twice_changes_nothing(self, alice_exam, tmp_path) -> None:
        folder = tmp_path / "in"
        write_copy(CT, folder / "1.dcm", "DEMO-1001", "ACC1001")
        write_copy(US_MULTIFRAME, folder / "2.dcm", "DEMO-1001", "ACC1001")
        run_import(folder)
        before = list(Instance.objects.order_by("pk").values())
        stdout, _, status = run_import(folder)
        assert status == 0
        assert "0 stored, 2 duplicate, 0 rejected" in stdout
        assert list(Instance.objects.order_by("pk").values()) == before
        assert Series.objects.count() == 2

    def test_file_without_order_waits_and_is_attached_later(
        self, california, tmp_path
    ) -> None:
        run_import(write_copy(CT, tmp_path / "a.dcm", "DEMO-1001", "ACC1001"))
        study = Study.objects.get()
        assert study.exam is None
        alice = make_patient(
            california, "DEMO-1001", "Alice", "Testpatient", date(1980, 4, 12)
        )
        exam = make_exam(alice, california, "ACC1001")
        assert attach_waiting_studies(exam) == 1
        study.refresh_from_db()
        assert study.exam == exam

    def test_waiting_file_of_another_patient_is_not_attached(
        self, california, tmp_path
    ) -> None:
        run_import(write_copy(CT, tmp_path / "a.dcm", "DEMO-9999", "ACC1001"))
        alice = make_patient(
            california, "DEMO-1001", "Alice", "Testpatient", date(1980, 4, 12)
        )
        assert attach_waiting_studies(make_exam(alice, california, "ACC1001")) == 0

    def test_keep_rejected_leaves_the_source_in_place(
        self, alice_exam, tmp_path
    ) -> None:
        bad = tmp_path / "bad.dcm"
        bad.write_bytes(b"\x00" * 10)
        stdout, stderr = StringIO(), StringIO()
        with pytest.raises(CommandError):
            call_command(
                "import_dicom",
                str(bad),
                "--keep-rejected",
                stdout=stdout,
                stderr=stderr,
            )
        assert bad.exists()
        assert Path(QuarantinedFile.objects.get().path).read_bytes() == b"\x00" * 10
