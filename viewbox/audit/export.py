"""The audit log as CSV, streamed so that a long log needs little memory."""

import csv
from collections.abc import Iterable, Iterator
from datetime import UTC

from viewbox.audit.models import AuditEvent

COLUMNS = (
    "sequence",
    "at",
    "actor_kind",
    "actor_id",
    "patient_id",
    "exam_id",
    "share_link_id",
    "action",
    "outcome",
    "client_address",
    "previous_hash",
    "entry_hash",
)

# Spreadsheets run a cell that starts with one of these as a formula, so such
# a cell gets a leading apostrophe and is shown as text instead.
FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")


class _Echo:
    """A file-like object whose write() returns the line instead of storing it."""

    def write(self, value: str) -> str:
        return value


def escape_cell(value: object) -> str:
    text = "" if value is None else str(value)
    if text.startswith(FORMULA_PREFIXES):
        return "'" + text
    return text


def event_row(event: AuditEvent) -> list[str]:
    values: dict[str, object] = {name: getattr(event, name) for name in COLUMNS}
    values["at"] = event.at.astimezone(UTC).isoformat()
    return [escape_cell(values[name]) for name in COLUMNS]


def csv_lines(events: Iterable[AuditEvent]) -> Iterator[str]:
    """Yield the header line, then one line per entry."""
    writer = csv.writer(_Echo())
    yield writer.writerow(COLUMNS)
    for event in events:
        yield writer.writerow(event_row(event))
