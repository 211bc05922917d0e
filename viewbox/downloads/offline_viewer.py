"""Write the offline viewer (INDEX.HTM) and README.TXT of a package.

INDEX.HTM opens from the extracted folder or the disc (file://) with no
network. Without JavaScript it lists the series and shows the first image;
VIEWER/VIEWER.JS adds scrolling through each series's JPEG frames. Text from
DICOM or HL7 (patient name, exam description, series labels) is escaped
here, and the script reads it back from the page as text, never as markup.

Texts go through gettext, so a caller that activates a language (Django's
translation.override) gets the package in that language.
"""

import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from html import escape
from importlib.resources import files
from typing import Final

from django.utils.translation import get_language, ngettext
from django.utils.translation import gettext as _

VIEWER_FOLDER: Final = "VIEWER"
_STATIC_FILES: Final = ("VIEWER.CSS", "VIEWER.JS")
# Everything the page loads comes from the package's own folder. The file:
# source is listed because browsers differ on what 'self' means for file://.
_CONTENT_SECURITY_POLICY: Final = (
    "default-src 'none'; script-src 'self' file:; style-src 'self' file:; "
    "img-src 'self' file:; base-uri 'none'; form-action 'none'"
)
_README_WIDTH: Final = 72
# Characters that reorder the text around them where it is shown:
# bidirectional marks, embeddings, overrides and isolates.
_BIDI_CONTROLS: Final = frozenset("\u061c\u200e\u200f") | frozenset(
    chr(code) for code in (*range(0x202A, 0x202F), *range(0x2066, 0x206A))
)


@dataclass(frozen=True)
class ViewerSeries:
    """One series as the viewer and the README list it."""

    number: int  # 1-based, in display order
    label: str  # untrusted text, escaped where it is written
    file_count: int
    frame_count: int

    @property
    def folder(self) -> str:
        return series_folder(self.number)

    @property
    def name(self) -> str:
        """The label without control characters, or a numbered name."""
        return clean_text(self.label) or _("Series %(number)d") % {
            "number": self.number
        }


def series_folder(number: int) -> str:
    """Return the folder name of a series (1-based) under DICOM/ and VIEWER/."""
    return f"S{number:07d}"


def frame_path(folder: str, number: int) -> str:
    """Return the package path of a series's frame (1-based) as a JPEG."""
    return f"{VIEWER_FOLDER}/{folder}/F{number:07d}.JPG"


def static_files() -> list[tuple[str, bytes]]:
    """Return the viewer's script and style sheet as (package path, bytes)."""
    folder = files("viewbox.downloads") / "static_viewer"
    return [
        (f"{VIEWER_FOLDER}/{name}", (folder / name).read_bytes())
        for name in _STATIC_FILES
    ]


def clean_text(text: str) -> str:
    """Remove bidirectional controls, replace other control characters with
    spaces, and collapse runs of white space (line breaks included)."""
    characters = (
        " " if character < " " or "\x7f" <= character < "\xa0" else character
        for character in text
        if character not in _BIDI_CONTROLS
    )
    return " ".join("".join(characters).split())


def _escape(text: str) -> str:
    return escape(clean_text(text), quote=True)


