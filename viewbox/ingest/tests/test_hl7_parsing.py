import logging
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from viewbox.ingest.hl7_parsing import (
    EncodingCharacters,
    HL7Error,
    NotHL7Error,
    escape,
    parse_date,
    parse_message,
    parse_timestamp,
    read_header_labels,
    read_sending_facility,
    split_file,
    split_messages,
    unescape,
)

LOS_ANGELES = ZoneInfo("America/Los_Angeles")
HEADER = "MSH|^~\\&|RIS|RLA|VIEWBOX|VIEWBOX|20261120093000||ADT^A04|MSG0001|P|2.5.1"
PID = "PID|1||MRN1001^^^RLA^MR~ALT77^^^OTHER||TESTPATIENT^ALICE||19800412|F"
ENCODING = EncodingCharacters()


class TestSplitMessages:
    @pytest.mark.parametrize("separator", ["\r", "\n", "\r\n"])
    def test_every_segment_separator_gives_the_same_messages(self, separator) -> None:
        text = separator.join([HEADER, PID, HEADER.replace("MSG0001", "MSG0002"), PID])

        messages = split_messages(text + separator)

        assert messages == [
            f"{HEADER}\r{PID}\r",
            f"{HEADER.replace('MSG0001', 'MSG0002')}\r{PID}\r",
        ]

    def test_mllp_framing_is_stripped(self) -> None:
        framed = f"\x0b{HEADER}\r{PID}\r\x1c\r\x0b{HEADER}\r\x1c\r"

        assert split_messages(framed) == [f"{HEADER}\r{PID}\r", f"{HEADER}\r"]

    def test_batch_segments_are_dropped(self) -> None:
        text = "\r".join(
            [
                "FHS|^~\\&|RIS|RLA",
                "BHS|^~\\&|RIS|RLA",
                HEADER,
                PID,
                "BTS|1",
                "FTS|1",
            ]
        )

        assert split_messages(text) == [f"{HEADER}\r{PID}\r"]

    def test_lines_before_msh_are_kept(self) -> None:
        text = f"PID|1||LOST\rOBX|1|TX|||orphan\r{HEADER}\r{PID}\r"

        assert split_messages(text) == [
            "PID|1||LOST\rOBX|1|TX|||orphan\r",
            f"{HEADER}\r{PID}\r",
        ]

    def test_blank_lines_and_surrounding_spaces_are_ignored(self) -> None:
        text = f"\n\n  {HEADER}  \n\n{PID}\n\n"

        assert split_messages(text) == [f"{HEADER}\r{PID}\r"]


class TestSplitFile:
    def test_binary_data_is_not_hl7(self) -> None:
        with pytest.raises(NotHL7Error) as caught:
            split_file(b"\x89PNG\r\n\x1a\n\x00\x00")

        assert str(caught.value) == "binary data (byte 0x1a at offset 6)"

    def test_text_without_msh_is_not_hl7(self) -> None:
        with pytest.raises(NotHL7Error) as caught:
            split_file(b"Dear colleague,\nplease find the report attached.\n")

        assert str(caught.value) == "no MSH segment found"

    def test_empty_file_is_not_hl7(self) -> None:
        with pytest.raises(NotHL7Error) as caught:
            split_file(b"")

        assert str(caught.value) == "no MSH segment found"

    def test_utf8_is_decoded(self) -> None:
        data = f"{HEADER}\rPID|1||MRN1001||MÜLLER^JOSÉ\r".encode()

        [message] = split_file(data)

        assert parse_message(message).segment("PID").get(5) == "MÜLLER"

    def test_invalid_utf8_falls_back_to_latin1(self) -> None:
        data = f"{HEADER}\rPID|1||MRN1001||MÜLLER^JOSÉ\r".encode("latin-1")

        [message] = split_file(data)

        assert parse_message(message).segment("PID").get(5, 2) == "JOSÉ"

    def test_declared_8859_1_is_honoured(self) -> None:
        # "Ã©" in latin-1 is the same two bytes as "é" in UTF-8.
        header = HEADER + "||||||8859/1"
        data = f"{header}\rPID|1||MRN1001||DOÃ©^ALICE\r".encode("latin-1")

        [message] = split_file(data)

        assert parse_message(message).segment("PID").get(5) == "DOÃ©"

    def test_each_message_has_its_charset(self) -> None:
        latin = f"{HEADER}||||||8859/1\rPID|1||MRN1||MÜLLER\r".encode("latin-1")
        utf8 = f"{HEADER}||||||UNICODE UTF-8\rPID|1||MRN2||MÜLLER\r".encode()

        first, second = split_file(latin + utf8)

        assert parse_message(first).segment("PID").get(5) == "MÜLLER"
        assert parse_message(second).segment("PID").get(5) == "MÜLLER"

    def test_utf8_byte_order_mark_is_dropped(self) -> None:
        [message] = split_file(b"\xef\xbb\xbf" + f"{HEADER}\r".encode())

        assert message == f"{HEADER}\r"


