"""A DICOM Storage SCP: associations, C-ECHO and C-STORE over TCP.

Each association runs in its own thread, which reads whole PDUs with
blocking calls and writes the data set fragments of a C-STORE request to a
file as they arrive. Once the last fragment is in, the ``store`` callback
gets the file and returns the status to send.
Nothing of the data set is decoded here.

pynetdicom, which the receiver used before, hands every PDU from a reading
thread to the association's thread through queues that it polls. Storing
nothing, it took about 3.7 ms per 0.53 MB instance on one association,
which is longer than a crash-safe store of the file takes
(bench/README.md).
"""

import ctypes
import logging
import os
import select
import socket
import struct
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Final, cast

from viewbox.ingest import dicom_pdu as pdu

logger = logging.getLogger(__name__)

# The receiver's Implementation Class UID, a UUID-derived UID (PS3.5 section
# B.2), and its Implementation Version Name (at most 16 characters).
IMPLEMENTATION_CLASS_UID: Final = "2.25.82459678040029757770063549721017266591"
IMPLEMENTATION_VERSION_NAME: Final = "VIEWBOX_1"

# Largest P-DATA-TF PDU announced to senders, in bytes. An established
# association keeps a buffer of this size.
MAXIMUM_PDU_LENGTH: Final = 1024 * 1024
# Largest A-ASSOCIATE-RQ accepted, in bytes. One that proposes every storage
# class with every transfer syntax is about 80 KiB.
_MAXIMUM_REQUEST_LENGTH: Final = 256 * 1024
# Largest command set accepted. Commands are a few hundred bytes.
_MAXIMUM_COMMAND_LENGTH: Final = 64 * 1024
# Seconds within which a new connection must send its whole A-ASSOCIATE-RQ
# (the ARTIM timer of PS3.8 section 9.1.5).
ASSOCIATION_REQUEST_SECONDS: Final = 10.0
# Seconds that an association may wait before it starts its next PDU, and
# within which each PDU must arrive whole once started.
NETWORK_TIMEOUT_SECONDS: Final = 60.0
# Connections without an association yet that are served at once. A new
# one beyond them closes the oldest, and connections beyond the associations
# and twice this number are closed at once.
_UNASSOCIATED_CONNECTIONS: Final = 16
# Seconds that shutdown() waits for all associations to finish their request
# before it closes their connections.
_SHUTDOWN_WAIT_SECONDS: Final = 30.0
# Milliseconds that the accepting thread waits for a connection before it
# looks whether the server is stopping.
_ACCEPT_POLL_MILLISECONDS: Final = 200
# Seconds that a receiver process sharing its listener waits, for each
# connection it serves, before it accepts another one, so that an idle
# process takes it first. Two associations in one process take turns on
# Python's interpreter lock while another process may have none.
_BUSY_ACCEPT_DELAY_SECONDS: Final = 0.003
# Seconds between two log lines about refused connections or accept errors.
_LOG_INTERVAL_SECONDS: Final = 60.0

# The Verification SOP Class (PS3.4 Annex A), which takes C-ECHO only.
VERIFICATION_SOP_CLASS: Final = "1.2.840.10008.1.1"

# Status codes (PS3.7 Annex C and PS3.4 Annex B.2.3).
STATUS_SUCCESS: Final = 0x0000
STATUS_SOP_CLASS_NOT_SUPPORTED: Final = 0x0122
STATUS_UNRECOGNIZED_OPERATION: Final = 0x0211
STATUS_OUT_OF_RESOURCES: Final = 0xA700
STATUS_DATASET_DOES_NOT_MATCH_SOP_CLASS: Final = 0xA900
STATUS_CANNOT_UNDERSTAND: Final = 0xC000

_META_ELEMENT = struct.Struct("<HH2sH")


def _load_sync_file_range() -> Callable[[int, int, int, int], int] | None:
    """Return Linux's sync_file_range(2), which Python's os module lacks."""
    try:
        function = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (AttributeError, OSError):
        return None
    function.argtypes = (ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint)
    function.restype = ctypes.c_int
    return cast(Callable[[int, int, int, int], int], function)


_sync_file_range: Final = _load_sync_file_range()
_SYNC_FILE_RANGE_WRITE: Final = 2