def index_file(
    title: str,
    subtitle: str,
    patient_name: str,
    series: Sequence[ViewerSeries],
    has_report: bool,
) -> bytes:
    """Return INDEX.HTM, encoded as UTF-8."""
    with_frames = [item for item in series if item.frame_count > 0]
    page_title = _escape(title) or escape(_("Exam images"))
    # xgettext does not see _() inside f-strings, so texts are read first.
    report_label = _("Open the report (PDF)")
    patient_label = _("Patient:")
    skip_label = _("Skip to the images")
    no_report_label = _(
        "The report is not included: it was not available when this file was "
        "prepared. Look for it on the Patient Portal."
    )
    report = f'<p class="no-report">{escape(no_report_label)}</p>'
    if has_report:
        report = (
            '<p><a class="report-link" href="REPORT.PDF">'
            f"{escape(report_label)}</a></p>"
        )
    patient = ""
    if clean_text(patient_name):
        patient = (
            f'<p class="patient">{escape(patient_label)} '
            f"<strong>{_escape(patient_name)}</strong></p>"
        )
    body = _viewer_html(with_frames) if with_frames else _no_images_html()
    page = f"""<!DOCTYPE html>
<html lang="{escape(get_language() or "en")}">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta http-equiv="Content-Security-Policy" content="{_CONTENT_SECURITY_POLICY}">
<meta name="referrer" content="no-referrer">
<title>{page_title}</title>
<link rel="stylesheet" href="{VIEWER_FOLDER}/VIEWER.CSS">
<script src="{VIEWER_FOLDER}/VIEWER.JS" defer></script>
</head>
<body>
<a class="skip-link" href="#viewer">{escape(skip_label)}</a>
<header class="package-header">
{patient}
<h1>{page_title}</h1>
<p class="subtitle">{_escape(subtitle)}</p>
<p class="notice">{escape(_notice())}</p>
{report}
</header>
<main>
{body}
</main>
<footer class="package-footer">
<p>{escape(_footer())}</p>
</footer>
</body>
</html>
"""
    return page.encode("utf-8")


def _notice() -> str:
    return _(
        "This folder contains health information. Keep it private, and share "
        "it only with people you trust, such as your doctors."
    )


def _footer() -> str:
    return _(
        "The images on this page are reduced copies for viewing, not for "
        "diagnosis. The original DICOM files are in the DICOM folder and are "
        "listed in DICOMDIR: give the whole folder or disc to your doctor, or "
        "open DICOMDIR with a DICOM viewer program."
    )


def _no_images_html() -> str:
    message = _(
        "This exam has no images that this page can show. The DICOM files are "
        "in the DICOM folder."
    )
    return f'<p id="viewer">{escape(message)}</p>'


def _viewer_html(series: Sequence[ViewerSeries]) -> str:
    first = series[0]
    links = "\n".join(
        _series_link(item, current=index == 0) for index, item in enumerate(series)
    )
    position_template = _("Image %(number)s of %(count)s")
    alt_template = _("%(series)s, image %(number)s of %(count)s")
    first_values = {"number": 1, "count": first.frame_count}
    position = position_template % first_values
    alt = alt_template % {**first_values, "series": first.name}
    placeholders = {"number": "{number}", "count": "{count}", "series": "{series}"}
    help_text = _(
        "Move through the images with the buttons, the slider, the arrow keys, "
        "Page Up and Page Down, Home and End, or the mouse wheel over the image."
    )
    failure = _(
        "This image could not be loaded. Check that the whole package was extracted."
    )
    no_script = _(
        "JavaScript is off, so only the first image of each series can be shown."
    )
    # xgettext does not see _() inside f-strings, so texts are read first.
    series_label = _("Series")
    previous_label = _("Previous image")
    next_label = _("Next image")
    image_label = _("Image")
    return f"""<nav class="series" aria-labelledby="series-heading">
<h2 id="series-heading">{escape(series_label)}</h2>
<ol class="series-list">
{links}
</ol>
</nav>
<section class="viewer" id="viewer" aria-labelledby="series-title" \
data-position-text="{escape(position_template % placeholders)}" \
data-alt-text="{escape(alt_template % placeholders)}">
<h2 id="series-title">{escape(first.name)}</h2>
<div class="frame-area" id="frame-area" role="group" aria-labelledby="series-title" \
aria-describedby="viewer-help">
<img id="frame-image" src="{frame_path(first.folder, 1)}" alt="{escape(alt)}">
</div>
<p class="frame-position" id="frame-position" aria-live="polite">{escape(position)}</p>
<p class="frame-failure" id="frame-failure" role="alert" hidden>{escape(failure)}</p>
<div class="frame-controls" id="frame-controls" hidden>
<button type="button" id="previous-frame">{escape(previous_label)}</button>
<button type="button" id="next-frame">{escape(next_label)}</button>
<div class="frame-slider">
<label for="frame-slider">{escape(image_label)}</label>
<input type="range" id="frame-slider" min="1" max="{first.frame_count}" value="1">
</div>
<p class="hint" id="viewer-help">{escape(help_text)}</p>
</div>
<noscript><p>{escape(no_script)}</p></noscript>
</section>"""


