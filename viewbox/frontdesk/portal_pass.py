"""The Portal Pass: a one-page PDF that front desk prints at registration.

It names the patient, the location and the date of service, and carries the
visit's new I-Codes, the regional portal's address with a QR code to it, and
how to get in with an I-Code or with an account. The QR code is drawn as
vector rectangles, so that it prints sharp on any office printer.
"""

from dataclasses import dataclass
from datetime import date, datetime
from io import BytesIO
from xml.sax.saxutils import escape
from zoneinfo import ZoneInfo

import segno
from django.utils import formats, timezone
from django.utils.translation import gettext as _
from reportlab.lib.pagesizes import LETTER
from reportlab.lib.styles import ParagraphStyle, StyleSheet1, getSampleStyleSheet
from reportlab.lib.units import inch
from reportlab.pdfgen.canvas import Canvas
from reportlab.platypus import Flowable, Paragraph, SimpleDocTemplate, Spacer, Table

from viewbox.records.models import Exam, Visit

# Light modules around the symbol. The QR code standard (ISO/IEC 18004)
# specifies 4.
QR_QUIET_ZONE_MODULES = 4
QR_SIDE = 1.6 * inch


@dataclass(frozen=True)
class PassCode:
    """One I-Code as printed: the code and the exams it opens."""

    code: str
    exams: list[Exam]
    expires_at: datetime


class QrCodeFlowable(Flowable):
    """A QR code drawn as filled rectangles, one per run of dark modules."""

    def __init__(self, data: str, side: float) -> None:
        super().__init__()
        self.matrix = segno.make(data, error="m").matrix
        self.side = side

    def wrap(
        self, available_width: float, available_height: float
    ) -> tuple[float, float]:
        return self.side, self.side

    def draw(self) -> None:
        canvas: Canvas = self.canv
        modules = len(self.matrix) + 2 * QR_QUIET_ZONE_MODULES
        size = self.side / modules
        path = canvas.beginPath()
        for row_number, row in enumerate(self.matrix):
            # PDF's y axis points up, the matrix's rows go down.
            y = self.side - (row_number + QR_QUIET_ZONE_MODULES + 1) * size
            column = 0
            while column < len(row):
                if not row[column]:
                    column += 1
                    continue
                start = column
                while column < len(row) and row[column]:
                    column += 1
                x = (start + QR_QUIET_ZONE_MODULES) * size
                path.rect(x, y, (column - start) * size, size)
        canvas.drawPath(path, stroke=0, fill=1)


def _text(value: object) -> str:
    """Escape text for reportlab, whose paragraphs read a kind of markup."""
    return escape(str(value))


def _date(value: date) -> str:
    return formats.date_format(value, "DATE_FORMAT")


def render_portal_pass(visit: Visit, codes: list[PassCode], portal_url: str) -> bytes:
    """Return the Portal Pass as PDF bytes. RIS text is never read as markup."""
    styles = getSampleStyleSheet()
    code_style = ParagraphStyle(
        "ICode",
        parent=styles["Normal"],
        fontName="Courier-Bold",
        fontSize=18,
        leading=24,
    )
    zone = ZoneInfo(visit.location.state.time_zone)
    facts = [
        (_("Patient"), visit.patient.display_name),
        (_("Location"), f"{visit.location.name}, {visit.location.city}"),
        (_("Date of service"), _date(visit.date_of_service)),
    ]
    story: list[Flowable] = [
        Paragraph(_text(visit.location.group.name), styles["Heading4"]),
        Paragraph(_text(_("Portal Pass")), styles["Title"]),
        _label_table(facts, styles),
        Spacer(1, 0.2 * inch),
        Paragraph(
            _text(_("Your I-Code") if len(codes) == 1 else _("Your I-Codes")),
            styles["Heading2"],
        ),
    ]
    for pass_code in codes:
        story.append(Paragraph(_text(pass_code.code), code_style))
        expires = _date(timezone.localtime(pass_code.expires_at, zone))
        if len(codes) > 1:
            exams = ", ".join(exam.description for exam in pass_code.exams)
            story.append(
                Paragraph(
                    _text(_("Opens: %(exams)s") % {"exams": exams}), styles["Normal"]
                )
            )
        story.append(
            Paragraph(
                _text(_("Works until %(date)s.") % {"date": expires}), styles["Normal"]
            )
        )
        story.append(Spacer(1, 0.1 * inch))

    story += [
        Paragraph(_text(_("Your patient portal")), styles["Heading2"]),
        Table(
            [
                [
                    QrCodeFlowable(portal_url, QR_SIDE),
                    Paragraph(_text(portal_url), styles["Normal"]),
                ]
            ],
            colWidths=[QR_SIDE + 0.2 * inch, 6.5 * inch - QR_SIDE - 0.2 * inch],
        ),
        Paragraph(_text(_("Two ways in")), styles["Heading2"]),
        *[Paragraph(_text(line), styles["BodyText"]) for line in _instructions()],
    ]

    buffer = BytesIO()
    document = SimpleDocTemplate(
        buffer,
        pagesize=LETTER,
        title=_("Portal Pass"),
        leftMargin=inch,
        rightMargin=inch,
        topMargin=0.7 * inch,
        bottomMargin=0.7 * inch,
    )
    document.build(story)
    return buffer.getvalue()


def _label_table(facts: list[tuple[str, str]], sheet: StyleSheet1) -> Table:
    return Table(
        [
            [
                Paragraph(f"<b>{_text(label)}</b>", sheet["Normal"]),
                Paragraph(_text(value), sheet["Normal"]),
            ]
            for label, value in facts
        ],
        colWidths=[1.6 * inch, 4.9 * inch],
    )


def _instructions() -> list[str]:
    return [
        _(
            "With your I-Code: open the portal address above or scan the QR "
            "code, choose Patient Portal Login and your location, then Enter "
            "I-Code. Type the I-Code and your date of birth (for a child, the "
            "child's date of birth)."
        ),
        _(
            "With an account: open the portal address, choose Patient Portal "
            "Login and your location, then Create a new account, and follow "
            "the four steps. An account shows all your exams with this imaging "
            "group. Patients under 18 use the I-Code instead."
        ),
        _(
            "An I-Code works for 90 days. If it has expired, choose Code expired? "
            "Get help on the I-Code page, or call your imaging center."
        ),
        _("Keep this pass private: the I-Code opens your exam results."),
    ]
