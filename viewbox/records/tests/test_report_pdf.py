import shutil
import subprocess
from datetime import UTC, date, datetime

import pytest

from viewbox.conftest import add_report, make_exam, make_patient
from viewbox.records.report_pdf import render_report_pdf

needs_pdftotext = pytest.mark.skipif(
    shutil.which("pdftotext") is None, reason="poppler-utils is not installed"
)


def pdf_text(pdf: bytes, tmp_path) -> str:
    path = tmp_path / "report.pdf"
    path.write_bytes(pdf)
    result = subprocess.run(
        ["pdftotext", "-layout", str(path), "-"], capture_output=True, check=True
    )
    return result.stdout.decode()


@pytest.mark.django_db
@needs_pdftotext
class TestReportPdf:
    def test_pdf_holds_the_report_and_the_facts(self, maryland, tmp_path) -> None:
        patient = make_patient(
            maryland, "DEMO-1", "Barbara", "Sample", date(1975, 9, 30)
        )
        exam = make_exam(patient, maryland, "ACC77", description="MG SCREENING")
        version = add_report(
            exam, "F", "IMPRESSION: BI-RADS 1.", datetime(2026, 12, 1, 15, tzinfo=UTC)
        )
        pdf = render_report_pdf(exam, version)
        assert pdf.startswith(b"%PDF")
        text = pdf_text(pdf, tmp_path)
        for expected in (
            "MG SCREENING",
            "Barbara Sample",
            "ACC77",
            "IMPRESSION: BI-RADS 1.",
        ):
            assert expected in text
        assert "December 1, 2026, 10:00 AM EST" in text

    def test_markup_in_report_text_is_printed_as_text(self, maryland, tmp_path) -> None:
        patient = make_patient(
            maryland, "DEMO-1", "<b>Eve</b>", "Sample", date(1975, 9, 30)
        )
        exam = make_exam(
            patient, maryland, "ACC78", description="<font size=40>CT</font>"
        )
        version = add_report(
            exam, "F", "<script>alert(1)</script> & <b>bold</b>", datetime.now(UTC)
        )
        text = pdf_text(render_report_pdf(exam, version), tmp_path)
        assert "<script>alert(1)</script> & <b>bold</b>" in text
        assert "<font size=40>CT</font>" in text
        assert "<b>Eve</b> Sample" in text
