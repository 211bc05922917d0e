"""The released report as a PDF for a plain office printer (US Letter)."""

from io import BytesIO
from xml.sax.saxutils import escape
from zoneinfo import ZoneInfo

from django.utils import formats, timezone
from django.utils.translation import gettext as _
from reportlab.lib.pagesizes import LETTER
from reportlab.lib.styles import getSampleStyleSheet
from reportlab.lib.units import inch
from reportlab.platypus import Paragraph, SimpleDocTemplate, Spacer, Table

from viewbox.records.models import Exam, ReportVersion


def _text(value: object) -> str:
    """Escape text for reportlab, whose paragraphs read a kind of markup."""
    return escape(str(value))


def render_report_pdf(exam: Exam, version: ReportVersion) -> bytes:
    """Return the report as PDF bytes. Text from the RIS is never read as markup."""
    styles = getSampleStyleSheet()
    zone = ZoneInfo(exam.visit.location.state.time_zone)
    patient = exam.visit.patient
    signed = ""
    if version.signed_at is not None:
        local = timezone.localtime(version.signed_at, zone)
        signed = f"{formats.date_format(local, 'DATETIME_FORMAT')} {local.tzname()}"

    facts = [
        (_("Patient"), patient.display_name),
        (_("Date of birth"), formats.date_format(patient.birth_date, "DATE_FORMAT")),
        (
            _("Date of service"),
            formats.date_format(exam.visit.date_of_service, "DATE_FORMAT"),
        ),
        (_("Location"), exam.visit.location.name),
        (_("Referring physician"), exam.referring_physician or "-"),
        (_("Accession number"), exam.accession_number),
        (_("Signed by"), f"{version.radiologist} {signed}".strip()),
    ]
    story = [
        Paragraph(_text(exam.visit.location.group.name), styles["Heading4"]),
        Paragraph(_text(exam.description), styles["Title"]),
        Table(
            [
                [
                    Paragraph(f"<b>{_text(label)}</b>", styles["Normal"]),
                    Paragraph(_text(value), styles["Normal"]),
                ]
                for label, value in facts
            ],
            colWidths=[1.8 * inch, 4.7 * inch],
        ),
        Spacer(1, 0.25 * inch),
    ]
    for line in version.text.splitlines():
        story.append(Paragraph(_text(line) or "&nbsp;", styles["BodyText"]))

    buffer = BytesIO()
    document = SimpleDocTemplate(
        buffer,
        pagesize=LETTER,
        title=_("Imaging report"),
        leftMargin=inch,
        rightMargin=inch,
        topMargin=0.8 * inch,
        bottomMargin=0.8 * inch,
    )
    document.build(story)
    return buffer.getvalue()
