r"""Split, decode and read HL7 v2 messages.

A file contains one or more messages. Each message starts with an MSH segment,
and segments end with CR, LF or CR LF. Batch segments (FHS, BHS, BTS, FTS) and
MLLP framing bytes (0x0b before a message, 0x1c 0x0d after it) are dropped::

    MSH|^~\&|RIS|RADNET_LA|VIEWBOX|VIEWBOX|20240315103000||ORU^R01|MSG00123|P|2.5.1
    PID|1||MRN1001^^^RADNET_LA^MR||TESTPATIENT^ALICE||19800101|F
    OBR|1||ACC1001|71046^XR CHEST 2 VIEWS|||20240315093000|...
    OBX|1|TX|||No acute cardiopulmonary process.

    >>> message = parse_message(split_messages(text)[0])
    >>> message.segment("PID").get(5, component=2)
    'ALICE'

The ``hl7`` package (0.4.5) splits segments into fields, repetitions,
components and subcomponents. Escape sequences are decoded here instead,
because that version's field access turns \H\ into "_" and reads \X..\
byte by byte instead of in the message's character set. It also logs the
whole field, report text included, for an escape sequence it does not know.
"""

import re
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone, tzinfo
from typing import Any

import hl7

# The HL7 null value, which a sender uses to clear a stored value.
HL7_NULL = '""'

BATCH_SEGMENT_IDS = frozenset({"FHS", "BHS", "BTS", "FTS"})
MLLP_START_BLOCK = "\x0b"
MLLP_END_BLOCK = "\x1c"
UTF8_BYTE_ORDER_MARK = b"\xef\xbb\xbf"
SEGMENT_ID = re.compile(r"[A-Z][A-Z0-9]{2}")

# MSH-18 values (HL7 table 0211) that are honoured, with the Python codec that
# decodes them. None means UTF-8, falling back to latin-1 for bytes that are
# not valid UTF-8.
CHARACTER_SETS: dict[str, str | None] = {
    "": None,
    "ASCII": None,
    "UNICODE UTF-8": "utf-8",
    "8859/1": "latin-1",
    "8859/15": "iso8859-15",
}

# HL7 DTM: YYYYMMDD[HHMM[SS[.S+]]][+/-ZZZZ].
TIMESTAMP = re.compile(
    r"(?P<year>\d{4})(?P<month>\d{2})(?P<day>\d{2})"
    r"(?:(?P<hour>\d{2})(?P<minute>\d{2})"
    r"(?:(?P<second>\d{2})(?:\.(?P<fraction>\d+))?)?)?"
    r"(?P<offset>[+-]\d{4})?"
)
TIMESTAMP_FORMAT = "YYYYMMDD[HHMM[SS[.S]]][+/-ZZZZ]"

# Control bytes that never occur in HL7 text. Tab, LF, CR, FF and the MLLP
# framing bytes are allowed.
BINARY_BYTES = re.compile(rb"[\x00-\x08\x0e-\x1b\x1d-\x1f\x7f]")


class HL7Error(ValueError):
    """A message that cannot be imported, with the reason staff will read.

    ``field`` names where the problem is ("OBR-25", "line 6"), or is empty
    when it is not in one place. Unlike the reason, it never contains values
    from the message, so it is safe to log.
    """

    # MSA-1 acknowledgment code (HL7 table 0008) for this error: AR (reject)
    # for a message that cannot be read or is not supported, AE (error) for
    # one that was read but whose content cannot be applied.
    ack_code = "AR"

    def __init__(self, reason: str, field: str = "") -> None:
        super().__init__(reason)
        self.reason = reason
        self.field = field


class NotHL7Error(ValueError):
    """Input that is not HL7 at all: binary data, or text without an MSH."""


@dataclass(frozen=True)
class EncodingCharacters:
    """The separators and escape character a message declares in MSH-1 and MSH-2."""

    field: str = "|"
    component: str = "^"
    repetition: str = "~"
    escape: str = "\\"
    subcomponent: str = "&"
    # HL7 v2.7 added a fifth encoding character, so older messages have none.
    truncation: str = ""


