"""The DICOM Upper Layer PDUs and DIMSE command sets that a Storage SCP uses.

Encoders and decoders for the association PDUs of PS3.8 section 9.3 and for
the command sets of PS3.7 section 9.3, which are always Implicit VR Little
Endian. Data sets are not decoded here: the receiver writes their fragments
to disk as they arrive.
"""

import struct
from dataclasses import dataclass, field
from typing import Final

# PDU types (PS3.8 section 9.3.1).
A_ASSOCIATE_RQ: Final = 0x01
A_ASSOCIATE_AC: Final = 0x02
A_ASSOCIATE_RJ: Final = 0x03
P_DATA_TF: Final = 0x04
A_RELEASE_RQ: Final = 0x05
A_RELEASE_RP: Final = 0x06
A_ABORT: Final = 0x07

# Item types of the A-ASSOCIATE PDUs (PS3.8 sections 9.3.2 and 9.3.3).
_APPLICATION_CONTEXT_ITEM: Final = 0x10
_PRESENTATION_CONTEXT_RQ_ITEM: Final = 0x20
_PRESENTATION_CONTEXT_AC_ITEM: Final = 0x21
_ABSTRACT_SYNTAX_ITEM: Final = 0x30
_TRANSFER_SYNTAX_ITEM: Final = 0x40
_USER_INFORMATION_ITEM: Final = 0x50
_MAXIMUM_LENGTH_ITEM: Final = 0x51
_IMPLEMENTATION_CLASS_UID_ITEM: Final = 0x52
_IMPLEMENTATION_VERSION_NAME_ITEM: Final = 0x55

# The DICOM Application Context Name (PS3.7 Annex A.2.1).
APPLICATION_CONTEXT_NAME: Final = "1.2.840.10008.3.1.1.1"

# Presentation context results in an A-ASSOCIATE-AC (PS3.8 section 9.3.3.2).
CONTEXT_ACCEPTED: Final = 0
CONTEXT_ABSTRACT_SYNTAX_NOT_SUPPORTED: Final = 3
CONTEXT_TRANSFER_SYNTAXES_NOT_SUPPORTED: Final = 4

# A-ASSOCIATE-RJ result, source and reason values (PS3.8 section 9.3.4).
REJECTED_PERMANENT: Final = 1
REJECTED_TRANSIENT: Final = 2
SOURCE_SERVICE_USER: Final = 1
SOURCE_SERVICE_PROVIDER_ACSE: Final = 2
SOURCE_SERVICE_PROVIDER_PRESENTATION: Final = 3
REASON_NO_REASON_GIVEN: Final = 1
REASON_APPLICATION_CONTEXT_NOT_SUPPORTED: Final = 2
REASON_CALLING_AE_NOT_RECOGNIZED: Final = 3
REASON_PROTOCOL_VERSION_NOT_SUPPORTED: Final = 2
REASON_LOCAL_LIMIT_EXCEEDED: Final = 2

# A-ABORT source and reason values (PS3.8 section 9.3.8).
ABORT_SOURCE_SERVICE_PROVIDER: Final = 2
ABORT_REASON_NOT_SPECIFIED: Final = 0
ABORT_REASON_UNRECOGNIZED_PDU: Final = 1
ABORT_REASON_UNEXPECTED_PDU: Final = 2
ABORT_REASON_INVALID_PARAMETER_VALUE: Final = 6

# Message Control Header bits of a PDV (PS3.8 Annex E.2).
PDV_COMMAND: Final = 0x01
PDV_LAST_FRAGMENT: Final = 0x02

# Command Set elements (PS3.7 section E.1), as (group << 16) | element.
COMMAND_GROUP_LENGTH: Final = 0x00000000
AFFECTED_SOP_CLASS_UID: Final = 0x00000002
COMMAND_FIELD: Final = 0x00000100
MESSAGE_ID: Final = 0x00000110
MESSAGE_ID_BEING_RESPONDED_TO: Final = 0x00000120
COMMAND_DATA_SET_TYPE: Final = 0x00000800
STATUS: Final = 0x00000900
ERROR_COMMENT: Final = 0x00000902
AFFECTED_SOP_INSTANCE_UID: Final = 0x00001000

