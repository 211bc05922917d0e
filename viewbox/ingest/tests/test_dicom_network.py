"""The receiver's DICOM Upper Layer at the protocol level.

Most tests send PDUs over a raw TCP socket. The tests build them by hand, so
that they can break them on purpose. pynetdicom and dcmtk are the real peers.
Rejected and broken cases come first.
"""

import fcntl
import os
import re
import shutil
import signal
import socket
import sqlite3
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import pydicom
import pytest
from django.core.management.base import CommandError
from django.db import OperationalError, connection
from pynetdicom import AE

from viewbox.ingest import dicom_network
from viewbox.ingest.dicom_network import (
    IMPLEMENTATION_CLASS_UID,
    IMPLEMENTATION_VERSION_NAME,
    MAXIMUM_PDU_LENGTH,
    StorageServer,
)
from viewbox.ingest.dicom_receiver import start_receiver
from viewbox.ingest.management.commands import run_dicom_receiver
from viewbox.ingest.tests.test_dicom_import import write_copy
from viewbox.ingest.tests.test_dicom_receiver import (
    DATA,
    TEST_FILES,
    dcmtk,
    stored_files,
)
from viewbox.records.models import Instance

pytestmark = [pytest.mark.peer, pytest.mark.django_db(transaction=True)]

CALLING = "STORESCU"
CALLED = "VIEWBOX"
APPLICATION_CONTEXT = "1.2.840.10008.3.1.1.1"
VERIFICATION = "1.2.840.10008.1.1"
CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
MR_IMAGE = "1.2.840.10008.5.1.4.1.1.4"
EXPLICIT_LITTLE = "1.2.840.10008.1.2.1"
IMPLICIT_LITTLE = "1.2.840.10008.1.2"
REPOSITORY = Path(__file__).resolve().parents[3]
# Seconds that a test waits for a PDU before it fails.
READ_TIMEOUT_SECONDS = 10.0

# PDU types (PS3.8 section 9.3.1).
A_ASSOCIATE_RQ = 0x01
A_ASSOCIATE_AC = 0x02
A_ASSOCIATE_RJ = 0x03
P_DATA_TF = 0x04
A_RELEASE_RQ = 0x05
A_RELEASE_RP = 0x06
A_ABORT = 0x07

# Message Control Headers of a PDV (PS3.8 Annex E.2).
DATA_FRAGMENT = 0x00
COMMAND_FRAGMENT = 0x01
LAST_DATA_FRAGMENT = 0x02
LAST_COMMAND_FRAGMENT = 0x03

# An A-ABORT's last two bytes are its source and reason; the receiver is
# always the service provider (source 2). PS3.8 section 9.3.8.
ABORT_NOT_SPECIFIED = bytes([0, 0, 2, 0])
ABORT_UNRECOGNIZED_PDU = bytes([0, 0, 2, 1])
ABORT_UNEXPECTED_PDU = bytes([0, 0, 2, 2])
ABORT_INVALID_PARAMETER = bytes([0, 0, 2, 6])

# One Context Identifier per proposed context, odd as PS3.8 requires.
CT_CONTEXT = (1, CT_IMAGE, (EXPLICIT_LITTLE,))
ECHO_CONTEXT = (3, VERIFICATION, (IMPLICIT_LITTLE,))

type ProposedContext = tuple[int, str, tuple[str, ...]]


# PDUs, built by hand.


def pdu(pdu_type: int, body: bytes) -> bytes:
    return struct.pack(">BBL", pdu_type, 0, len(body)) + body


def item(item_type: int, value: bytes) -> bytes:
    return struct.pack(">BBH", item_type, 0, len(value)) + value


def associate_rq(
    contexts: tuple[ProposedContext, ...] = (CT_CONTEXT, ECHO_CONTEXT),
    *,
    calling: str = CALLING,
    protocol_version: int = 1,
    application_context: str = APPLICATION_CONTEXT,
    maximum_length: int = 16384,
) -> bytes:
    proposed = b"".join(
        item(
            0x20,
            bytes([context_id, 0, 0, 0])
            + (item(0x30, abstract_syntax.encode()) if abstract_syntax else b"")
            + b"".join(item(0x40, syntax.encode()) for syntax in transfer_syntaxes),
        )
        for context_id, abstract_syntax, transfer_syntaxes in contexts
    )
    user_information = item(
        0x50,
        item(0x51, struct.pack(">L", maximum_length)) + item(0x52, b"1.2.3.4.5"),
    )
    return pdu(
        A_ASSOCIATE_RQ,
        struct.pack(">HH", protocol_version, 0)
        + CALLED.encode().ljust(16)
        + calling.encode().ljust(16)
        + bytes(32)
        + item(0x10, application_context.encode())
        + proposed
        + user_information,
    )


def p_data(*pdvs: tuple[int, int, bytes]) -> bytes:
    """Encode a P-DATA-TF of (context id, message control header, fragment) PDVs."""
    return pdu(
        P_DATA_TF,
        b"".join(
            struct.pack(">LBB", len(fragment) + 2, context_id, control) + fragment
            for context_id, control, fragment in pdvs
        ),
    )


def release_rq() -> bytes:
    return pdu(A_RELEASE_RQ, bytes(4))


def abort_from_user() -> bytes:
    return pdu(A_ABORT, bytes(4))


# Command sets (PS3.7 section 9.3), Implicit VR Little Endian, by hand.


def element(tag: int, value: bytes, padding: bytes = b"\0") -> bytes:
    if len(value) % 2:
        value += padding
    return struct.pack("<HHL", 0, tag, len(value)) + value


def unsigned_short(value: int) -> bytes:
    return struct.pack("<H", value)


def command_set(*elements: bytes) -> bytes:
    encoded = b"".join(elements)
    return struct.pack("<HHLL", 0, 0x0000, 4, len(encoded)) + encoded


def c_echo_rq(message_id: int) -> bytes:
    return command_set(
        element(0x0002, VERIFICATION.encode()),
        element(0x0100, unsigned_short(0x0030)),
        element(0x0110, unsigned_short(message_id)),
        element(0x0800, unsigned_short(0x0101)),
    )


def c_store_rq(message_id: int, sop_class_uid: str, sop_instance_uid: str) -> bytes:
    return command_set(
        element(0x0002, sop_class_uid.encode()),
        element(0x0100, unsigned_short(0x0001)),
        element(0x0110, unsigned_short(message_id)),
        element(0x0700, unsigned_short(0)),  # Priority: medium
        element(0x0800, unsigned_short(0x0000)),  # A data set follows
        element(0x1000, sop_instance_uid.encode()),
    )


def c_find_rq(message_id: int, sop_class_uid: str) -> bytes:
    return command_set(
        element(0x0002, sop_class_uid.encode()),
        element(0x0100, unsigned_short(0x0020)),
        element(0x0110, unsigned_short(message_id)),
        element(0x0700, unsigned_short(0)),
        element(0x0800, unsigned_short(0x0000)),
    )


# (0008,0052) Query/Retrieve Level "STUDY", Explicit VR Little Endian.
FIND_IDENTIFIER = struct.pack("<HH2sH", 0x0008, 0x0052, b"CS", 6) + b"STUDY "

_US_FIELDS = {
    0x0100: "command",
    0x0120: "responding_to",
    0x0800: "data_set_type",
    0x0900: "status",
}
_TEXT_FIELDS = {
    0x0002: "sop_class",
    0x0902: "error_comment",
    0x1000: "sop_instance",
}