# One repetition of a field: its components, each a list of subcomponents.
Repetition = list[list[str]]


@dataclass(frozen=True)
class Segment:
    """One segment. ``fields[n]`` is field n, as in HL7, also for MSH."""

    name: str
    fields: list[list[Repetition]]
    encoding: EncodingCharacters
    codec: str | None

    def ref(self, field: int, component: int = 1) -> str:
        """Return the HL7 name of a field or component, like "OBR-32.2"."""
        if component == 1:
            return f"{self.name}-{field}"
        return f"{self.name}-{field}.{component}"

    def repetitions(self, field: int) -> list[Repetition]:
        if field >= len(self.fields):
            return []
        return self.fields[field]

    def raw(
        self, field: int, component: int = 1, subcomponent: int = 1, repetition: int = 1
    ) -> str:
        """Return a value as sent, with escape sequences left in place."""
        try:
            components = self.fields[field][repetition - 1]
            return components[component - 1][subcomponent - 1]
        except IndexError:
            return ""

    def get(
        self, field: int, component: int = 1, subcomponent: int = 1, repetition: int = 1
    ) -> str:
        """Return a value with escape sequences decoded, or "" when it is absent."""
        value = self.raw(field, component, subcomponent, repetition)
        return unescape(value, self.encoding, self.codec)

    def subcomponents(self, field: int, component: int = 1) -> list[str]:
        """Return the decoded subcomponents of a component of the first repetition."""
        try:
            values = self.fields[field][0][component - 1]
        except IndexError:
            return []
        return [unescape(value, self.encoding, self.codec) for value in values]

    def is_null(self, field: int) -> bool:
        """Return whether the whole field is the HL7 null value ""."""
        return self.repetitions(field) == [[[HL7_NULL]]]

    def texts(self, field: int) -> list[str]:
        """Return each repetition of a text field (ST, TX, FT) decoded.

        Separators that a sender left unescaped inside the text are put back,
        so that "liver ^ spleen" reads as sent.
        """
        texts = []
        for components in self.repetitions(field):
            raw = self.encoding.component.join(
                self.encoding.subcomponent.join(values) for values in components
            )
            texts.append(unescape(raw, self.encoding, self.codec))
        return texts

    def required(self, field: int, label: str, component: int = 1) -> str:
        """Return a decoded value, raising HL7Error when it is empty or null."""
        value = self.get(field, component)
        if not value or value == HL7_NULL:
            raise HL7Error(
                f"{self.ref(field, component)} {label} is missing",
                self.ref(field, component),
            )
        return value

    def timestamp(
        self, field: int, label: str, zone: tzinfo, component: int = 1
    ) -> datetime | None:
        """Return a field as an aware datetime, or None when it is empty.

        A time without an offset is read in ``zone``.
        """
        value = self.raw(field, component)
        if not value or value == HL7_NULL:
            return None
        try:
            return parse_timestamp(value, zone)
        except ValueError:
            ref = self.ref(field, component)
            raise HL7Error(
                f"{ref} {label} is not a valid HL7 timestamp "
                f"(expected {TIMESTAMP_FORMAT})",
                ref,
            ) from None

    def date(self, field: int, label: str) -> date | None:
        """Return a field as a date, or None when it is empty."""
        value = self.raw(field)
        if not value or value == HL7_NULL:
            return None
        try:
            return parse_date(value)
        except ValueError:
            raise HL7Error(
                f"{self.ref(field)} {label} is not a valid date (expected YYYYMMDD)",
                self.ref(field),
            ) from None


@dataclass(frozen=True)
class Message:
    """A parsed message: its segments in order, starting with MSH."""

    segments: list[Segment]

    @property
    def header(self) -> Segment:
        return self.segments[0]

    @property
    def message_type(self) -> str:
        """Return MSH-9 as code^event, like "ORU^R01"."""
        code = self.header.get(9, 1).upper()
        event = self.header.get(9, 2).upper()
        return f"{code}^{event}" if event else code

    @property
    def control_id(self) -> str:
        return self.header.get(10).strip()

    @property
    def sending_facility(self) -> str:
        """Return the first component of MSH-4."""
        return self.header.get(4).strip()

    def find(self, name: str) -> list[Segment]:
        return [segment for segment in self.segments if segment.name == name]

    def segment(self, name: str) -> Segment:
        """Return the first segment called ``name``, raising HL7Error if none."""
        for segment in self.segments:
            if segment.name == name:
                return segment
        raise HL7Error(f"{name} segment is missing", name)