# Command Field values (PS3.7 section E.1). A response is its request | 0x8000.
C_STORE_RQ: Final = 0x0001
C_ECHO_RQ: Final = 0x0030
C_CANCEL_RQ: Final = 0x0FFF
RESPONSE_BIT: Final = 0x8000
# Command Data Set Type value of a message without a data set.
NO_DATA_SET: Final = 0x0101

# Error Comment (0000,0902) has VR LO: at most 64 characters.
ERROR_COMMENT_LENGTH: Final = 64

_PDU_HEADER = struct.Struct(">BBL")
_ITEM_HEADER = struct.Struct(">BBH")
_PDV_HEADER = struct.Struct(">LBB")
_ELEMENT_HEADER = struct.Struct("<HHL")
_UNSIGNED_SHORT = struct.Struct("<H")
_UNSIGNED_LONG = struct.Struct("<L")
PDU_HEADER_LENGTH: Final = _PDU_HEADER.size
PDV_HEADER_LENGTH: Final = _PDV_HEADER.size


class PduError(Exception):
    """A PDU or command set that does not follow PS3.7 or PS3.8."""


@dataclass(frozen=True)
class ProposedContext:
    context_id: int
    abstract_syntax: str
    transfer_syntaxes: tuple[str, ...]


@dataclass
class AssociateRequest:
    """The parts of an A-ASSOCIATE-RQ that the receiver uses."""

    protocol_version: int
    called_ae_title: str
    calling_ae_title: str
    application_context_name: str = ""
    contexts: list[ProposedContext] = field(default_factory=list)
    # Largest P-DATA-TF PDU the requestor receives; 0 means no limit.
    maximum_length: int = 0


def decode_pdu_header(header: bytes | bytearray | memoryview) -> tuple[int, int]:
    """Return the type and the length of the PDU that header starts."""
    pdu_type, _, length = _PDU_HEADER.unpack(header)
    return pdu_type, length


def _text(value: bytes | memoryview) -> str:
    try:
        text = bytes(value).decode("ascii").strip(" \x00")
    except UnicodeDecodeError as error:
        raise PduError("A UID or AE title is not ASCII text") from error
    # AE titles and UIDs have no control characters (PS3.5 section 6.2). A
    # title that has some is rejected as unknown, and must not forge lines
    # of the log that names it.
    return "".join(character if character.isprintable() else "?" for character in text)


def _items(data: memoryview) -> list[tuple[int, memoryview]]:
    items = []
    offset = 0
    while offset < len(data):
        if offset + _ITEM_HEADER.size > len(data):
            raise PduError("An item header runs past the end of its PDU")
        item_type, _, length = _ITEM_HEADER.unpack_from(data, offset)
        start = offset + _ITEM_HEADER.size
        if start + length > len(data):
            raise PduError(f"Item 0x{item_type:02X} runs past the end of its PDU")
        items.append((item_type, data[start : start + length]))
        offset = start + length
    return items


def _proposed_context(data: memoryview) -> ProposedContext:
    if len(data) < 4:
        raise PduError("A presentation context item is shorter than 4 bytes")
    abstract_syntax = ""
    transfer_syntaxes = []
    for item_type, value in _items(data[4:]):
        if item_type == _ABSTRACT_SYNTAX_ITEM:
            abstract_syntax = _text(value)
        elif item_type == _TRANSFER_SYNTAX_ITEM:
            transfer_syntaxes.append(_text(value))
    if not abstract_syntax:
        raise PduError(f"Presentation context {data[0]} has no abstract syntax")
    return ProposedContext(data[0], abstract_syntax, tuple(transfer_syntaxes))