@dataclass(frozen=True)
class ReceivedDataSet:
    """A C-STORE data set written to a file, with its File Meta Information."""

    path: Path
    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax_uid: str
    calling_ae_title: str
    size: int


@dataclass(frozen=True)
class StoreResult:
    status: int
    error_comment: str = ""


type StoreCallback = Callable[[ReceivedDataSet], StoreResult]


def _meta_element(element: int, vr: bytes, value: bytes, padding: bytes) -> bytes:
    if len(value) % 2:
        value += padding
    return _META_ELEMENT.pack(2, element, vr, len(value)) + value


def file_meta_information(
    sop_class_uid: str, sop_instance_uid: str, transfer_syntax_uid: str
) -> bytes:
    """Encode the preamble, prefix and File Meta Information of PS3.10 section 7.1.

    Nothing of the sender goes into it, so that the same data set received
    twice gives the same file, which the receiver then takes for a resend.
    """
    elements = (
        # (0002,0001) File Meta Information Version is OB, with a long length.
        struct.pack("<HH2sHL", 2, 0x0001, b"OB", 0, 2)
        + b"\x00\x01"
        + _meta_element(0x0002, b"UI", sop_class_uid.encode(), b"\0")
        + _meta_element(0x0003, b"UI", sop_instance_uid.encode(), b"\0")
        + _meta_element(0x0010, b"UI", transfer_syntax_uid.encode(), b"\0")
        + _meta_element(0x0012, b"UI", IMPLEMENTATION_CLASS_UID.encode(), b"\0")
        + _meta_element(0x0013, b"SH", IMPLEMENTATION_VERSION_NAME.encode(), b" ")
    )
    group_length = _META_ELEMENT.pack(2, 0x0000, b"UL", 4) + struct.pack(
        "<L", len(elements)
    )
    return bytes(128) + b"DICM" + group_length + elements


# A-ASSOCIATE-RJ result, source and reason (PS3.8 section 9.3.4), and words
# for the log.
_NO_CONTEXT_ACCEPTED: Final = (
    pdu.REJECTED_PERMANENT,
    pdu.SOURCE_SERVICE_USER,
    pdu.REASON_NO_REASON_GIVEN,
)
_LOCAL_LIMIT_EXCEEDED: Final = (
    pdu.REJECTED_TRANSIENT,
    pdu.SOURCE_SERVICE_PROVIDER_PRESENTATION,
    pdu.REASON_LOCAL_LIMIT_EXCEEDED,
)
_REJECTION_REASONS: Final = {
    _NO_CONTEXT_ACCEPTED: "no presentation context was accepted",
    _LOCAL_LIMIT_EXCEEDED: "as many associations as allowed are open",
    (
        pdu.REJECTED_PERMANENT,
        pdu.SOURCE_SERVICE_USER,
        pdu.REASON_CALLING_AE_NOT_RECOGNIZED,
    ): "calling AE title not recognized",
    (
        pdu.REJECTED_PERMANENT,
        pdu.SOURCE_SERVICE_USER,
        pdu.REASON_APPLICATION_CONTEXT_NOT_SUPPORTED,
    ): "application context name not supported",
    (
        pdu.REJECTED_PERMANENT,
        pdu.SOURCE_SERVICE_PROVIDER_ACSE,
        pdu.REASON_PROTOCOL_VERSION_NOT_SUPPORTED,
    ): "protocol version not supported",
}


def _store_response(
    message_id: int, sop_class_uid: str, sop_instance_uid: str, result: StoreResult
) -> bytes:
    return pdu.encode_response(
        pdu.C_STORE_RQ | pdu.RESPONSE_BIT,
        message_id,
        result.status,
        sop_class_uid=sop_class_uid,
        sop_instance_uid=sop_instance_uid,
        error_comment=result.error_comment,
    )


class _Aborted(Exception):
    """The association ends without a release: the peer is gone or broke a rule."""


class _Closed(_Aborted):
    """The connection was closed: by the peer, or for reading by shutdown()."""


@dataclass
class _Context:
    abstract_syntax: str
    transfer_syntax: str