def split_messages(text: str) -> list[str]:
    """Split text into messages, each with its segments joined by CR.

    Lines before the first MSH, other than batch segments, come back as one
    item of their own so that the caller can reject them instead of losing
    them silently.
    """
    text = text.removeprefix("\ufeff")
    text = text.replace(MLLP_START_BLOCK, "").replace(MLLP_END_BLOCK, "")
    lines = text.replace("\r\n", "\r").replace("\n", "\r").split("\r")

    messages: list[list[str]] = []
    for line in (line.strip() for line in lines):
        if not line or _is_segment(line, BATCH_SEGMENT_IDS):
            continue
        if _is_segment(line, {"MSH"}) or not messages:
            messages.append([line])
        else:
            messages[-1].append(line)
    return ["\r".join(segments) + "\r" for segments in messages]


def split_file(data: bytes) -> list[str]:
    """Split the bytes of an HL7 file into decoded messages.

    Raises NotHL7Error for binary data or when no line is an MSH segment.
    """
    data = data.removeprefix(UTF8_BYTE_ORDER_MARK)
    if binary := BINARY_BYTES.search(data):
        raise NotHL7Error(
            f"binary data (byte 0x{binary.group()[0]:02x} at offset {binary.start()})"
        )

    # latin-1 maps every byte to one character and back, so the structure can
    # be split before each message is decoded in its own MSH-18 character set.
    chunks = split_messages(data.decode("latin-1"))
    if not any(_is_segment(chunk, {"MSH"}) for chunk in chunks):
        raise NotHL7Error("no MSH segment found")
    return [decode_message(chunk.encode("latin-1")) for chunk in chunks]


def decode_message(data: bytes) -> str:
    """Decode one message in the character set its MSH-18 declares.

    8859/1 and 8859/15 are decoded as declared. Everything else is read as
    UTF-8, falling back to latin-1 for bytes that are not valid UTF-8.
    parse_message then rejects an unsupported MSH-18 with the reason.
    """
    codec = CHARACTER_SETS.get(_read_character_set(data.decode("latin-1")))
    if codec is not None and codec != "utf-8":
        return data.decode(codec)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("latin-1")


def parse_message(text: str) -> Message:
    """Parse one message, as split_messages returns it, raising HL7Error."""
    lines = [line for line in text.split("\r") if line]
    if not lines or not _is_segment(lines[0], {"MSH"}):
        raise HL7Error("message does not start with an MSH segment", "MSH")
    encoding = _read_encoding_characters(lines[0])

    for number, line in enumerate(lines[1:], start=2):
        if not (SEGMENT_ID.fullmatch(line[:3]) and line[3:4] in ("", encoding.field)):
            raise HL7Error(
                f"line {number} is not an HL7 segment (expected a segment ID "
                f"like OBX followed by '{encoding.field}')",
                f"line {number}",
            )

    character_set = _read_character_set(lines[0])
    if character_set not in CHARACTER_SETS:
        raise HL7Error(
            f"MSH-18 character set '{character_set}' is not supported "
            f"(supported: {', '.join(name for name in CHARACTER_SETS if name)})",
            "MSH-18",
        )
    codec = CHARACTER_SETS[character_set]

    try:
        parsed = hl7.parse("\r".join(lines))
    except (hl7.HL7Exception, IndexError, ValueError) as error:
        # The checks above should leave nothing for the package to fail on.
        # If it still does, one message is rejected instead of the whole file.
        raise HL7Error(
            f"message could not be parsed ({type(error).__name__})"
        ) from error
    segments = [
        Segment(
            name=str(segment[0]),
            fields=[_convert_field(field) for field in segment],
            encoding=encoding,
            codec=codec,
        )
        for segment in parsed
    ]
    return Message(segments)