def decode_associate_request(body: bytes | bytearray | memoryview) -> AssociateRequest:
    """Decode the variable part of an A-ASSOCIATE-RQ, after its PDU header."""
    data = memoryview(body)
    if len(data) < 68:
        raise PduError("The A-ASSOCIATE-RQ is shorter than its 68 fixed bytes")
    request = AssociateRequest(
        protocol_version=struct.unpack(">H", data[0:2])[0],
        called_ae_title=_text(data[4:20]),
        calling_ae_title=_text(data[20:36]),
    )
    for item_type, value in _items(data[68:]):
        if item_type == _APPLICATION_CONTEXT_ITEM:
            request.application_context_name = _text(value)
        elif item_type == _PRESENTATION_CONTEXT_RQ_ITEM:
            request.contexts.append(_proposed_context(value))
        elif item_type == _USER_INFORMATION_ITEM:
            for sub_type, sub_value in _items(value):
                if sub_type == _MAXIMUM_LENGTH_ITEM and len(sub_value) == 4:
                    request.maximum_length = struct.unpack(">L", sub_value)[0]
    return request


def _item(item_type: int, value: bytes) -> bytes:
    return _ITEM_HEADER.pack(item_type, 0, len(value)) + value


def _ae_title(title: str) -> bytes:
    return title.encode("ascii")[:16].ljust(16, b" ")


def encode_associate_accept(
    request: AssociateRequest,
    results: list[tuple[int, int, str]],
    *,
    maximum_length: int,
    implementation_class_uid: str,
    implementation_version_name: str,
) -> bytes:
    """Encode an A-ASSOCIATE-AC.

    ``results`` has a (context id, result, transfer syntax) triple for each
    proposed context. The called and calling AE titles are those of the
    request, as PS3.8 section 9.3.3 requires.
    """
    contexts = b"".join(
        _item(
            _PRESENTATION_CONTEXT_AC_ITEM,
            bytes([context_id, 0, result, 0])
            + _item(_TRANSFER_SYNTAX_ITEM, transfer_syntax.encode("ascii")),
        )
        for context_id, result, transfer_syntax in results
    )
    user_information = _item(
        _USER_INFORMATION_ITEM,
        _item(_MAXIMUM_LENGTH_ITEM, struct.pack(">L", maximum_length))
        + _item(_IMPLEMENTATION_CLASS_UID_ITEM, implementation_class_uid.encode())
        + _item(
            _IMPLEMENTATION_VERSION_NAME_ITEM, implementation_version_name.encode()
        ),
    )
    body = (
        struct.pack(">HH", 1, 0)
        + _ae_title(request.called_ae_title)
        + _ae_title(request.calling_ae_title)
        + bytes(32)
        + _item(_APPLICATION_CONTEXT_ITEM, APPLICATION_CONTEXT_NAME.encode())
        + contexts
        + user_information
    )
    return _PDU_HEADER.pack(A_ASSOCIATE_AC, 0, len(body)) + body


def encode_associate_reject(result: int, source: int, reason: int) -> bytes:
    return _PDU_HEADER.pack(A_ASSOCIATE_RJ, 0, 4) + bytes([0, result, source, reason])


def encode_release_response() -> bytes:
    return _PDU_HEADER.pack(A_RELEASE_RP, 0, 4) + bytes(4)


def encode_abort(reason: int, source: int = ABORT_SOURCE_SERVICE_PROVIDER) -> bytes:
    return _PDU_HEADER.pack(A_ABORT, 0, 4) + bytes([0, 0, source, reason])