class _PendingStore:
    """A C-STORE request whose data set is being written to a file."""

    def __init__(
        self,
        path: Path,
        context_id: int,
        message_id: int,
        sop_class_uid: str,
        sop_instance_uid: str,
        transfer_syntax_uid: str,
        maximum_size: int,
    ) -> None:
        self.path = path
        self.context_id = context_id
        self.message_id = message_id
        self.sop_class_uid = sop_class_uid
        self.sop_instance_uid = sop_instance_uid
        self.transfer_syntax_uid = transfer_syntax_uid
        self.maximum_size = maximum_size
        self.too_large = False
        meta = file_meta_information(
            sop_class_uid, sop_instance_uid, transfer_syntax_uid
        )
        self.size = len(meta)
        self.descriptor = os.open(
            path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600
        )
        try:
            self._write(meta)
        except OSError:
            self.discard()
            raise

    def _write(self, data: bytes | memoryview) -> None:
        written = 0
        while written < len(data):
            written += os.write(self.descriptor, data[written:])

    def add(self, fragment: memoryview) -> None:
        if self.too_large:
            return
        self.size += len(fragment)
        if self.size > self.maximum_size:
            # The rest of the data set is read and dropped, so that the
            # association can go on with the sender's next request.
            self.too_large = True
            self.discard()
            return
        self._write(fragment)

    def start_writeback(self) -> None:
        """Have the kernel start writing the file to disk, without waiting.

        The receiver checks the file's header meanwhile, and its fsync then
        waits for less.
        """
        if self.descriptor >= 0 and _sync_file_range is not None:
            _sync_file_range(self.descriptor, 0, 0, _SYNC_FILE_RANGE_WRITE)

    def close(self) -> None:
        if self.descriptor >= 0:
            os.close(self.descriptor)
            self.descriptor = -1

    def discard(self) -> None:
        self.close()
        self.path.unlink(missing_ok=True)


