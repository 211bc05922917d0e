"""Read back what reportlab drew: the text and the filled rectangles of a page.

Enough of PDF for our own output only: content streams encoded with
ASCII85 and Flate, text in literal strings shown with ``Tj``.
"""

import base64
import re
import zlib

_STREAM = re.compile(rb"stream\r?\n(.*?)endstream", re.S)
# A shown string, or an operator that starts a new line of text.
_TEXT_TOKEN = re.compile(rb"\(((?:[^()\\]|\\.)*)\)\s*Tj|\b(T\*|Td|TD|Tm|ET)\b")
_RECTANGLE = re.compile(rb"(-?[\d.]+) (-?[\d.]+) (-?[\d.]+) (-?[\d.]+) re")
_ESCAPES = {b"n": b"\n", b"r": b"\r", b"t": b"\t", b"(": b"(", b")": b")", b"\\": b"\\"}


def content_streams(pdf: bytes) -> list[bytes]:
    streams = []
    for raw in _STREAM.findall(pdf):
        data = raw.strip()
        if data.endswith(b"~>"):
            data = base64.a85decode(data[:-2])
        try:
            streams.append(zlib.decompress(data))
        except zlib.error:
            streams.append(data)
    return streams


def _unescape(literal: bytes) -> str:
    out = re.sub(
        rb"\\([0-7]{1,3}|.)",
        lambda m: (
            bytes([int(m[1], 8)]) if m[1][:1].isdigit() else _ESCAPES.get(m[1], m[1])
        ),
        literal,
    )
    return out.decode("cp1252")


def page_text(pdf: bytes) -> str:
    """Return the shown text in drawing order, a line break between lines."""
    pieces = []
    for stream in content_streams(pdf):
        for shown, operator in _TEXT_TOKEN.findall(stream):
            pieces.append("\n" if operator else _unescape(shown))
    return re.sub(r"\n+", "\n", "".join(pieces)).strip()


def rectangles(pdf: bytes) -> list[tuple[float, float, float, float]]:
    found = []
    for stream in content_streams(pdf):
        for match in _RECTANGLE.findall(stream):
            x, y, width, height = (float(value) for value in match)
            found.append((x, y, width, height))
    return found


def qr_matrix(pdf: bytes) -> list[list[int]]:
    """Rebuild a QR code's module matrix from its drawn rectangles."""
    rects = rectangles(pdf)
    size = min(height for _, _, _, height in rects)
    left = min(x for x, _, _, _ in rects)
    top = max(y for _, y, _, _ in rects)
    count = round((top - min(y for _, y, _, _ in rects)) / size) + 1
    matrix = [[0] * count for _ in range(count)]
    for x, y, width, _ in rects:
        row = round((top - y) / size)
        first = round((x - left) / size)
        for column in range(first, first + round(width / size)):
            matrix[row][column] = 1
    return matrix