def encode_p_data(context_id: int, command: bytes, maximum_length: int) -> list[bytes]:
    """Split an encoded command set into P-DATA-TF PDUs of at most maximum_length.

    A maximum_length of 0 means that the peer set no limit.
    """
    largest_fragment = len(command)
    if maximum_length:
        largest_fragment = max(maximum_length - PDV_HEADER_LENGTH, 1)
    pdus = []
    for start in range(0, len(command), largest_fragment):
        fragment = command[start : start + largest_fragment]
        last = start + largest_fragment >= len(command)
        control = PDV_COMMAND | (PDV_LAST_FRAGMENT if last else 0)
        pdv_length = len(fragment) + 2
        pdus.append(
            _PDU_HEADER.pack(P_DATA_TF, 0, pdv_length + 4)
            + _PDV_HEADER.pack(pdv_length, context_id, control)
            + fragment
        )
    return pdus


def decode_pdv_header(data: memoryview, offset: int) -> tuple[int, int, int]:
    """Return the fragment length, context id and control header of a PDV."""
    if offset + PDV_HEADER_LENGTH > len(data):
        raise PduError("A PDV header runs past the end of its P-DATA-TF PDU")
    length, context_id, control = _PDV_HEADER.unpack_from(data, offset)
    if length < 2 or offset + 4 + length > len(data):
        raise PduError(f"A PDV has an invalid length of {length} bytes")
    return length - 2, context_id, control


def decode_command(data: bytes | bytearray) -> dict[int, bytes]:
    """Decode an Implicit VR Little Endian command set into tag to value bytes."""
    elements = {}
    offset = 0
    while offset < len(data):
        if offset + _ELEMENT_HEADER.size > len(data):
            raise PduError("A command element header runs past the command set")
        group, element, length = _ELEMENT_HEADER.unpack_from(data, offset)
        offset += _ELEMENT_HEADER.size
        if group != 0 or offset + length > len(data):
            raise PduError(
                f"Command element ({group:04X},{element:04X}) is not in group 0000 "
                "or runs past the command set"
            )
        elements[element] = bytes(data[offset : offset + length])
        offset += length
    return elements


def command_uid(elements: dict[int, bytes], tag: int) -> str:
    return elements.get(tag, b"").decode("ascii", "replace").strip(" \x00")


def command_unsigned_short(elements: dict[int, bytes], tag: int) -> int:
    value = elements.get(tag)
    if value is None or len(value) != 2:
        raise PduError(f"Command element (0000,{tag:04X}) is missing or not a US")
    return int(_UNSIGNED_SHORT.unpack(value)[0])


def _padded(value: bytes, padding: bytes) -> bytes:
    return value + padding if len(value) % 2 else value


def encode_response(
    command_field: int,
    message_id: int,
    status: int,
    *,
    sop_class_uid: str = "",
    sop_instance_uid: str = "",
    error_comment: str = "",
) -> bytes:
    """Encode a response command set without a data set (PS3.7 section 9.3)."""
    elements: list[tuple[int, bytes]] = []
    if sop_class_uid:
        elements.append(
            (AFFECTED_SOP_CLASS_UID, _padded(sop_class_uid.encode(), b"\0"))
        )
    elements += [
        (COMMAND_FIELD, _UNSIGNED_SHORT.pack(command_field)),
        (MESSAGE_ID_BEING_RESPONDED_TO, _UNSIGNED_SHORT.pack(message_id)),
        (COMMAND_DATA_SET_TYPE, _UNSIGNED_SHORT.pack(NO_DATA_SET)),
        (STATUS, _UNSIGNED_SHORT.pack(status)),
    ]
    if error_comment:
        comment = error_comment[:ERROR_COMMENT_LENGTH].encode("ascii", "replace")
        elements.append((ERROR_COMMENT, _padded(comment, b" ")))
    if sop_instance_uid:
        elements.append(
            (AFFECTED_SOP_INSTANCE_UID, _padded(sop_instance_uid.encode(), b"\0"))
        )
    encoded = b"".join(
        _ELEMENT_HEADER.pack(0, tag, len(value)) + value for tag, value in elements
    )
    group_length = _ELEMENT_HEADER.pack(0, COMMAND_GROUP_LENGTH, 4)
    return group_length + _UNSIGNED_LONG.pack(len(encoded)) + encoded