class _Association:
    """One peer's connection, from A-ASSOCIATE-RQ to release or abort."""

    def __init__(self, server: "StorageServer", peer: socket.socket) -> None:
        self.server = server
        self.peer = peer
        self.calling_ae_title = ""
        self.contexts: dict[int, _Context] = {}
        self.peer_maximum_length = 0
        self.address = server.peer_address(peer)
        self.accepted_at = time.monotonic()
        # Set when the server closes it to make room for newer connections.
        self.evicted = False
        # Allocated once the association is established, so that connections
        # that never associate cost no large buffer.
        self.view = memoryview(bytearray())
        self.header = bytearray(pdu.PDU_HEADER_LENGTH)
        self.command = bytearray()
        self.command_context_id = 0
        self.pending: _PendingStore | None = None
        # A response decided before the data set arrived: the data set is
        # read and dropped, then this is sent.
        self.refusal: tuple[int, bytes] | None = None
        # Requests rejected with status 0x0122 or 0x0211. Only the first is
        # logged at once, so that a peer sending them in a loop cannot flood
        # the log.
        self.rejected_requests = 0
        self.lock = threading.Lock()
        # True while the association waits for the first PDU of a message,
        # when shutdown() may close it without losing a request.
        self.idle = False

    # Reading.

    def _read_into(self, view: memoryview, deadline: float) -> None:
        """Fill view from the peer; raise TimeoutError after deadline.

        A deadline for the whole read, instead of a timeout for each call,
        stops a peer that sends one byte now and then from holding on.
        """
        received = 0
        while received < len(view):
            self.peer.settimeout(max(deadline - time.monotonic(), 0.001))
            count = self.peer.recv_into(view[received:])
            if count == 0:
                raise _Closed("the peer closed the connection")
            received += count

    def _read_pdu(self, deadline: float | None = None) -> tuple[int, memoryview]:
        """Read one PDU, whole by deadline when one is given.

        Without a deadline, its header must come within NETWORK_TIMEOUT_SECONDS
        and then its body within as long again.
        """
        header_deadline = deadline or time.monotonic() + NETWORK_TIMEOUT_SECONDS
        self._read_into(memoryview(self.header), header_deadline)
        pdu_type, length = pdu.decode_pdu_header(self.header)
        if not self.contexts and length > _MAXIMUM_REQUEST_LENGTH:
            raise pdu.PduError(f"a PDU of {length} bytes before the association")
        if length > MAXIMUM_PDU_LENGTH:
            self._abort(pdu.ABORT_REASON_INVALID_PARAMETER_VALUE)
            raise _Aborted(f"a PDU of {length} bytes exceeds the maximum")
        body = self.view[:length] if self.contexts else memoryview(bytearray(length))
        self._read_into(body, deadline or time.monotonic() + NETWORK_TIMEOUT_SECONDS)
        return pdu_type, body

    # Writing.

    def _send(self, data: bytes) -> None:
        self.peer.sendall(data)

    def _abort(self, reason: int) -> None:
        try:
            self._send(pdu.encode_abort(reason))
        except OSError:
            pass

    def _respond(self, context_id: int, command: bytes) -> None:
        for data in pdu.encode_p_data(context_id, command, self.peer_maximum_length):
            self._send(data)

    # Association establishment.

    def _negotiate(self, body: memoryview) -> bool:
        """Send the response to an A-ASSOCIATE-RQ; return True when accepted."""
        request = pdu.decode_associate_request(body)
        self.calling_ae_title = request.calling_ae_title
        contexts = {}
        results = []
        for proposed in request.contexts:
            result, transfer_syntax = self.server.negotiate_context(proposed)
            if result == pdu.CONTEXT_ACCEPTED:
                contexts[proposed.context_id] = _Context(
                    proposed.abstract_syntax, transfer_syntax
                )
            results.append((proposed.context_id, result, transfer_syntax))

        rejection = self.server.rejection_reason(request)
        if rejection is None and not contexts:
            rejection = _NO_CONTEXT_ACCEPTED
        if rejection is None and not self.server.admit(self):
            rejection = _LOCAL_LIMIT_EXCEEDED
        if rejection is not None:
            self._send(pdu.encode_associate_reject(*rejection))
            logger.warning(
                "Rejected an association from %s at %s: %s",
                request.calling_ae_title,
                self.address,
                _REJECTION_REASONS[rejection],
            )
            return False

        self.contexts = contexts
        self.view = memoryview(bytearray(MAXIMUM_PDU_LENGTH))
        self.peer_maximum_length = request.maximum_length
        self._send(
            pdu.encode_associate_accept(
                request,
                results,
                maximum_length=MAXIMUM_PDU_LENGTH,
                implementation_class_uid=IMPLEMENTATION_CLASS_UID,
                implementation_version_name=IMPLEMENTATION_VERSION_NAME,
            )
        )
        logger.info(
            "Accepted an association from %s at %s",
            request.calling_ae_title,
            self.address,
        )
        return True

    # Messages.

    def _start_message(self, context_id: int) -> None:
        elements = pdu.decode_command(self.command)
        self.command.clear()
        command_field = pdu.command_unsigned_short(elements, pdu.COMMAND_FIELD)
        if command_field == pdu.C_CANCEL_RQ:
            return  # A C-STORE cannot be cancelled, and a cancel has no response.
        message_id = pdu.command_unsigned_short(elements, pdu.MESSAGE_ID)
        has_data_set = (
            pdu.command_unsigned_short(elements, pdu.COMMAND_DATA_SET_TYPE)
            != pdu.NO_DATA_SET
        )
        sop_class_uid = pdu.command_uid(elements, pdu.AFFECTED_SOP_CLASS_UID)
        sop_instance_uid = pdu.command_uid(elements, pdu.AFFECTED_SOP_INSTANCE_UID)
        context = self.contexts[context_id]

        if command_field == pdu.C_ECHO_RQ and not has_data_set:
            response = pdu.encode_response(
                command_field | pdu.RESPONSE_BIT,
                message_id,
                STATUS_SUCCESS,
                sop_class_uid=sop_class_uid,
            )
            self._respond(context_id, response)
            return
        if command_field != pdu.C_STORE_RQ or not has_data_set:
            if command_field == pdu.C_STORE_RQ:
                reason = "the C-STORE request has no data set"
            elif command_field == pdu.C_ECHO_RQ:
                reason = "the C-ECHO request has a data set"
            else:
                reason = "the receiver serves only C-STORE and C-ECHO requests"
            self._log_rejection(STATUS_UNRECOGNIZED_OPERATION, reason)
            self._refuse(
                context_id,
                pdu.encode_response(
                    (command_field | pdu.RESPONSE_BIT) & 0xFFFF,
                    message_id,
                    STATUS_UNRECOGNIZED_OPERATION,
                ),
                has_data_set,
            )
            return
        refusal_comment = ""
        if context.abstract_syntax == VERIFICATION_SOP_CLASS:
            refusal_comment = "The Verification context takes no C-STORE"
        elif sop_class_uid != context.abstract_syntax:
            refusal_comment = "The SOP Class differs from the context's"
        if refusal_comment:
            self._log_rejection(
                STATUS_SOP_CLASS_NOT_SUPPORTED,
                refusal_comment[0].lower() + refusal_comment[1:],
            )
            self._refuse(
                context_id,
                _store_response(
                    message_id,
                    sop_class_uid,
                    sop_instance_uid,
                    StoreResult(STATUS_SOP_CLASS_NOT_SUPPORTED, refusal_comment),
                ),
                has_data_set,
            )
            return
        try:
            self.pending = _PendingStore(
                self.server.new_staging_path(),
                context_id,
                message_id,
                sop_class_uid,
                sop_instance_uid,
                context.transfer_syntax,
                self.server.maximum_file_bytes,
            )
        except OSError as error:
            # A full disk or no file descriptor left: not the sender's fault,
            # and it may send again later.
            logger.error(
                "Could not create a staging file for a C-STORE data set from %s: %s",
                self.calling_ae_title,
                error,
            )
            self._refuse(
                context_id,
                _store_response(
                    message_id,
                    sop_class_uid,
                    sop_instance_uid,
                    StoreResult(STATUS_OUT_OF_RESOURCES, "Storage failed; retry later"),
                ),
                has_data_set,
            )

    def _log_rejection(self, status: int, reason: str) -> None:
        """Log the association's first rejected request, and count every one.

        The reason names no UID or other value from the request. run() logs
        the count when the association ends.
        """
        self.rejected_requests += 1
        if self.rejected_requests == 1:
            logger.warning(
                "Rejected a request from %s at %s with status 0x%04X: %s",
                self.calling_ae_title,
                self.address,
                status,
                reason,
            )

    def _refuse(self, context_id: int, response: bytes, has_data_set: bool) -> None:
        if has_data_set:
            self.refusal = (context_id, response)
        else:
            self._respond(context_id, response)

    def _finish_store(self, pending: _PendingStore) -> None:
        pending.start_writeback()
        pending.close()
        if pending.too_large:
            logger.warning(
                "Dropped a C-STORE data set from %s: larger than %d bytes",
                self.calling_ae_title,
                pending.maximum_size,
            )
            result = StoreResult(
                STATUS_CANNOT_UNDERSTAND,
                f"Data set exceeds {pending.maximum_size} bytes",
            )
        else:
            result = self.server.call_store(
                ReceivedDataSet(
                    path=pending.path,
                    sop_class_uid=pending.sop_class_uid,
                    sop_instance_uid=pending.sop_instance_uid,
                    transfer_syntax_uid=pending.transfer_syntax_uid,
                    calling_ae_title=self.calling_ae_title,
                    size=pending.size,
                )
            )
            # The callback links the file to its final name or quarantines it:
            # the staging name is not needed in either case.
            pending.path.unlink(missing_ok=True)
        response = _store_response(
            pending.message_id,
            pending.sop_class_uid,
            pending.sop_instance_uid,
            result,
        )
        self._respond(pending.context_id, response)

    def _receive_p_data(self, body: memoryview) -> bool:
        """Handle the PDVs of one P-DATA-TF; return whether a message ended."""
        offset = 0
        ended = False
        while offset < len(body):
            length, context_id, control = pdu.decode_pdv_header(body, offset)
            fragment = body[offset + pdu.PDV_HEADER_LENGTH :][:length]
            offset += pdu.PDV_HEADER_LENGTH + length
            if context_id not in self.contexts:
                raise pdu.PduError(f"PDV on presentation context {context_id}")
            last = bool(control & pdu.PDV_LAST_FRAGMENT)

            if control & pdu.PDV_COMMAND:
                if self.pending is not None or self.refusal is not None:
                    raise pdu.PduError("A command fragment came inside a data set")
                if len(self.command) + length > _MAXIMUM_COMMAND_LENGTH:
                    raise pdu.PduError("A command set exceeds 64 KiB")
                if self.command and context_id != self.command_context_id:
                    raise pdu.PduError("A command set changed context")
                self.command += fragment
                self.command_context_id = context_id
                if last:
                    self._start_message(context_id)
                    ended = self.pending is None and self.refusal is None
                continue

            if self.pending is not None and context_id == self.pending.context_id:
                self.pending.add(fragment)
                if last:
                    pending, self.pending = self.pending, None
                    self._finish_store(pending)
                    ended = True
            elif self.refusal is not None and context_id == self.refusal[0]:
                if last:
                    refused_context, response = self.refusal
                    self.refusal = None
                    self._respond(refused_context, response)
                    ended = True
            else:
                raise pdu.PduError("A data set fragment came without its command")
        return ended

    def run(self) -> None:
        try:
            self.peer.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            first = self._read_when_idle(time.monotonic() + ASSOCIATION_REQUEST_SECONDS)
            if first is None:
                return
            pdu_type, body = first
            if pdu_type != pdu.A_ASSOCIATE_RQ:
                self._abort(pdu.ABORT_REASON_UNEXPECTED_PDU)
                raise _Aborted(f"its first PDU has type 0x{pdu_type:02X}")
            if self._negotiate(body):
                self._serve()
        except pdu.PduError as error:
            logger.warning("Aborted %s: %s", self._description(), error)
            self._abort(pdu.ABORT_REASON_INVALID_PARAMETER_VALUE)
        except TimeoutError:
            logger.warning("Aborted %s: it stopped sending", self._description())
            self._abort(pdu.ABORT_REASON_NOT_SPECIFIED)
        except (_Aborted, OSError) as error:
            logger.info("Ended %s: %s", self._description(), error)
        finally:
            if self.rejected_requests > 1:
                logger.warning(
                    "Rejected %d requests in all in %s",
                    self.rejected_requests,
                    self._description(),
                )
            if self.pending is not None:
                logger.warning(
                    "Dropped an incomplete C-STORE data set from %s",
                    self._description(),
                )
                self.pending.discard()
            self.peer.close()
            self.server.association_ended(self)

    def _description(self) -> str:
        if self.contexts:
            return f"the association from {self.calling_ae_title} at {self.address}"
        return f"the connection from {self.address} before its association"

    def _serve(self) -> None:
        while self._handle_message():
            pass

    def _handle_message(self) -> bool:
        """Handle the PDUs of one message; return False when the association ends."""
        first = self._read_when_idle()
        if first is None:
            self._abort(pdu.ABORT_REASON_NOT_SPECIFIED)
            return False
        pdu_type, body = first
        while pdu_type == pdu.P_DATA_TF:
            if self._receive_p_data(body):
                return True
            pdu_type, body = self._read_pdu()

        in_message = bool(self.command) or self.pending or self.refusal
        if pdu_type == pdu.A_RELEASE_RQ and not in_message:
            self._send(pdu.encode_release_response())
            return False
        if pdu_type == pdu.A_ABORT:
            raise _Aborted("the peer aborted the association")
        if pdu_type in (pdu.A_ASSOCIATE_RQ, pdu.A_ASSOCIATE_AC, pdu.A_RELEASE_RQ):
            self._abort(pdu.ABORT_REASON_UNEXPECTED_PDU)
            raise _Aborted(f"unexpected PDU type 0x{pdu_type:02X}")
        self._abort(pdu.ABORT_REASON_UNRECOGNIZED_PDU)
        raise _Aborted(f"unrecognized PDU type 0x{pdu_type:02X}")

    def _read_when_idle(
        self, deadline: float | None = None
    ) -> tuple[int, memoryview] | None:
        """Read the first PDU of a request, or None when shutdown() ends the wait."""
        with self.lock:
            if self.server.stopping.is_set():
                return None
            # A PDU may end one message and start the next.
            self.idle = not (self.command or self.pending or self.refusal)
        try:
            return self._read_pdu(deadline)
        except _Closed:
            if self.server.stopping.is_set():
                return None
            raise
        finally:
            with self.lock:
                self.idle = False

    def close_now(self) -> None:
        try:
            self.peer.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def stop_if_idle(self) -> None:
        with self.lock:
            if self.idle:
                try:
                    self.peer.shutdown(socket.SHUT_RD)
                except OSError:
                    pass


