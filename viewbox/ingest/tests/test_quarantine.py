from pathlib import Path

import pytest

from viewbox.ingest.models import QuarantinedFile
from viewbox.ingest.quarantine import quarantine_file

pytestmark = pytest.mark.django_db


def quarantined(tmp_path: Path, name: str) -> QuarantinedFile:
    source = tmp_path / name
    source.write_bytes(b"MSH|^~\\&|RIS\r")
    return quarantine_file(source, QuarantinedFile.Kind.HL7, "broken", move=True)


class TestDeletion:
    def test_deleted_row_takes_its_file(
        self, tmp_path, django_capture_on_commit_callbacks
    ) -> None:
        row = quarantined(tmp_path, "a.hl7")
        stored = Path(row.path)
        assert stored.exists()

        with django_capture_on_commit_callbacks(execute=True):
            row.delete()

        assert not stored.exists()

    def test_bulk_deletion_takes_every_file(
        self, tmp_path, django_capture_on_commit_callbacks
    ) -> None:
        rows = [quarantined(tmp_path, f"{number}.hl7") for number in range(3)]

        with django_capture_on_commit_callbacks(execute=True):
            QuarantinedFile.objects.all().delete()

        assert [Path(row.path).exists() for row in rows] == [False] * 3

    def test_file_outside_the_quarantine_is_kept(
        self, tmp_path, django_capture_on_commit_callbacks, caplog
    ) -> None:
        outside = tmp_path / "elsewhere.dcm"
        outside.write_bytes(b"DICM")
        row = QuarantinedFile.objects.create(
            kind=QuarantinedFile.Kind.DICOM,
            original_name="elsewhere.dcm",
            path=str(outside),
            reason="broken",
        )

        with django_capture_on_commit_callbacks(execute=True):
            row.delete()

        assert outside.exists()
        assert "outside the quarantine folder" in caplog.text

    def test_file_stays_until_the_deletion_commits(
        self, tmp_path, django_capture_on_commit_callbacks
    ) -> None:
        row = quarantined(tmp_path, "b.hl7")

        with django_capture_on_commit_callbacks(execute=False) as callbacks:
            row.delete()

        assert len(callbacks) == 1
        assert Path(row.path).exists()


class TestReason:
    def test_nul_in_reason_is_dropped(self, tmp_path) -> None:
        source = tmp_path / "a.dcm"
        source.write_bytes(b"DICM")

        row = quarantine_file(
            source, QuarantinedFile.Kind.DICOM, "UID 1.2\x00 says", move=True
        )

        row.refresh_from_db()
        assert row.reason == "UID 1.2 says"