def read_header_labels(text: str) -> tuple[str, str]:
    """Return MSH-9 as code^event and MSH-10 as far as they can be read.

    This never raises. It labels a message that parse_message rejected.
    """
    header = text.split("\r", 1)[0]
    if not _is_segment(header, {"MSH"}) or len(header) < 5:
        return "", ""
    fields = header.split(header[3])
    component = fields[1][:1] or "^"
    # fields[n - 1] is MSH-n, because MSH-1 is the separator itself.
    message_type = fields[8] if len(fields) > 8 else ""
    control_id = fields[9] if len(fields) > 9 else ""
    return "^".join(message_type.split(component)[:2]), control_id


def read_sending_facility(text: str) -> str:
    """Return the first component of MSH-4 as far as it can be read, or "".

    This never raises. It scopes the control ID of a rejected message.
    """
    header = text.split("\r", 1)[0]
    if not _is_segment(header, {"MSH"}) or len(header) < 5:
        return ""
    fields = header.split(header[3])
    component = fields[1][:1] or "^"
    facility = fields[3] if len(fields) > 3 else ""
    return facility.split(component)[0].strip()


def unescape(value: str, encoding: EncodingCharacters, codec: str | None) -> str:
    r"""Decode HL7 escape sequences.

    \F\ \S\ \T\ \R\ \E\ (and \P\ when MSH-2 declares a truncation character)
    become the characters they stand for. \.br\, \.ce\ and \.sp\ become line
    breaks, and \.spN\ N line breaks. \X..\ is hex for bytes in the
    message's character set. Highlighting (\H\ \N\), the other formatting
    commands, character set switches (\C..\ \M..\) and local sequences
    (\Z..\) are dropped. An escape character without a closing one is kept as
    text, so that nothing the sender wrote is lost.
    """
    escape = encoding.escape
    if escape not in value:
        return value

    decoded = []
    position = 0
    while (start := value.find(escape, position)) >= 0:
        end = value.find(escape, start + 1)
        if end < 0:
            break
        decoded.append(value[position:start])
        decoded.append(_expand_escape(value[start + 1 : end], encoding, codec))
        position = end + 1
    decoded.append(value[position:])
    return "".join(decoded)


def escape(value: str, encoding: EncodingCharacters | None = None) -> str:
    r"""Encode text for one field of a message that this program writes.

    Separators become \F\ \S\ \T\ \R\ \E\ and line breaks \.br\.
    """
    encoding = encoding or EncodingCharacters()
    value = value.replace(encoding.escape, f"{encoding.escape}E{encoding.escape}")
    for code, character in (
        ("F", encoding.field),
        ("S", encoding.component),
        ("T", encoding.subcomponent),
        ("R", encoding.repetition),
    ):
        value = value.replace(character, f"{encoding.escape}{code}{encoding.escape}")
    lines = value.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    return f"{encoding.escape}.br{encoding.escape}".join(lines)


def parse_timestamp(value: str, zone: tzinfo) -> datetime:
    """Parse an HL7 DTM into an aware datetime, reading it in ``zone`` without offset.

    Raises ValueError unless the value matches YYYYMMDD[HHMM[SS[.S+]]][+/-ZZZZ].
    """
    match = TIMESTAMP.fullmatch(value.strip())
    if match is None:
        raise ValueError(f"not an HL7 timestamp: expected {TIMESTAMP_FORMAT}")
    parts = match.groupdict()

    if parts["offset"]:
        sign = -1 if parts["offset"][0] == "-" else 1
        hours, minutes = int(parts["offset"][1:3]), int(parts["offset"][3:5])
        if minutes >= 60:
            raise ValueError("offset minutes out of range")
        zone = timezone(sign * timedelta(hours=hours, minutes=minutes))

    # NOTE: a local time that a daylight saving change skips or repeats is
    # read with fold=0, which is the earlier of two repeated times.
    return datetime(
        int(parts["year"]),
        int(parts["month"]),
        int(parts["day"]),
        int(parts["hour"] or 0),
        int(parts["minute"] or 0),
        int(parts["second"] or 0),
        int((parts["fraction"] or "0")[:6].ljust(6, "0")),
        tzinfo=zone,
    )