class TestParseMessage:
    def test_header_fields_are_read(self) -> None:
        message = parse_message(f"{HEADER}\r{PID}\r")

        assert message.message_type == "ADT^A04"
        assert message.control_id == "MSG0001"
        assert message.sending_facility == "RLA"

    def test_components_and_repetitions_are_addressed_as_in_hl7(self) -> None:
        pid = parse_message(f"{HEADER}\r{PID}\r").segment("PID")

        assert pid.get(3) == "MRN1001"
        assert pid.get(3, 4) == "RLA"
        assert pid.get(3, repetition=2) == "ALT77"
        assert pid.get(5, 2) == "ALICE"
        assert pid.get(7) == "19800412"
        assert pid.get(30) == ""
        assert pid.get(5, 9) == ""

    def test_message_type_has_code_and_event_only(self) -> None:
        header = HEADER.replace("ADT^A04", "adt^a04^ADT_A01")

        assert parse_message(f"{header}\r").message_type == "ADT^A04"

    def test_declared_separators_are_used(self) -> None:
        text = "MSH#*~!$#RIS#RLA#####ORU*R01#MSG7\rPID#1##MRN1001##DOE*JANE\r"

        message = parse_message(text)

        assert message.message_type == "ORU^R01"
        assert message.segment("PID").get(5, 2) == "JANE"

    def test_subcomponents_are_read(self) -> None:
        obr = parse_message(
            f"{HEADER}\rOBR|1|||||||||||||||||||||||||||||||77&Reader&Ima&&&Dr.^2026\r"
        ).segment("OBR")

        assert obr.subcomponents(32, 1) == ["77", "Reader", "Ima", "", "", "Dr."]
        assert obr.get(32, 2) == "2026"

    def test_text_without_msh_is_rejected(self) -> None:
        with pytest.raises(HL7Error) as caught:
            parse_message("hello\r")

        assert caught.value.reason == "message does not start with an MSH segment"

    @pytest.mark.parametrize(
        ("header", "reason"),
        [
            ("MSHA^~\\&|RIS", "message does not start with an MSH segment"),
            ("MSH", "MSH-1 field separator '' is invalid"),
            (
                "MSH|^~\\&",
                "MSH-2 encoding characters '^~\\&' are invalid "
                "(expected 4 or 5 distinct symbols like ^~\\&)",
            ),
            (
                "MSH|^~|RIS",
                "MSH-2 encoding characters '^~' are invalid "
                "(expected 4 or 5 distinct symbols like ^~\\&)",
            ),
            (
                "MSH|^^\\&|RIS",
                "MSH-2 encoding characters '^^\\&' are invalid "
                "(expected 4 or 5 distinct symbols like ^~\\&)",
            ),
        ],
    )
    def test_unusable_header_is_rejected(self, header, reason) -> None:
        with pytest.raises(HL7Error) as caught:
            parse_message(header + "\r")

        assert caught.value.reason == reason

    def test_line_that_is_not_a_segment_is_rejected(self) -> None:
        # A report line broken by a bare LF must not vanish as an unknown segment.
        text = f"{HEADER}\r{PID}\rOBX|1|TX|||The liver is\rnormal in size.\r"

        with pytest.raises(HL7Error) as caught:
            parse_message(text)

        assert caught.value.reason == (
            "line 4 is not an HL7 segment "
            "(expected a segment ID like OBX followed by '|')"
        )

    def test_unsupported_character_set_is_rejected(self) -> None:
        with pytest.raises(HL7Error) as caught:
            parse_message(HEADER + "||||||8859/5\r")

        assert caught.value.reason == (
            "MSH-18 character set '8859/5' is not supported "
            "(supported: ASCII, UNICODE UTF-8, 8859/1, 8859/15)"
        )
        assert caught.value.field == "MSH-18"

    def test_missing_segment_is_named(self) -> None:
        with pytest.raises(HL7Error) as caught:
            parse_message(f"{HEADER}\r").segment("PV1")

        assert caught.value.reason == "PV1 segment is missing"