def _series_link(series: ViewerSeries, current: bool) -> str:
    count = ngettext("%(count)d image", "%(count)d images", series.frame_count) % {
        "count": series.frame_count
    }
    current_attribute = ' aria-current="true"' if current else ""
    return (
        f'<li><a href="{frame_path(series.folder, 1)}" '
        f'data-folder="{VIEWER_FOLDER}/{series.folder}" '
        f'data-frames="{series.frame_count}"{current_attribute}>'
        f'<span class="series-label">{escape(series.name)}</span> '
        f'<span class="series-count">{escape(count)}</span></a></li>'
    )


def readme_file(
    title: str,
    subtitle: str,
    patient_name: str,
    series: Sequence[ViewerSeries],
    has_report: bool,
) -> bytes:
    """Return README.TXT: UTF-8 with a byte order mark and CRLF line ends,
    so that old Windows editors show it correctly."""
    lines = [_("EXAM IMAGES AND REPORT"), ""]
    if clean_text(patient_name):
        lines.append(_("Patient: %(name)s") % {"name": _plain(patient_name)})
    if clean_text(title):
        lines.append(_("Exam: %(title)s") % {"title": _plain(title)})
    if clean_text(subtitle):
        lines.append(_plain(subtitle))
    lines += ["", *_wrap(_notice()), ""]

    lines += [_("BEFORE YOU START"), ""]
    lines += _wrap(
        _(
            "If you downloaded the .zip file, extract it first, because the "
            "viewer does not work from inside the ZIP file. On Windows, "
            "right-click the file and choose Extract All. On a Mac, "
            "double-click it."
        )
    )
    lines += _wrap(
        _(
            "If you downloaded the .iso file, burn it to a CD or DVD, or open "
            "it as a disc: on Windows and on a Mac, double-click the file."
        )
    )
    lines += ["", _("TO SEE THE IMAGES"), ""]
    lines += _wrap(
        _(
            "Open INDEX.HTM in a web browser, for example by double-clicking "
            "it. It works without an internet connection, and nothing needs "
            "to be installed."
        )
    )

    lines += ["", _("WHAT IS WHERE"), ""]
    entries = [("INDEX.HTM", _("The viewer: the series, their images and the report."))]
    if has_report:
        entries.append(("REPORT.PDF", _("The radiologist's report.")))
    else:
        missing = _(
            "The report is not included: it was not available when this "
            "file was prepared. Look for it on the Patient Portal."
        )
        lines += [*_wrap(missing), ""]
    entries += [
        (
            "DICOM",
            _(
                "The original images as DICOM files, for doctors and DICOM "
                "viewer programs."
            ),
        ),
        ("DICOMDIR", _("The list of the DICOM files, which DICOM viewers open.")),
        (VIEWER_FOLDER, _("Reduced copies of the images (JPEG) for INDEX.HTM.")),
        ("README.TXT", _("This file.")),
    ]
    for name, description in entries:
        lines += _wrap(description, first_prefix=f"{name:<12} ", prefix=" " * 13)

    lines += ["", _("SERIES"), ""]
    for item in series:
        files_text = ngettext(
            "%(count)d DICOM file", "%(count)d DICOM files", item.file_count
        ) % {"count": item.file_count}
        text = _("%(label)s: %(files)s in %(folder)s") % {
            "label": _plain(item.name),
            "files": files_text,
            "folder": f"DICOM/{item.folder}",
        }
        lines += _wrap(text, first_prefix=f"{item.number:>3}. ", prefix=" " * 5)

    text = "\r\n".join(lines) + "\r\n"
    return ("\ufeff" + text).encode("utf-8")


def _plain(text: str) -> str:
    """Return untrusted text for README.TXT.

    Angle brackets become single guillemets, so that README.TXT contains no
    markup for a program that guesses a file's type from its content.
    """
    return clean_text(text).replace("<", "\u2039").replace(">", "\u203a")


def _wrap(text: str, first_prefix: str = "", prefix: str = "") -> list[str]:
    return textwrap.wrap(
        text,
        width=_README_WIDTH,
        initial_indent=first_prefix,
        subsequent_indent=prefix,
        break_on_hyphens=False,
    )