def parse_date(value: str) -> date:
    """Parse YYYYMMDD, raising ValueError.

    A full timestamp is accepted too (PID-7 is a timestamp in HL7 v2.5), and
    only its date is kept, without any conversion between zones.
    """
    match = TIMESTAMP.fullmatch(value.strip())
    if match is None:
        raise ValueError("not an HL7 date: expected YYYYMMDD")
    return date(int(match["year"]), int(match["month"]), int(match["day"]))


def _is_segment(line: str, names: set[str] | frozenset[str]) -> bool:
    """Return whether a line is one of the named segments.

    A segment ID is followed by the field separator or ends the line, so that
    a text line that starts with "MSHA" is not taken for a header.
    """
    return line[:3] in names and (len(line) == 3 or not line[3].isalnum())


def _read_encoding_characters(header: str) -> EncodingCharacters:
    """Read MSH-1 and MSH-2, raising HL7Error when they cannot be used."""
    field = header[3:4]
    if not field or field.isalnum() or field.isspace():
        raise HL7Error(f"MSH-1 field separator '{field}' is invalid", "MSH-1")
    end = header.find(field, 4)
    characters = header[4:end] if end >= 0 else header[4:]
    if (
        end < 0
        or len(characters) not in (4, 5)
        or len(set(characters + field)) != len(characters) + 1
        or any(character.isalnum() or character.isspace() for character in characters)
    ):
        raise HL7Error(
            f"MSH-2 encoding characters '{characters}' are invalid "
            "(expected 4 or 5 distinct symbols like ^~\\&)",
            "MSH-2",
        )
    return EncodingCharacters(
        field=field,
        component=characters[0],
        repetition=characters[1],
        escape=characters[2],
        subcomponent=characters[3],
        truncation=characters[4:],
    )


def _read_character_set(header: str) -> str:
    """Return the first repetition of MSH-18 from the first line, or ""."""
    header = header.split("\r", 1)[0]
    if not _is_segment(header, {"MSH"}) or len(header) < 8:
        return ""
    fields = header.split(header[3])
    if len(fields) <= 17:
        return ""
    repetition = fields[1][1:2] or "~"
    return fields[17].split(repetition)[0].strip().upper()


def _convert_field(field: str | list[Any]) -> list[Repetition]:
    """Turn an ``hl7`` field into plain nested lists of one shape.

    The package returns a bare string wherever a part has no separator left,
    so a field can be a string, or repetitions that hold strings or
    components.
    """
    if isinstance(field, str):
        return [[[field]]]
    repetitions: list[Repetition] = []
    for repetition in field:
        if isinstance(repetition, str):
            repetitions.append([[repetition]])
            continue
        repetitions.append(
            [
                [component] if isinstance(component, str) else list(component)
                for component in repetition
            ]
        )
    return repetitions


def _expand_escape(
    sequence: str, encoding: EncodingCharacters, codec: str | None
) -> str:
    """Return the text an escape sequence stands for ("" for dropped ones)."""
    delimiters = {
        "F": encoding.field,
        "S": encoding.component,
        "T": encoding.subcomponent,
        "R": encoding.repetition,
        "E": encoding.escape,
        "P": encoding.truncation,
    }
    if sequence in delimiters:
        return delimiters[sequence]
    if sequence in (".br", ".ce"):
        return "\n"
    if sequence.startswith(".sp"):
        count = sequence[3:].strip()
        return "\n" * (int(count) if count.isdigit() and int(count) > 0 else 1)
    if sequence.startswith("X"):
        return _decode_hex(sequence[1:], codec)
    return ""


def _decode_hex(digits: str, codec: str | None) -> str:
    """Decode the bytes of a \\X..\\ sequence. Invalid hex is dropped."""
    try:
        data = bytes.fromhex(digits)
    except ValueError:
        return ""
    if codec is not None and codec != "utf-8":
        return data.decode(codec)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("latin-1")