def response_fields(command: bytes) -> dict[str, int | str]:
    """Decode a response command set into named fields, checking its group length."""
    elements = {}
    offset = 0
    while offset < len(command):
        group, tag, length = struct.unpack_from("<HHL", command, offset)
        assert group == 0
        elements[tag] = command[offset + 8 : offset + 8 + length]
        offset += 8 + length
    assert offset == len(command)
    assert struct.unpack("<L", elements.pop(0x0000)) == (len(command) - 12,)
    fields: dict[str, int | str] = {}
    for tag, value in elements.items():
        if tag in _US_FIELDS:
            fields[_US_FIELDS[tag]] = struct.unpack("<H", value)[0]
        else:
            fields[_TEXT_FIELDS[tag]] = value.decode("ascii").rstrip("\0 ")
    return fields


def echo_response(message_id: int) -> dict[str, int | str]:
    return {
        "command": 0x8030,
        "responding_to": message_id,
        "data_set_type": 0x0101,
        "status": 0x0000,
        "sop_class": VERIFICATION,
    }


def store_response(
    message_id: int, status: int, sop_class_uid: str, sop_instance_uid: str
) -> dict[str, int | str]:
    return {
        "command": 0x8001,
        "responding_to": message_id,
        "data_set_type": 0x0101,
        "status": status,
        "sop_class": sop_class_uid,
        "sop_instance": sop_instance_uid,
    }


def items(data: bytes) -> list[tuple[int, bytes]]:
    found = []
    offset = 0
    while offset < len(data):
        item_type, _, length = struct.unpack_from(">BBH", data, offset)
        found.append((item_type, data[offset + 4 : offset + 4 + length]))
        offset += 4 + length
    assert offset == len(data)
    return found


@dataclass
class Accept:
    """The fields of an A-ASSOCIATE-AC that the tests check."""

    protocol_version: int
    called: str
    calling: str
    application_context: str
    # Context Identifier to (result, transfer syntax).
    contexts: dict[int, tuple[int, str]]
    # User information sub-item type to value.
    user_information: dict[int, bytes]


def parse_accept(body: bytes) -> Accept:
    accept = Accept(
        protocol_version=struct.unpack(">H", body[0:2])[0],
        called=body[4:20].decode(),
        calling=body[20:36].decode(),
        application_context="",
        contexts={},
        user_information={},
    )
    for item_type, value in items(body[68:]):
        if item_type == 0x10:
            accept.application_context = value.decode()
        elif item_type == 0x21:
            [(syntax_type, syntax)] = items(value[4:])
            assert syntax_type == 0x40
            accept.contexts[value[0]] = (value[2], syntax.decode())
        elif item_type == 0x50:
            accept.user_information = dict(items(value))
    return accept


@dataclass
class Response:
    fields: dict[str, int | str]
    context_id: int
    # Length of each P-DATA-TF that carried the response, after its header.
    pdu_lengths: list[int]


class Peer:
    """A raw TCP connection to the receiver."""

    def __init__(self, port: int) -> None:
        self.socket = socket.create_connection(
            ("127.0.0.1", port), timeout=READ_TIMEOUT_SECONDS
        )
        self.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def send(self, data: bytes) -> None:
        self.socket.sendall(data)

    def close(self) -> None:
        self.socket.close()

    def _read_exactly(self, length: int) -> bytes:
        data = bytearray()
        while len(data) < length:
            chunk = self.socket.recv(length - len(data))
            if not chunk:
                raise EOFError(f"closed after {len(data)} of {length} bytes")
            data += chunk
        return bytes(data)

    def read_pdu(self) -> tuple[int, bytes]:
        pdu_type, _, length = struct.unpack(">BBL", self._read_exactly(6))
        return pdu_type, self._read_exactly(length)

    def rest(self) -> list[tuple[int, bytes]]:
        """Read PDUs until the receiver closes the connection; return them.

        A reset counts as a close: the kernel resets a connection that the
        receiver closes while bytes that the test sent are still unread.
        """
        pdus = []
        try:
            while True:
                pdus.append(self.read_pdu())
        except (EOFError, ConnectionResetError):
            return pdus

    def associate(self, *contexts: ProposedContext, **options: int) -> Accept:
        self.send(associate_rq(contexts or (CT_CONTEXT, ECHO_CONTEXT), **options))
        pdu_type, body = self.read_pdu()
        assert pdu_type == A_ASSOCIATE_AC, (pdu_type, body)
        return parse_accept(body)

    def send_command(self, context_id: int, command: bytes) -> None:
        self.send(p_data((context_id, LAST_COMMAND_FRAGMENT, command)))

    def start_store(self, instance: "Sample") -> None:
        """Send a C-STORE-RQ on context 1 and the first 1,000 bytes of its data set."""
        self.send_command(
            1, c_store_rq(1, instance.sop_class_uid, instance.sop_instance_uid)
        )
        self.send(p_data((1, DATA_FRAGMENT, instance.data_set[:1000])))

    def send_data_set(
        self, context_id: int, data_set: bytes, fragment_length: int = 16000
    ) -> None:
        for start in range(0, len(data_set), fragment_length):
            last = start + fragment_length >= len(data_set)
            control = LAST_DATA_FRAGMENT if last else DATA_FRAGMENT
            fragment = data_set[start : start + fragment_length]
            self.send(p_data((context_id, control, fragment)))

    def read_response(self) -> Response:
        """Read the P-DATA-TF PDUs of one response command set."""
        command = bytearray()
        context_ids = set()
        pdu_lengths = []
        while True:
            pdu_type, body = self.read_pdu()
            assert pdu_type == P_DATA_TF, (pdu_type, body)
            pdu_lengths.append(len(body))
            offset = 0
            while offset < len(body):
                length, context_id, control = struct.unpack_from(">LBB", body, offset)
                assert control in (COMMAND_FRAGMENT, LAST_COMMAND_FRAGMENT)
                command += body[offset + 6 : offset + 4 + length]
                context_ids.add(context_id)
                offset += 4 + length
                if control == LAST_COMMAND_FRAGMENT:
                    assert offset == len(body)
                    [context_id] = context_ids
                    return Response(
                        response_fields(bytes(command)), context_id, pdu_lengths
                    )

    def echo(self, message_id: int, context_id: int = ECHO_CONTEXT[0]) -> Response:
        self.send_command(context_id, c_echo_rq(message_id))
        return self.read_response()


# Files and folders.


def data_set_of(path: Path) -> bytes:
    """Return the data set of a DICOM file, without its File Meta Information."""
    data = path.read_bytes()
    assert data[128:136] == b"DICM\x02\x00\x00\x00"
    group_length = struct.unpack_from("<L", data, 140)[0]
    return data[144 + group_length :]


@dataclass(frozen=True)
class Sample:
    path: Path
    sop_class_uid: str
    sop_instance_uid: str
    data_set: bytes


def sample(source: Path, target: Path) -> Sample:
    path = write_copy(source, target, "DEMO-1001", "ACC1001")
    ds = pydicom.dcmread(path)
    assert ds.file_meta.TransferSyntaxUID == EXPLICIT_LITTLE
    return Sample(path, ds.SOPClassUID, ds.SOPInstanceUID, data_set_of(path))


@pytest.fixture
def small_ct(tmp_path) -> Sample:
    """A 128 by 128 CT image of 39 kB in Explicit VR Little Endian."""
    return sample(TEST_FILES / "CT_small.dcm", tmp_path / "small.dcm")