class StorageServer:
    """Accept associations on a TCP address and serve each in a thread.

    ``listener``, when given, is a listening socket to accept from instead
    of a new one bound to ``address``. ``on_association_end`` runs in an
    association's thread as it ends.
    ``contexts`` maps each accepted abstract syntax to the transfer syntaxes
    it accepts, in order of preference.
    """

    def __init__(
        self,
        address: tuple[str, int],
        *,
        calling_ae_titles: list[str],
        contexts: dict[str, tuple[str, ...]],
        maximum_associations: int,
        maximum_file_bytes: int,
        staging: Path,
        store: StoreCallback,
        on_association_end: Callable[[], None] | None = None,
        on_stop: Callable[[], None] | None = None,
        listener: socket.socket | None = None,
    ) -> None:
        if not calling_ae_titles:
            raise ValueError("The list of allowed calling AE titles is empty")
        self.calling_ae_titles = frozenset(calling_ae_titles)
        self.contexts = contexts
        self.maximum_associations = maximum_associations
        self.maximum_file_bytes = maximum_file_bytes
        self.staging = staging
        self.store = store
        self.on_association_end = on_association_end
        self.on_stop = on_stop
        self.stopping = threading.Event()
        self._associations: set[_Association] = set()
        # The associations of _associations that got an A-ASSOCIATE-AC.
        self._established: set[_Association] = set()
        self._threads: set[threading.Thread] = set()
        self._lock = threading.Lock()
        self._logged_at = -_LOG_INTERVAL_SECONDS
        # Receiver processes forked from one parent share its listener, and
        # the kernel hands each connection to one of them.
        self.listener = listener or socket.create_server(address, backlog=64)
        self._shares_listener = listener is not None
        # The accepting thread polls, so that shutdown() need not shut the
        # socket down, which would stop the other processes accepting too. A
        # connection that another process takes first then fails accept()
        # with BlockingIOError instead of blocking.
        self.listener.setblocking(False)
        self.server_address = self.listener.getsockname()
        self._accepting = threading.Thread(
            target=self._accept, name="dicom-receiver-accept", daemon=True
        )

    def start(self) -> None:
        self.staging.mkdir(parents=True, exist_ok=True)
        self._accepting.start()

    def shutdown(self) -> None:
        """Stop accepting, let associations finish their request, then end."""
        self.stopping.set()
        self._accepting.join()
        self.listener.close()
        with self._lock:
            associations = list(self._associations)
            threads = list(self._threads)
        for association in associations:
            association.stop_if_idle()
        deadline = time.monotonic() + _SHUTDOWN_WAIT_SECONDS
        for thread in threads:
            thread.join(max(deadline - time.monotonic(), 0))
        with self._lock:
            late = list(self._associations)
        for association in late:
            # Stalled in the middle of a request: its sender gets no response.
            association.close_now()
        for thread in threads:
            thread.join(_SHUTDOWN_WAIT_SECONDS)
        if self.on_stop is not None:
            self.on_stop()

    def _accept(self) -> None:
        poller = select.poll()
        poller.register(self.listener, select.POLLIN)
        while not self.stopping.is_set():
            if not poller.poll(_ACCEPT_POLL_MILLISECONDS):
                continue
            if self._shares_listener:
                with self._lock:
                    served = len(self._associations)
                if served:
                    time.sleep(_BUSY_ACCEPT_DELAY_SECONDS * served)
            try:
                peer, _ = self.listener.accept()
            except BlockingIOError:
                continue  # Another receiver process took the connection.
            except OSError as error:
                if self.stopping.is_set():
                    return
                # Out of file descriptors or memory: a moment later some
                # associations may have ended.
                self._log_now_and_then("Could not accept a connection: %s", error)
                time.sleep(0.1)
                continue
            with self._lock:
                full = len(self._associations) >= (
                    self.maximum_associations + 2 * _UNASSOCIATED_CONNECTIONS
                )
                waiting = [
                    association
                    for association in self._associations
                    if association not in self._established and not association.evicted
                ]
            if full:
                self._log_now_and_then(
                    "Closed a connection from %s: too many connections",
                    self.peer_address(peer),
                )
                peer.close()
                continue
            if len(waiting) >= _UNASSOCIATED_CONNECTIONS:
                # A sender sends its request at once. Closing the oldest
                # connection that has not, instead of the new one, stops
                # peers that open connections and send nothing from taking
                # every place.
                oldest = min(waiting, key=lambda association: association.accepted_at)
                oldest.evicted = True
                oldest.close_now()
                self._log_now_and_then(
                    "Closed the connection from %s: it sent no association request "
                    "while more connections waited",
                    oldest.address,
                )
            association = _Association(self, peer)
            thread = threading.Thread(
                target=association.run, name="dicom-association", daemon=True
            )
            with self._lock:
                self._associations.add(association)
                self._threads.add(thread)
            thread.start()

    def _log_now_and_then(self, message: str, *arguments: object) -> None:
        now = time.monotonic()
        if now - self._logged_at >= _LOG_INTERVAL_SECONDS:
            self._logged_at = now
            logger.warning(message, *arguments)

    def association_ended(self, association: _Association) -> None:
        """Forget an association; called in its thread as it ends."""
        if self.on_association_end is not None:
            self.on_association_end()
        with self._lock:
            self._associations.discard(association)
            self._established.discard(association)
            self._threads.discard(threading.current_thread())

    def rejection_reason(
        self, request: pdu.AssociateRequest
    ) -> tuple[int, int, int] | None:
        """Return the A-ASSOCIATE-RJ result, source and reason, or None to accept."""
        if not request.protocol_version & 1:
            return (
                pdu.REJECTED_PERMANENT,
                pdu.SOURCE_SERVICE_PROVIDER_ACSE,
                pdu.REASON_PROTOCOL_VERSION_NOT_SUPPORTED,
            )
        if request.application_context_name != pdu.APPLICATION_CONTEXT_NAME:
            return (
                pdu.REJECTED_PERMANENT,
                pdu.SOURCE_SERVICE_USER,
                pdu.REASON_APPLICATION_CONTEXT_NOT_SUPPORTED,
            )
        if request.calling_ae_title not in self.calling_ae_titles:
            return (
                pdu.REJECTED_PERMANENT,
                pdu.SOURCE_SERVICE_USER,
                pdu.REASON_CALLING_AE_NOT_RECOGNIZED,
            )
        return None

    def admit(self, association: _Association) -> bool:
        """Count an association as established unless the limit is reached.

        Connections that have not been accepted as associations, such as
        one that has not sent its request yet, take no place.
        """
        with self._lock:
            if len(self._established) >= self.maximum_associations:
                return False
            self._established.add(association)
            return True

    def negotiate_context(self, proposed: pdu.ProposedContext) -> tuple[int, str]:
        """Return the result and the transfer syntax for a proposed context."""
        accepted = self.contexts.get(proposed.abstract_syntax)
        fallback = proposed.transfer_syntaxes[0] if proposed.transfer_syntaxes else ""
        if accepted is None:
            return pdu.CONTEXT_ABSTRACT_SYNTAX_NOT_SUPPORTED, fallback
        for transfer_syntax in accepted:
            if transfer_syntax in proposed.transfer_syntaxes:
                return pdu.CONTEXT_ACCEPTED, transfer_syntax
        return pdu.CONTEXT_TRANSFER_SYNTAXES_NOT_SUPPORTED, fallback

    def new_staging_path(self) -> Path:
        """Return a new file name in the staging folder: a random UUID's hex."""
        return self.staging / f"{uuid.uuid4().hex}.dcm"

    def call_store(self, received: ReceivedDataSet) -> StoreResult:
        try:
            return self.store(received)
        except Exception as error:
            logger.error(
                "Could not store a C-STORE data set from %s: %s",
                received.calling_ae_title,
                type(error).__name__,
            )
            return StoreResult(STATUS_OUT_OF_RESOURCES, "Storage failed; retry later")

    @staticmethod
    def peer_address(peer: socket.socket) -> str:
        try:
            host, port = peer.getpeername()[:2]
        except OSError:
            return "an unknown address"
        return f"{host}:{port}"