class TestSegmentValues:
    def test_required_value_that_is_empty_raises(self) -> None:
        pid = parse_message(f"{HEADER}\rPID|1||\r").segment("PID")

        with pytest.raises(HL7Error) as caught:
            pid.required(3, "patient ID (MRN)")

        assert caught.value.reason == "PID-3 patient ID (MRN) is missing"
        assert caught.value.field == "PID-3"

    def test_null_value_is_recognised(self) -> None:
        pid = parse_message(f'{HEADER}\rPID|1||MRN1001||||||||""\r').segment("PID")

        assert pid.is_null(11)
        assert not pid.is_null(3)
        assert not pid.is_null(12)

    def test_texts_put_back_separators_left_unescaped(self) -> None:
        obx = parse_message(
            f"{HEADER}\rOBX|1|TX|||Liver ^ spleen & kidneys~Second \\T\\ line\r"
        ).segment("OBX")

        assert obx.texts(5) == ["Liver ^ spleen & kidneys", "Second & line"]

    def test_invalid_timestamp_names_the_field_and_format(self) -> None:
        obr = parse_message(f"{HEADER}\rOBR|1||||||2026-11-20\r").segment("OBR")

        with pytest.raises(HL7Error) as caught:
            obr.timestamp(7, "observation date/time", LOS_ANGELES)

        assert caught.value.reason == (
            "OBR-7 observation date/time is not a valid HL7 timestamp "
            "(expected YYYYMMDD[HHMM[SS[.S]]][+/-ZZZZ])"
        )

    def test_invalid_component_timestamp_names_the_component(self) -> None:
        obr = parse_message(
            f"{HEADER}\rOBR|1|||||||||||||||||||||||||||||||77^yesterday\r"
        ).segment("OBR")

        with pytest.raises(HL7Error) as caught:
            obr.timestamp(32, "interpreter date/time", LOS_ANGELES, component=2)

        assert caught.value.field == "OBR-32.2"

    def test_invalid_date_is_rejected(self) -> None:
        pid = parse_message(f"{HEADER}\rPID|1||MRN1||A^B||19801332\r").segment("PID")

        with pytest.raises(HL7Error) as caught:
            pid.date(7, "birth date")

        assert caught.value.reason == (
            "PID-7 birth date is not a valid date (expected YYYYMMDD)"
        )

    def test_empty_timestamp_and_date_are_none(self) -> None:
        segment = parse_message(f'{HEADER}\rOBR|1||||||""\r').segment("OBR")

        assert segment.timestamp(7, "observation date/time", UTC) is None
        assert segment.timestamp(8, "observation end date/time", UTC) is None
        assert segment.date(9, "date") is None


class TestEscape:
    @pytest.mark.parametrize(
        ("text", "expected"),
        [
            ("a|b", "a\\F\\b"),
            ("a^b", "a\\S\\b"),
            ("a&b", "a\\T\\b"),
            ("a~b", "a\\R\\b"),
            ("a\\b", "a\\E\\b"),
            ("line one\nline two\r\nthree", "line one\\.br\\line two\\.br\\three"),
            ("plain text", "plain text"),
        ],
    )
    def test_separator_is_escaped(self, text: str, expected: str) -> None:
        assert escape(text) == expected

    def test_escaped_text_unescapes_to_the_original(self) -> None:
        text = "3|4 cm ^ left & right ~ \\ note"

        assert unescape(escape(text), ENCODING, None) == text


class TestReadSendingFacility:
    def test_first_component_of_msh_4(self) -> None:
        assert (
            read_sending_facility(HEADER.replace("|RLA|", "|RLA^1.2.3^ISO|")) == "RLA"
        )

    def test_text_without_msh_gives_empty(self) -> None:
        assert read_sending_facility("PID|1||MRN1001") == ""

    def test_short_header_gives_empty(self) -> None:
        assert read_sending_facility("MSH|^~\\&|RIS") == ""


class TestUnescape:
    @pytest.mark.parametrize(
        ("escaped", "expected"),
        [
            ("a\\F\\b", "a|b"),
            ("a\\S\\b", "a^b"),
            ("a\\T\\b", "a&b"),
            ("a\\R\\b", "a~b"),
            ("C:\\E\\temp", "C:\\temp"),
            ("line one\\.br\\line two", "line one\nline two"),
            ("para\\.sp\\next", "para\nnext"),
            ("para\\.sp2\\next", "para\n\nnext"),
            ("\\.ce\\TITLE", "\nTITLE"),
            ("caf\\XC3A9\\", "café"),
            ("\\H\\IMPRESSION\\N\\: normal", "IMPRESSION: normal"),
            ("\\.in+4\\indented\\.ti-2\\", "indented"),
            ("\\.fi\\\\.nf\\\\.sk3\\text", "text"),
            ("\\Zlocal\\text\\C2842\\", "text"),
            ("bad hex \\XZZ\\ dropped", "bad hex  dropped"),
            ("unterminated \\F", "unterminated \\F"),
            ("no escapes", "no escapes"),
        ],
    )
    def test_sequence_is_decoded(self, escaped, expected) -> None:
        assert unescape(escaped, ENCODING, None) == expected

    def test_hex_is_decoded_in_the_message_character_set(self) -> None:
        assert unescape("caf\\XE9\\", ENCODING, "latin-1") == "café"
        assert unescape("caf\\XE9\\", ENCODING, None) == "café"

    def test_truncation_character_is_decoded_when_declared(self) -> None:
        encoding = EncodingCharacters(truncation="#")

        assert unescape("a\\P\\b", encoding, None) == "a#b"
        assert unescape("a\\P\\b", ENCODING, None) == "ab"

    def test_declared_escape_character_is_used(self) -> None:
        encoding = EncodingCharacters(escape="!")

        assert unescape("a!F!b!.br!c\\d", encoding, None) == "a|b\nc\\d"

    def test_unknown_sequences_are_not_logged(self, caplog) -> None:
        caplog.set_level(logging.DEBUG)

        unescape("SECRET FINDING \\Zodd\\ \\.xyz\\", ENCODING, None)

        assert caplog.records == []


class TestParseTimestamp:
    def test_offset_is_used(self) -> None:
        parsed = parse_timestamp("20261120093000-0500", LOS_ANGELES)

        assert parsed == datetime(2026, 11, 20, 14, 30, tzinfo=UTC)
        assert parsed.utcoffset() == timedelta(hours=-5)

    def test_time_without_offset_is_read_in_the_zone(self) -> None:
        winter = parse_timestamp("20261120093000", LOS_ANGELES)
        summer = parse_timestamp("20260715093000", LOS_ANGELES)

        assert winter == datetime(2026, 11, 20, 17, 30, tzinfo=UTC)
        assert summer == datetime(2026, 7, 15, 16, 30, tzinfo=UTC)

    @pytest.mark.parametrize(
        ("value", "expected"),
        [
            ("20261120", datetime(2026, 11, 20, tzinfo=UTC)),
            ("202611200930", datetime(2026, 11, 20, 9, 30, tzinfo=UTC)),
            ("20261120093015", datetime(2026, 11, 20, 9, 30, 15, tzinfo=UTC)),
            (
                "20261120093015.25",
                datetime(2026, 11, 20, 9, 30, 15, 250000, tzinfo=UTC),
            ),
            (
                "20261120093015.1234567",
                datetime(2026, 11, 20, 9, 30, 15, 123456, tzinfo=UTC),
            ),
            ("202611200930+0130", datetime(2026, 11, 20, 8, 0, tzinfo=UTC)),
        ],
    )
    def test_every_precision_is_read(self, value, expected) -> None:
        assert parse_timestamp(value, UTC) == expected

    def test_offset_gives_a_fixed_zone(self) -> None:
        parsed = parse_timestamp("20261120093000+0000", LOS_ANGELES)

        assert parsed.tzinfo == UTC

    @pytest.mark.parametrize(
        "value",
        [
            "",
            "2026",
            "2026112009",
            "2026-11-20",
            "20261320093000",
            "20261120253000",
            "20261120093000+0560",
            "20261120093000+2500",
            "20261120093000Z",
            "20261120093000.",
        ],
    )
    def test_malformed_value_raises(self, value) -> None:
        with pytest.raises(ValueError):
            parse_timestamp(value, UTC)


class TestParseDate:
    def test_date_is_read(self) -> None:
        assert parse_date("19800412") == date(1980, 4, 12)

    def test_timestamp_gives_its_date(self) -> None:
        assert parse_date("198004120000-0500") == date(1980, 4, 12)

    @pytest.mark.parametrize("value", ["1980", "19800431", "12/04/1980", "198004"])
    def test_malformed_value_raises(self, value) -> None:
        with pytest.raises(ValueError):
            parse_date(value)


class TestReadHeaderLabels:
    def test_labels_are_read_from_a_header(self) -> None:
        assert read_header_labels(f"{HEADER}\r") == ("ADT^A04", "MSG0001")

    @pytest.mark.parametrize("text", ["", "MSH", "hello", "MSH|^~\\&|RIS"])
    def test_unreadable_header_gives_empty_labels(self, text) -> None:
        assert read_header_labels(text) == ("", "")