@pytest.fixture
def large_ct(tmp_path) -> Sample:
    """A 512 by 512 CT image of 526 kB in Explicit VR Little Endian."""
    return sample(DATA / "693_UNCR.dcm", tmp_path / "large.dcm")


def staged(server: StorageServer) -> list[str]:
    return sorted(path.name for path in server.staging.iterdir())


def wait_for(condition: Callable[[], bool], seconds: float = 5.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


@contextmanager
def running_receiver(settings) -> Iterator[StorageServer]:
    settings.DICOM_CALLING_AE_TITLES = [CALLING]
    settings.DICOM_AE_TITLE = CALLED
    server = start_receiver("127.0.0.1", 0)
    try:
        yield server
    finally:
        if not server.stopping.is_set():
            server.shutdown()


@pytest.fixture(autouse=True)
def need_dcmtk() -> None:
    if shutil.which("storescu") is None or shutil.which("echoscu") is None:
        pytest.skip("dcmtk is not installed: apt-get install -y dcmtk")


@pytest.fixture
def server(settings) -> Iterator[StorageServer]:
    with running_receiver(settings) as started:
        yield started


@pytest.fixture
def connect(server) -> Iterator[Callable[[], Peer]]:
    """Open raw connections to the receiver, closed before it shuts down."""
    peers = []

    def open_peer() -> Peer:
        peer = Peer(server.server_address[1])
        peers.append(peer)
        return peer

    yield open_peer
    for peer in peers:
        peer.close()


def assert_nothing_kept(server: StorageServer, settings) -> None:
    assert Instance.objects.count() == 0
    assert stored_files(settings) == []
    assert staged(server) == [".lock"]


def assert_echo_answered(server: StorageServer) -> None:
    result = dcmtk("echoscu", "-aet", CALLING, "127.0.0.1", server.server_address[1])
    assert result.returncode == 0, result.stderr


# Association establishment.


class TestAssociationRejection:
    def test_unknown_calling_ae_is_rejected(self, connect) -> None:
        peer = connect()
        peer.send(associate_rq(calling="INTRUDER"))
        # Rejected permanent (1) by the service user (1): calling AE title
        # not recognized (3).
        assert peer.rest() == [(A_ASSOCIATE_RJ, bytes([0, 1, 1, 3]))]

    def test_wrong_application_context_is_rejected(self, connect) -> None:
        peer = connect()
        peer.send(associate_rq(application_context="1.2.840.10008.3.1.1.2"))
        # Application context name not supported (2).
        assert peer.rest() == [(A_ASSOCIATE_RJ, bytes([0, 1, 1, 2]))]

    def test_protocol_version_without_bit_0_is_rejected(self, connect) -> None:
        peer = connect()
        peer.send(associate_rq(protocol_version=2))
        # By the ACSE service provider (2): protocol version not supported (2).
        assert peer.rest() == [(A_ASSOCIATE_RJ, bytes([0, 1, 2, 2]))]


class TestAssociationLimit:
    @pytest.fixture
    def server(self, settings) -> Iterator[StorageServer]:
        settings.DICOM_MAX_ASSOCIATIONS = 2
        with running_receiver(settings) as started:
            yield started

    def test_association_over_limit_is_rejected_transiently(self, connect) -> None:
        first = connect()
        first.associate()
        second = connect()
        second.associate()
        third = connect()
        third.send(associate_rq())
        # Rejected transient (2) by the presentation service provider (3):
        # local limit exceeded (2).
        assert third.rest() == [(A_ASSOCIATE_RJ, bytes([0, 2, 3, 2]))]
        assert first.echo(1).fields == echo_response(1)
        assert second.echo(2).fields == echo_response(2)

    def test_connection_without_request_takes_no_place(self, connect) -> None:
        # The receiver accepts connections in order, so the silent one is
        # open before the first association request is read.
        silent = connect()
        first = connect()
        first.associate()
        second = connect()
        second.associate()
        assert first.echo(1).fields == echo_response(1)
        assert second.echo(2).fields == echo_response(2)
        silent.send(associate_rq())
        assert silent.rest() == [(A_ASSOCIATE_RJ, bytes([0, 2, 3, 2]))]

    def test_released_association_frees_its_place(self, connect) -> None:
        first, second = connect(), connect()
        first.associate()
        second.associate()
        first.send(release_rq())
        assert first.rest() == [(A_RELEASE_RP, bytes(4))]

        def accepted() -> bool:
            # The receiver removes the association just after it closes it.
            peer = connect()
            peer.send(associate_rq())
            return peer.read_pdu()[0] == A_ASSOCIATE_AC

        wait_for(accepted)


class TestPresentationContexts:
    def test_each_context_gets_its_own_result(self, connect) -> None:
        peer = connect()
        accept = peer.associate(
            CT_CONTEXT,
            (3, "1.2.3.4.5.6", (EXPLICIT_LITTLE,)),
            (5, MR_IMAGE, ("1.2.3.4.5.7", "1.2.3.4.5.8")),
            (7, VERIFICATION, (IMPLICIT_LITTLE, EXPLICIT_LITTLE)),
        )
        results = {key: result for key, (result, _) in accept.contexts.items()}
        # Accepted (0), abstract syntax not supported (3), transfer syntaxes
        # not supported (4).
        assert results == {1: 0, 3: 3, 5: 4, 7: 0}
        assert accept.contexts[1] == (0, EXPLICIT_LITTLE)
        # Explicit VR comes before Implicit VR in the receiver's preference.
        assert accept.contexts[7] == (0, EXPLICIT_LITTLE)
        assert peer.echo(9, context_id=7).fields == echo_response(9)

    def test_pdv_on_rejected_context_is_aborted(
        self, server, connect, settings
    ) -> None:
        peer = connect()
        peer.associate(CT_CONTEXT, (3, "1.2.3.4.5.6", (EXPLICIT_LITTLE,)))
        peer.send_command(3, c_echo_rq(1))
        assert peer.rest() == [(A_ABORT, ABORT_INVALID_PARAMETER)]
        assert_nothing_kept(server, settings)
        assert_echo_answered(server)

    def test_pdv_on_unproposed_context_is_aborted(
        self, server, connect, settings
    ) -> None:
        peer = connect()
        peer.associate()
        peer.send_command(9, c_echo_rq(1))
        assert peer.rest() == [(A_ABORT, ABORT_INVALID_PARAMETER)]
        assert_nothing_kept(server, settings)
        assert_echo_answered(server)


class TestAssociateAccept:
    def test_accept_announces_maximum_length_and_implementation(self, connect) -> None:
        accept = connect().associate()
        assert accept.protocol_version == 1
        assert (accept.called, accept.calling) == (
            CALLED.ljust(16),
            CALLING.ljust(16),
        )
        assert accept.application_context == APPLICATION_CONTEXT
        assert accept.user_information == {
            0x51: struct.pack(">L", MAXIMUM_PDU_LENGTH),
            0x52: IMPLEMENTATION_CLASS_UID.encode(),
            0x55: IMPLEMENTATION_VERSION_NAME.encode(),
        }

    def test_pynetdicom_sees_the_same_maximum_length(self, server) -> None:
        requestor = AE(ae_title=CALLING)
        requestor.add_requested_context(VERIFICATION)
        association = requestor.associate(
            "127.0.0.1", server.server_address[1], ae_title=CALLED
        )
        try:
            assert association.is_established
            assert association.acceptor.maximum_length == MAXIMUM_PDU_LENGTH
            assert association.acceptor.implementation_class_uid == (
                IMPLEMENTATION_CLASS_UID
            )
            status = association.send_c_echo()
            assert status.Status == 0x0000
        finally:
            association.release()


# Broken peers.


def with_item_length(request: bytes, offset: int, length: int) -> bytes:
    """Return an A-ASSOCIATE-RQ whose item at offset claims another length."""
    return request[: offset + 2] + struct.pack(">H", length) + request[offset + 4 :]


# Offset of the Application Context item in an A-ASSOCIATE-RQ: after the PDU
# header and the 68 fixed bytes.
APPLICATION_CONTEXT_OFFSET = 6 + 68
# Offset of the first Presentation Context item after it.
FIRST_CONTEXT_OFFSET = APPLICATION_CONTEXT_OFFSET + 4 + len(APPLICATION_CONTEXT)


MALFORMED_REQUESTS = {
    "an item running past its PDU": with_item_length(
        associate_rq(), APPLICATION_CONTEXT_OFFSET, 1000
    ),
    "a context item running past its PDU": with_item_length(
        associate_rq(), FIRST_CONTEXT_OFFSET, 4000
    ),
    "a PDU shorter than the fixed fields": pdu(A_ASSOCIATE_RQ, associate_rq()[6:50]),
    "a context without an abstract syntax": associate_rq(
        ((1, "", (EXPLICIT_LITTLE,)),)
    ),
    "an AE title that is not ASCII": associate_rq(calling="STÖRESCU"[:7]),
}


class TestBrokenAssociationRequest:
    def test_first_pdu_other_than_request_is_aborted(
        self, server, connect, settings
    ) -> None:
        peer = connect()
        peer.send(release_rq())
        assert peer.rest() == [(A_ABORT, ABORT_UNEXPECTED_PDU)]
        assert_nothing_kept(server, settings)
        assert_echo_answered(server)

    def test_oversized_pdu_is_aborted_unread(self, server, connect, settings) -> None:
        peer = connect()
        # Only the header is sent: the abort comes without waiting for the body.
        peer.send(struct.pack(">BBL", A_ASSOCIATE_RQ, 0, MAXIMUM_PDU_LENGTH + 1))
        assert peer.rest() == [(A_ABORT, ABORT_INVALID_PARAMETER)]
        assert_nothing_kept(server, settings)
        assert_echo_answered(server)

    def test_http_is_aborted(self, server, connect, settings) -> None:
        peer = connect()
        # "GET / " reads as a PDU of type 0x47 and 1.4 GB.
        peer.send(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        assert peer.rest() == [(A_ABORT, ABORT_INVALID_PARAMETER)]
        assert_nothing_kept(server, settings)
        assert_echo_answered(server)

    def test_small_pdu_of_unknown_type_is_aborted(
        self, server, connect, settings
    ) -> None:
        peer = connect()
        peer.send(struct.pack(">BBL", 0x5A, 0xA5, 26) + bytes(range(26)))
        assert peer.rest() == [(A_ABORT, ABORT_UNEXPECTED_PDU)]
        assert_nothing_kept(server, settings)
        assert_echo_answered(server)

    @pytest.mark.parametrize(
        "request_bytes", MALFORMED_REQUESTS.values(), ids=list(MALFORMED_REQUESTS)
    )
    def test_malformed_request_is_aborted(
        self, server, connect, settings, request_bytes
    ) -> None:
        peer = connect()
        peer.send(request_bytes)
        assert peer.rest() == [(A_ABORT, ABORT_INVALID_PARAMETER)]
        assert_nothing_kept(server, settings)
        assert_echo_answered(server)

    def test_request_cut_by_close_is_dropped(self, server, connect, settings) -> None:
        peer = connect()
        peer.send(associate_rq()[:100])
        peer.socket.shutdown(socket.SHUT_WR)
        assert peer.rest() == []
        assert_nothing_kept(server, settings)
        assert_echo_answered(server)


class TestBrokenMessages:
    def test_data_fragment_without_command_is_aborted(
        self, server, connect, settings, small_ct
    ) -> None:
        peer = connect()
        peer.associate()
        peer.send(p_data((1, LAST_DATA_FRAGMENT, small_ct.data_set[:1000])))
        assert peer.rest() == [(A_ABORT, ABORT_INVALID_PARAMETER)]
        assert_nothing_kept(server, settings)
        assert_echo_answered(server)

    def test_command_inside_data_set_is_aborted(
        self, server, connect, settings, small_ct
    ) -> None:
        peer = connect()
        peer.associate()
        peer.start_store(small_ct)
        peer.send_command(3, c_echo_rq(2))
        assert peer.rest() == [(A_ABORT, ABORT_INVALID_PARAMETER)]
        assert_nothing_kept(server, settings)
        assert_echo_answered(server)

    def test_pdv_longer_than_its_pdu_is_aborted(
        self, server, connect, settings
    ) -> None:
        peer = connect()
        peer.associate()
        command = c_echo_rq(1)
        peer.send(
            pdu(
                P_DATA_TF,
                struct.pack(">LBB", len(command) + 20, 3, LAST_COMMAND_FRAGMENT)
                + command,
            )
        )
        assert peer.rest() == [(A_ABORT, ABORT_INVALID_PARAMETER)]
        assert_nothing_kept(server, settings)
        assert_echo_answered(server)

    def test_command_without_command_field_is_aborted(
        self, server, connect, settings
    ) -> None:
        peer = connect()
        peer.associate()
        peer.send_command(3, command_set(element(0x0110, unsigned_short(1))))
        assert peer.rest() == [(A_ABORT, ABORT_INVALID_PARAMETER)]
        assert_nothing_kept(server, settings)
        assert_echo_answered(server)

    def test_oversized_p_data_is_aborted_unread(
        self, server, connect, settings
    ) -> None:
        peer = connect()
        peer.associate()
        peer.send(struct.pack(">BBL", P_DATA_TF, 0, MAXIMUM_PDU_LENGTH + 1))
        assert peer.rest() == [(A_ABORT, ABORT_INVALID_PARAMETER)]
        assert_nothing_kept(server, settings)
        assert_echo_answered(server)

    def test_second_association_request_is_aborted(
        self, server, connect, settings
    ) -> None:
        peer = connect()
        peer.associate()
        peer.send(associate_rq())
        assert peer.rest() == [(A_ABORT, ABORT_UNEXPECTED_PDU)]
        assert_nothing_kept(server, settings)

    def test_unknown_pdu_type_is_aborted(self, server, connect, settings) -> None:
        peer = connect()
        peer.associate()
        peer.send(pdu(0x09, bytes(4)))
        assert peer.rest() == [(A_ABORT, ABORT_UNRECOGNIZED_PDU)]
        assert_nothing_kept(server, settings)


class TestSilentPeer:
    @pytest.fixture(autouse=True)
    def short_timeout(self, monkeypatch) -> None:
        monkeypatch.setattr(dicom_network, "NETWORK_TIMEOUT_SECONDS", 0.3)
        monkeypatch.setattr(dicom_network, "ASSOCIATION_REQUEST_SECONDS", 0.3)

    def test_peer_without_request_is_aborted(self, server, connect, settings) -> None:
        peer = connect()
        started = time.monotonic()
        assert peer.rest() == [(A_ABORT, ABORT_NOT_SPECIFIED)]
        assert 0.3 <= time.monotonic() - started < 3
        assert_echo_answered(server)

    def test_peer_silent_inside_data_set_is_aborted(
        self, server, connect, settings, small_ct
    ) -> None:
        peer = connect()
        peer.associate()
        peer.start_store(small_ct)
        started = time.monotonic()
        assert peer.rest() == [(A_ABORT, ABORT_NOT_SPECIFIED)]
        # The receiver may start its last read just before the test's clock.
        assert 0.25 <= time.monotonic() - started < 3
        assert_nothing_kept(server, settings)
        assert_echo_answered(server)


# DIMSE messages.


class TestEcho:
    def test_echo_is_answered_with_success(self, connect) -> None:
        peer = connect()
        peer.associate()
        response = peer.echo(7)
        assert response.fields == echo_response(7)
        assert response.context_id == ECHO_CONTEXT[0]

    def test_echoscu_is_answered(self, server) -> None:
        result = dcmtk(
            "echoscu", "-v", "-aet", CALLING, "127.0.0.1", server.server_address[1]
        )
        assert result.returncode == 0, result.stderr
        assert "Received Echo Response (Success)" in result.stderr


def rejection_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    """Return the logged rejections, with the peer's port replaced by PORT."""
    return [
        re.sub(r"127\.0\.0\.1:\d+", "127.0.0.1:PORT", record.getMessage())
        for record in caplog.records
        if re.match(r"Rejected (a request|\d+ requests) ", record.getMessage())
    ]


class TestUnsupportedRequests:
    def test_sop_class_unlike_context_is_rejected(
        self, server, connect, settings, small_ct, caplog
    ) -> None:
        peer = connect()
        peer.associate()
        peer.send_command(1, c_store_rq(1, MR_IMAGE, small_ct.sop_instance_uid))
        peer.send_data_set(1, small_ct.data_set)
        response = peer.read_response()
        assert response.fields == {
            **store_response(1, 0x0122, MR_IMAGE, small_ct.sop_instance_uid),
            "error_comment": "The SOP Class differs from the context's",
        }
        assert_nothing_kept(server, settings)
        assert peer.echo(2).fields == echo_response(2)
        assert rejection_lines(caplog) == [
            "Rejected a request from STORESCU at 127.0.0.1:PORT with status 0x0122: "
            "the SOP Class differs from the context's"
        ]
        assert MR_IMAGE not in caplog.text
        assert small_ct.sop_instance_uid not in caplog.text

    def test_find_is_rejected_and_association_continues(
        self, server, connect, settings, small_ct, caplog
    ) -> None:
        peer = connect()
        peer.associate()
        peer.send_command(1, c_find_rq(5, CT_IMAGE))
        peer.send(p_data((1, LAST_DATA_FRAGMENT, FIND_IDENTIFIER)))
        response = peer.read_response()
        assert response.fields == {
            "command": 0x8020,
            "responding_to": 5,
            "data_set_type": 0x0101,
            "status": 0x0211,
        }
        assert peer.echo(6).fields == echo_response(6)
        assert rejection_lines(caplog) == [
            "Rejected a request from STORESCU at 127.0.0.1:PORT with status 0x0211: "
            "the receiver serves only C-STORE and C-ECHO requests"
        ]
        assert CT_IMAGE not in caplog.text
        peer.send_command(
            1, c_store_rq(7, small_ct.sop_class_uid, small_ct.sop_instance_uid)
        )
        peer.send_data_set(1, small_ct.data_set)
        assert peer.read_response().fields == store_response(
            7, 0x0000, small_ct.sop_class_uid, small_ct.sop_instance_uid
        )
        assert Instance.objects.get().sop_instance_uid == small_ct.sop_instance_uid

    def test_echo_with_data_set_is_rejected(
        self, server, connect, settings, caplog
    ) -> None:
        peer = connect()
        peer.associate()
        command = c_echo_rq(3).replace(
            element(0x0800, unsigned_short(0x0101)),
            element(0x0800, unsigned_short(0x0000)),
        )
        peer.send_command(3, command)
        peer.send(p_data((3, LAST_DATA_FRAGMENT, FIND_IDENTIFIER)))
        assert peer.read_response().fields == {
            "command": 0x8030,
            "responding_to": 3,
            "data_set_type": 0x0101,
            "status": 0x0211,
        }
        assert peer.echo(4).fields == echo_response(4)
        assert rejection_lines(caplog) == [
            "Rejected a request from STORESCU at 127.0.0.1:PORT with status 0x0211: "
            "the C-ECHO request has a data set"
        ]

    def test_store_without_data_set_is_rejected(
        self, server, connect, settings, small_ct, caplog
    ) -> None:
        peer = connect()
        peer.associate()
        command = c_store_rq(
            8, small_ct.sop_class_uid, small_ct.sop_instance_uid
        ).replace(
            element(0x0800, unsigned_short(0x0000)),
            element(0x0800, unsigned_short(0x0101)),
        )
        peer.send_command(1, command)
        assert peer.read_response().fields["status"] == 0x0211
        assert_nothing_kept(server, settings)
        assert rejection_lines(caplog) == [
            "Rejected a request from STORESCU at 127.0.0.1:PORT with status 0x0211: "
            "the C-STORE request has no data set"
        ]

    def test_repeated_rejections_are_counted(
        self, server, connect, small_ct, caplog
    ) -> None:
        peer = connect()
        peer.associate()
        for message_id in range(1, 6):
            peer.send_command(
                1, c_store_rq(message_id, MR_IMAGE, small_ct.sop_instance_uid)
            )
            peer.send_data_set(1, small_ct.data_set)
            assert peer.read_response().fields["status"] == 0x0122
        peer.send(release_rq())
        assert peer.rest() == [(A_RELEASE_RP, bytes(4))]
        wait_for(lambda: len(rejection_lines(caplog)) == 2)
        assert rejection_lines(caplog) == [
            "Rejected a request from STORESCU at 127.0.0.1:PORT with status 0x0122: "
            "the SOP Class differs from the context's",
            "Rejected 5 requests in all in the association from STORESCU at "
            "127.0.0.1:PORT",
        ]


class TestDataSetSizeLimit:
    @pytest.fixture
    def server(self, settings) -> Iterator[StorageServer]:
        settings.DICOM_MAX_FILE_BYTES = 100_000
        with running_receiver(settings) as started:
            yield started

    def test_oversized_data_set_fails_next_is_stored(
        self, server, settings, small_ct, large_ct
    ) -> None:
        requestor = AE(ae_title=CALLING)
        requestor.add_requested_context(CT_IMAGE, EXPLICIT_LITTLE)
        association = requestor.associate(
            "127.0.0.1", server.server_address[1], ae_title=CALLED
        )
        try:
            assert association.is_established
            too_large = association.send_c_store(large_ct.path)
            assert staged(server) == [".lock"]
            assert Instance.objects.count() == 0
            stored = association.send_c_store(small_ct.path)
        finally:
            association.release()
        assert too_large.Status == 0xC000
        assert too_large.ErrorComment == "Data set exceeds 100000 bytes"
        assert stored.Status == 0x0000
        assert Instance.objects.get().sop_instance_uid == small_ct.sop_instance_uid
        [kept] = stored_files(settings)
        assert data_set_of(kept) == small_ct.data_set
        assert staged(server) == [".lock"]


class TestResponseFragmentation:
    def test_echo_response_fits_64_byte_maximum(self, connect) -> None:
        peer = connect()
        peer.associate(maximum_length=64)
        response = peer.echo(1)
        assert response.fields == echo_response(1)
        # 78 bytes of command set, at most 58 per PDV.
        assert response.pdu_lengths == [64, 26]

    def test_store_response_fits_64_byte_maximum(self, connect, small_ct) -> None:
        peer = connect()
        peer.associate(maximum_length=64)
        peer.send_command(1, c_store_rq(1, MR_IMAGE, small_ct.sop_instance_uid))
        peer.send_data_set(1, small_ct.data_set)
        response = peer.read_response()
        assert response.fields == {
            **store_response(1, 0x0122, MR_IMAGE, small_ct.sop_instance_uid),
            "error_comment": "The SOP Class differs from the context's",
        }
        assert len(response.pdu_lengths) > 3
        assert max(response.pdu_lengths) == 64


class TestFragmentedStore:
    def test_store_in_small_pdus_is_unchanged(
        self, connect, settings, large_ct
    ) -> None:
        peer = connect()
        peer.associate()
        command = c_store_rq(1, large_ct.sop_class_uid, large_ct.sop_instance_uid)
        # The command in 10-byte fragments, one PDU each.
        for start in range(0, len(command), 10):
            last = start + 10 >= len(command)
            control = LAST_COMMAND_FRAGMENT if last else COMMAND_FRAGMENT
            peer.send(p_data((1, control, command[start : start + 10])))
        # The data set in fragments of 997 bytes, two to a PDU.
        data_set = large_ct.data_set
        fragments = [
            data_set[start : start + 997] for start in range(0, len(data_set), 997)
        ]
        for index in range(0, len(fragments), 2):
            pdvs = [
                (1, LAST_DATA_FRAGMENT if number == len(fragments) - 1 else 0, fragment)
                for number, fragment in enumerate(fragments[index : index + 2], index)
            ]
            peer.send(p_data(*pdvs))
        assert peer.read_response().fields == store_response(
            1, 0x0000, large_ct.sop_class_uid, large_ct.sop_instance_uid
        )
        [kept] = stored_files(settings)
        assert data_set_of(kept) == data_set
        assert (
            pydicom.dcmread(kept).PixelData == pydicom.dcmread(large_ct.path).PixelData
        )


# Release and abort.


class TestRelease:
    def test_release_request_gets_release_response(self, connect) -> None:
        peer = connect()
        peer.associate()
        peer.send(release_rq())
        assert peer.rest() == [(A_RELEASE_RP, bytes(4))]

    def test_release_inside_message_is_aborted(
        self, server, connect, settings, small_ct
    ) -> None:
        peer = connect()
        peer.associate()
        peer.start_store(small_ct)
        peer.send(release_rq())
        assert peer.rest() == [(A_ABORT, ABORT_UNEXPECTED_PDU)]
        assert_nothing_kept(server, settings)


class TestPeerAbort:
    def test_abort_inside_data_set_keeps_nothing(
        self, server, connect, settings, large_ct
    ) -> None:
        peer = connect()
        peer.associate()
        peer.send_command(
            1, c_store_rq(1, large_ct.sop_class_uid, large_ct.sop_instance_uid)
        )
        peer.send(p_data((1, DATA_FRAGMENT, large_ct.data_set[:100_000])))
        # The data set is being written to the staging folder.
        wait_for(lambda: len(staged(server)) == 2)
        peer.send(abort_from_user())
        assert peer.rest() == []
        assert_nothing_kept(server, settings)

        result = dcmtk("storescu", "127.0.0.1", server.server_address[1], large_ct.path)
        assert result.returncode == 0, result.stderr
        assert Instance.objects.get().sop_instance_uid == large_ct.sop_instance_uid


class TestShutdown:
    def test_shutdown_ends_an_idle_association_promptly(self, settings) -> None:
        with running_receiver(settings) as server:
            peer = Peer(server.server_address[1])
            peer.associate()
            assert peer.echo(1).fields == echo_response(1)
            started = time.monotonic()
            server.shutdown()
            assert time.monotonic() - started < 2
            assert peer.rest() == [(A_ABORT, ABORT_NOT_SPECIFIED)]
            assert not server.staging.exists()
            peer.close()
            with pytest.raises(ConnectionRefusedError):
                Peer(server.server_address[1])

    def test_shutdown_ends_a_connection_without_a_request_promptly(
        self, settings
    ) -> None:
        with running_receiver(settings) as server:
            silent = Peer(server.server_address[1])
            # Connections are accepted in order: once the next one has its
            # association, the silent one is accepted and waits for its request.
            peer = Peer(server.server_address[1])
            peer.associate()
            started = time.monotonic()
            server.shutdown()
            assert time.monotonic() - started < 2
            assert silent.rest() == []
            assert peer.rest() == [(A_ABORT, ABORT_NOT_SPECIFIED)]
            assert not server.staging.exists()
            silent.close()
            peer.close()


# Staging folders.


def staging_folders(incoming: Path) -> list[str]:
    """Return the names of the staging folders, without the lock file beside them."""
    return sorted(folder.name for folder in incoming.iterdir() if folder.is_dir())


class TestStaleStaging:
    def test_start_deletes_unlocked_keeps_locked_folders(self, settings) -> None:
        incoming = Path(settings.STORAGES["default"]["OPTIONS"]["location"]) / (
            "incoming"
        )
        stale = incoming / "4001-0badf00d"
        stale.mkdir(parents=True)
        (stale / ".lock").touch()
        (stale / "3.dcm").write_bytes(b"half a data set")
        unlocked = incoming / "4002-0badcafe"
        unlocked.mkdir()
        (unlocked / "1.dcm").write_bytes(b"a folder without a lock file")
        live = incoming / "4003-0c0ffee0"
        live.mkdir()
        (live / "2.dcm").write_bytes(b"a data set being received")
        descriptor = os.open(live / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX)
            with running_receiver(settings) as server:
                assert staging_folders(incoming) == sorted(
                    [live.name, server.staging.name]
                )
                assert server.staging.name.startswith(f"{os.getpid()}-")
                assert sorted(path.name for path in live.iterdir()) == [
                    ".lock",
                    "2.dcm",
                ]
            assert staging_folders(incoming) == [live.name]
        finally:
            os.close(descriptor)

    def test_starting_receivers_clear_one_at_a_time(self, settings) -> None:
        incoming = Path(settings.STORAGES["default"]["OPTIONS"]["location"]) / (
            "incoming"
        )
        stale = incoming / "4001-0badf00d"
        stale.mkdir(parents=True)
        (stale / ".lock").touch()
        descriptor = os.open(incoming / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(descriptor, fcntl.LOCK_EX)
        settings.DICOM_CALLING_AE_TITLES = [CALLING]
        started: list[StorageServer] = []
        starting = threading.Thread(
            target=lambda: started.append(start_receiver("127.0.0.1", 0))
        )
        try:
            starting.start()
            starting.join(0.5)
            # Another process clearing holds the lock: this one waits.
            assert starting.is_alive()
            assert stale.exists()
        finally:
            os.close(descriptor)
        starting.join(READ_TIMEOUT_SECONDS)
        [server] = started
        try:
            assert staging_folders(incoming) == [server.staging.name]
        finally:
            server.shutdown()


# The management command with several processes.


def free_loopback_port() -> int:
    with socket.create_server(("127.0.0.1", 0)) as probe:
        return int(probe.getsockname()[1])


def children_of(pid: int) -> list[int]:
    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            children.append(int(stat.parent.name))
    return children


def receiver_environment(data: Path) -> dict[str, str]:
    """Return the environment of a receiver command on a new SQLite database."""
    environment = {
        **{
            name: value
            for name, value in os.environ.items()
            if not name.startswith("VIEWBOX_")
        },
        "VIEWBOX_DATA_DIR": str(data),
        "VIEWBOX_DATABASE_URL": f"sqlite:///{data / 'db.sqlite3'}",
        "VIEWBOX_DICOM_CALLING_AE_TITLES": CALLING,
        "TCP_NODELAY": "1",
    }
    subprocess.run(
        [sys.executable, str(REPOSITORY / "manage.py"), "migrate", "-v0"],
        env=environment,
        check=True,
        timeout=120,
    )
    return environment


@contextmanager
def receiver_command(
    data: Path, environment: dict[str, str], processes: int, own_group: bool = False
) -> Iterator[tuple[subprocess.Popen[bytes], int, Path]]:
    """Start manage.py run_dicom_receiver, wait until it listens, and stop it after.

    With ``own_group``, the command leads a process group of its own, as in
    a terminal or under systemd, which signal the whole group.
    """
    port = free_loopback_port()
    log = data / "receiver.log"
    with log.open("wb") as output:
        receiver = subprocess.Popen(
            [
                *(sys.executable, str(REPOSITORY / "manage.py")),
                *("run_dicom_receiver", "--processes", str(processes)),
                *("--port", str(port)),
            ],
            env=environment,
            stdout=output,
            stderr=output,
            start_new_session=own_group,
        )
    try:
        wait_for(lambda: b"Listening on" in log.read_bytes(), 30)
        yield receiver, port, log
    finally:
        if receiver.poll() is None:
            receiver.terminate()
            try:
                receiver.wait(timeout=10)
            except subprocess.TimeoutExpired:
                receiver.kill()
                receiver.wait()


def is_running(pid: int) -> bool:
    """Return whether process pid exists and is not a zombie."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return False
    return fields[0] != "Z"


class TestReceiverProcesses:
    def test_two_processes_store_and_stop_on_sigterm(self, tmp_path) -> None:
        data = tmp_path / "data"
        data.mkdir()
        environment = receiver_environment(data)
        sent = {}
        for sender in range(3):
            for number in range(2):
                copy = sample(
                    TEST_FILES / "CT_small.dcm",
                    tmp_path / f"sender{sender}" / f"{number}.dcm",
                )
                sent[copy.sop_instance_uid] = copy

        with receiver_command(data, environment, 2) as (receiver, port, log):
            assert b"with 2 processes" in log.read_bytes()
            children = children_of(receiver.pid)
            assert len(children) == 2
            senders = [
                subprocess.Popen(
                    [
                        *("storescu", "-aec", CALLED, "127.0.0.1", str(port)),
                        *sorted(map(str, (tmp_path / f"sender{sender}").glob("*.dcm"))),
                    ],
                    env=environment,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                )
                for sender in range(3)
            ]
            for storescu in senders:
                output_text, _ = storescu.communicate(timeout=60)
                assert storescu.returncode == 0, output_text

            started = time.monotonic()
            receiver.send_signal(signal.SIGTERM)
            assert receiver.wait(timeout=10) == 0, log.read_text()
            assert time.monotonic() - started < 5
        assert [child for child in children if Path(f"/proc/{child}").exists()] == []
        with sqlite3.connect(data / "db.sqlite3") as database:
            stored = {
                uid
                for (uid,) in database.execute(
                    "SELECT sop_instance_uid FROM records_instance"
                )
            }
        assert stored == set(sent)
        assert staging_folders(data / "media" / "incoming") == []

    @pytest.mark.parametrize(
        ("stop_signal", "status"), [(signal.SIGKILL, -9), (signal.SIGTERM, 0)]
    )
    def test_process_stopped_at_start_is_replaced(
        self, tmp_path, stop_signal, status
    ) -> None:
        data = tmp_path / "data"
        data.mkdir()
        environment = receiver_environment(data)
        with receiver_command(data, environment, 1) as (receiver, port, log):
            wait_for(lambda: len(children_of(receiver.pid)) == 1, 10)
            [child] = children_of(receiver.pid)
            os.kill(child, stop_signal)

            wait_for(lambda: children_of(receiver.pid) not in ([], [child]), 10)
            echo = subprocess.run(
                ["echoscu", "-aec", CALLED, "-aet", CALLING, "127.0.0.1", str(port)],
                env=environment,
                capture_output=True,
                timeout=30,
            )
            assert receiver.poll() is None, log.read_text()
            assert echo.returncode == 0, echo.stderr
            assert f"ended with status {status}; starting another".encode() in (
                log.read_bytes()
            )

    @pytest.mark.parametrize("stop_signal", [signal.SIGINT, signal.SIGTERM])
    def test_group_signal_stops_every_process(self, tmp_path, stop_signal) -> None:
        # Ctrl-C and systemd signal the parent and its processes at once,
        # and the parent passes SIGTERM on: each process gets two signals.
        for attempt in range(3):
            data = tmp_path / f"data{attempt}"
            data.mkdir()
            environment = receiver_environment(data)
            with receiver_command(data, environment, 4, own_group=True) as (
                receiver,
                _,
                log,
            ):
                wait_for(lambda: log.read_bytes().count(b"listening on") == 4, 30)
                time.sleep(1)  # Let each process reach its wait for the stop flag.
                children = children_of(receiver.pid)

                os.killpg(receiver.pid, stop_signal)

                assert receiver.wait(timeout=15) == 0, log.read_text()
                assert not any(map(is_running, children))

    def test_killed_parent_takes_its_processes_along(self, tmp_path) -> None:
        data = tmp_path / "data"
        data.mkdir()
        environment = receiver_environment(data)
        with receiver_command(data, environment, 2) as (receiver, port, _):
            wait_for(lambda: len(children_of(receiver.pid)) == 2, 10)
            children = children_of(receiver.pid)

            receiver.kill()
            receiver.wait()

            wait_for(lambda: not any(map(is_running, children)), 10)
        with socket.socket() as probe:
            assert probe.connect_ex(("127.0.0.1", port)) != 0


# Hostile and broken peers that a fresh tester found.


class _FailingListener:
    """A listening socket whose first accept() fails as if out of descriptors."""

    def __init__(self, listener: socket.socket) -> None:
        self.listener = listener
        self.failures = 1

    def accept(self) -> tuple[socket.socket, object]:
        if self.failures:
            self.failures -= 1
            raise OSError(24, "Too many open files")
        return self.listener.accept()

    def __getattr__(self, name: str) -> object:
        return getattr(self.listener, name)


class TestHostilePeers:
    def test_failed_accept_does_not_stop_the_receiver(
        self, settings, monkeypatch, caplog
    ) -> None:
        listener = socket.create_server(("127.0.0.1", 0))
        failing = cast(socket.socket, _FailingListener(listener))
        settings.DICOM_CALLING_AE_TITLES = [CALLING]
        server = start_receiver("127.0.0.1", 0, failing)
        try:
            assert_echo_answered(server)
        finally:
            server.shutdown()
        assert "Could not accept a connection: [Errno 24] Too many open files" in (
            caplog.text
        )

    def test_stopped_server_leaves_the_shared_listener(self, settings, caplog) -> None:
        listener = socket.create_server(("127.0.0.1", 0))
        settings.DICOM_CALLING_AE_TITLES = [CALLING]
        # As two receiver processes that share the socket of their parent.
        first = start_receiver("127.0.0.1", 0, listener)
        second = start_receiver("127.0.0.1", 0, listener.dup())
        try:
            first.shutdown()
            for _ in range(3):
                assert_echo_answered(second)
        finally:
            second.shutdown()
        assert "Could not accept a connection" not in caplog.text

    def test_shared_listener_spreads_connections(self, settings, monkeypatch) -> None:
        # Long enough for the idle server to accept first on a busy machine.
        monkeypatch.setattr(dicom_network, "_BUSY_ACCEPT_DELAY_SECONDS", 1.0)
        listener = socket.create_server(("127.0.0.1", 0))
        settings.DICOM_CALLING_AE_TITLES = [CALLING]
        settings.DICOM_AE_TITLE = CALLED
        # As two receiver processes that share the socket of their parent.
        servers = [
            start_receiver("127.0.0.1", 0, listener),
            start_receiver("127.0.0.1", 0, listener.dup()),
        ]
        port = listener.getsockname()[1]
        peers = []
        try:
            for _ in range(2):
                peer = Peer(port)
                peers.append(peer)
                peer.associate()
                assert peer.echo(1).fields == echo_response(1)
            assert [len(server._associations) for server in servers] == [1, 1]
        finally:
            for peer in peers:
                peer.close()
            for server in servers:
                server.shutdown()

    def test_new_connection_closes_the_oldest_silent_one(
        self, settings, monkeypatch
    ) -> None:
        monkeypatch.setattr(dicom_network, "_UNASSOCIATED_CONNECTIONS", 2)
        with running_receiver(settings) as server:
            port = server.server_address[1]
            oldest, newer = Peer(port), Peer(port)
            wait_for(lambda: len(server._associations) == 2)
            sender = Peer(port)
            assert oldest.rest() == []
            sender.associate()
            assert sender.echo(1).fields == echo_response(1)
            newer.associate()
            assert newer.echo(2).fields == echo_response(2)
            for peer in (oldest, newer, sender):
                peer.close()

    def test_staging_failure_is_answered_with_out_of_resources(
        self, server, connect, settings, small_ct
    ) -> None:
        shutil.rmtree(server.staging)  # As when the disk is gone or full.
        peer = connect()
        peer.associate()
        peer.send_command(
            1, c_store_rq(1, small_ct.sop_class_uid, small_ct.sop_instance_uid)
        )
        peer.send_data_set(1, small_ct.data_set)
        assert peer.read_response().fields == {
            **store_response(
                1, 0xA700, small_ct.sop_class_uid, small_ct.sop_instance_uid
            ),
            "error_comment": "Storage failed; retry later",
        }
        assert peer.echo(2).fields == echo_response(2)
        assert Instance.objects.count() == 0
        server.staging.mkdir()

    def test_peer_sending_its_request_slowly_is_aborted(
        self, server, connect, monkeypatch
    ) -> None:
        monkeypatch.setattr(dicom_network, "ASSOCIATION_REQUEST_SECONDS", 0.5)
        peer = connect()
        request = associate_rq()
        started = time.monotonic()
        with pytest.raises(OSError):
            # One byte every 0.1 s would take minutes: the deadline ends it.
            for byte in request:
                peer.send(bytes([byte]))
                time.sleep(0.1)
        assert time.monotonic() - started < 3
        assert_echo_answered(server)

    def test_ae_title_with_newline_cannot_forge_log_lines(
        self, connect, caplog
    ) -> None:
        peer = connect()
        peer.send(associate_rq(calling="EVIL\nINFO fake"))
        assert peer.rest() == [(A_ASSOCIATE_RJ, bytes([0, 1, 1, 3]))]
        assert "Rejected an association from EVIL?INFO fake at 127.0.0.1" in (
            caplog.text
        )
        assert "calling AE title not recognized" in caplog.text
        assert not any(
            line.startswith("INFO fake") for line in caplog.text.splitlines()
        )

    def test_request_without_acceptable_context_is_rejected(self, connect) -> None:
        peer = connect()
        peer.send(associate_rq(contexts=((1, "1.2.3.4", (EXPLICIT_LITTLE,)),)))
        # Rejected permanent (1) by the service user (1): no reason given (1).
        assert peer.rest() == [(A_ASSOCIATE_RJ, bytes([0, 1, 1, 1]))]

    def test_store_on_verification_context_is_rejected(
        self, server, connect, settings, small_ct
    ) -> None:
        peer = connect()
        peer.associate()
        context_id = ECHO_CONTEXT[0]
        peer.send_command(
            context_id, c_store_rq(1, VERIFICATION, small_ct.sop_instance_uid)
        )
        peer.send_data_set(context_id, small_ct.data_set)
        assert peer.read_response().fields == {
            **store_response(1, 0x0122, VERIFICATION, small_ct.sop_instance_uid),
            "error_comment": "The Verification context takes no C-STORE",
        }
        assert_nothing_kept(server, settings)

    def test_shutdown_closes_a_stalled_association_at_its_deadline(
        self, settings, monkeypatch, large_ct
    ) -> None:
        monkeypatch.setattr(dicom_network, "_SHUTDOWN_WAIT_SECONDS", 0.5)
        with running_receiver(settings) as server:
            peer = Peer(server.server_address[1])
            peer.associate()
            peer.send_command(
                1, c_store_rq(1, large_ct.sop_class_uid, large_ct.sop_instance_uid)
            )
            peer.send(p_data((1, DATA_FRAGMENT, large_ct.data_set[:100_000])))
            wait_for(lambda: len(staged(server)) == 2)
            started = time.monotonic()
            server.shutdown()
            assert time.monotonic() - started < 3
            assert not server.staging.exists()
            peer.close()
        assert Instance.objects.count() == 0


class _LockedCursor:
    """A cursor whose statements fail as SQLite's do while another process writes."""

    def __enter__(self) -> "_LockedCursor":
        return self

    def __exit__(self, *exc_info: object) -> None:
        return None

    def execute(self, sql: str) -> None:
        raise OperationalError("database is locked")


class TestWriteAheadLog:
    def test_switch_is_retried_while_locked(self, monkeypatch) -> None:
        if connection.vendor != "sqlite":
            pytest.skip("WAL mode is SQLite's")
        attempts = []
        real_cursor = connection.cursor

        def locked_twice() -> object:
            attempts.append(True)
            return _LockedCursor() if len(attempts) <= 2 else real_cursor()

        monkeypatch.setattr(run_dicom_receiver, "time", _FastClock())
        monkeypatch.setattr(connection, "cursor", locked_twice)
        run_dicom_receiver._use_write_ahead_log()
        assert len(attempts) == 3

    def test_long_lock_fails_with_reason(self, monkeypatch) -> None:
        monkeypatch.setattr(run_dicom_receiver, "time", _FastClock())
        monkeypatch.setattr(connection, "cursor", _LockedCursor)
        with pytest.raises(CommandError, match="could not switch the SQLite"):
            run_dicom_receiver._use_write_ahead_log()


class _FastClock:
    """A clock whose sleep() moves time on at once, for retry loops."""

    def __init__(self) -> None:
        self.now = 0.0

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds
