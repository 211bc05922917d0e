"""Receive HL7 v2 messages over MLLP and acknowledge each one.

MLLP, the HL7 Minimal Lower Layer Protocol, frames each message as
0x0B <message> 0x1C 0x0D on a TCP connection. Every frame is applied with
hl7_import.import_message, the same code path as ``manage.py import_hl7``,
and acknowledged in original acknowledgment mode:

- MSA-1 AA: applied, or applied before from an identical copy.
- MSA-1 AE: read, but its content cannot be applied (an unknown patient).
- MSA-1 AR: not readable, not supported, too large, or a control ID that was
  already processed with other content.

AE and AR answers carry the reason in MSA-3 (cut to 80 characters) and in
full in ERR-8, where ERR-2 names the field. Rejected messages are stored for
staff, like those of the import command.

Bytes outside a frame are discarded and counted in the log. A frame larger
than the limit is answered with AR and the connection closed, because the
rest of it cannot be told from the next message. Log lines name the peer
address, control IDs, message types and byte counts, never message content.
"""

import logging
import socket
import socketserver
import threading
import uuid
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from django.conf import settings
from django.db import DatabaseError, close_old_connections, connection, connections

from viewbox.ingest.hl7_import import ImportResult, import_message
from viewbox.ingest.hl7_parsing import (
    BINARY_BYTES,
    CHARACTER_SETS,
    HL7Error,
    decode_message,
    escape,
    parse_message,
    read_header_labels,
    read_sending_facility,
)
from viewbox.ingest.models import HL7Message, QuarantinedFile

logger = logging.getLogger(__name__)

START_BLOCK = b"\x0b"
END_BLOCK = b"\x1c"
CARRIAGE_RETURN = b"\r"
# MSA-3 text message is an ST of at most 80 characters (HL7 v2.5 2.14.8).
MSA_TEXT_LENGTH = 80
# How often an open connection checks for shutdown while it waits for data.
POLL_SECONDS = 0.5
RECEIVE_BYTES = 65536
# ERR-3 codes (HL7 table 0357).
ERROR_CODES = {
    "unsupported": "200^Unsupported message type^HL70357",
    "missing": "101^Required field missing^HL70357",
    "unknown": "204^Unknown key identifier^HL70357",
    "duplicate": "205^Duplicate key identifier^HL70357",
    "other": "207^Application internal error^HL70357",
}

# SQLite allows one writer at a time, and in the shared-cache mode that the
# test database uses, a second writer fails at once instead of waiting.
# PostgreSQL needs no such lock: the importer locks the group's row.
_sqlite_writer = threading.Lock()


@dataclass(frozen=True)
class Frame:
    """The bytes between a start block and an end block."""

    payload: bytes


@dataclass(frozen=True)
class OversizedFrame:
    """A frame that passed the size limit, with its first bytes."""

    head: bytes


class FrameReader:
    """Cut MLLP frames out of a byte stream that arrives in pieces of any size."""

    def __init__(self, max_message_bytes: int) -> None:
        self.max_message_bytes = max_message_bytes
        self.buffer = bytearray()
        self.in_frame = False
        # Bytes dropped because they were outside a frame or in a frame that
        # a new start block cut short; the caller logs and resets it.
        self.discarded_bytes = 0
        # The 0x0D after an end block may arrive in the next piece.
        self._expect_carriage_return = False

    @property
    def pending_bytes(self) -> int:
        """Return the size of an unfinished frame, 0 when between frames."""
        return len(self.buffer) if self.in_frame else 0

    def feed(self, data: bytes) -> list[Frame | OversizedFrame]:
        if self._expect_carriage_return and data[:1] == CARRIAGE_RETURN:
            data = data[1:]
        self._expect_carriage_return = False
        self.buffer += data

        frames: list[Frame | OversizedFrame] = []
        while self.buffer:
            if not self.in_frame and not self._open_frame():
                break
            end = self.buffer.find(END_BLOCK)
            limit = end if end >= 0 else len(self.buffer)
            restart = self.buffer.find(START_BLOCK, 0, limit)
            if restart >= 0:
                # A start block inside a frame means the sender gave up on
                # the frame before it; only the new one is read.
                self.discarded_bytes += restart + 1
                del self.buffer[: restart + 1]
                continue
            if limit > self.max_message_bytes:
                frames.append(OversizedFrame(bytes(self.buffer[:4096])))
                self.buffer.clear()
                self.in_frame = False
                break
            if end < 0:
                break
            frames.append(Frame(bytes(self.buffer[:end])))
            del self.buffer[: end + 1]
            self.in_frame = False
            if self.buffer[:1] == CARRIAGE_RETURN:
                del self.buffer[:1]
            elif not self.buffer:
                self._expect_carriage_return = True
        return frames

    def _open_frame(self) -> bool:
        """Drop bytes up to the next start block; return whether one was found."""
        start = self.buffer.find(START_BLOCK)
        if start < 0:
            self.discarded_bytes += len(self.buffer)
            self.buffer.clear()
            return False
        self.discarded_bytes += start
        del self.buffer[: start + 1]
        self.in_frame = True
        return True


def frame(message: bytes) -> bytes:
    return START_BLOCK + message + END_BLOCK + CARRIAGE_RETURN


def acknowledge(payload: bytes, source_name: str) -> bytes:
    """Apply the message in one frame and return the framed ACK."""
    # A connection thread lives for hours; drop a database connection that
    # broke meanwhile, as Django does before each request.
    close_old_connections()
    try:
        with _database_writer():
            result = _apply_frame(payload, source_name)
    except Exception as error:
        # A failure here must not end the connection without an ACK. The
        # error's text can quote values from the message, so only its kind
        # is logged. The sender may send the message again later.
        logger.error(
            "Applying an HL7 message from %s failed: %s",
            source_name,
            type(error).__name__,
        )
        result = ImportResult(
            "rejected",
            error="the message could not be stored; send it again later",
            ack_code="AE",
        )

    _log_result(result, source_name)
    text = decode_message(payload)
    if result.status == "rejected":
        return frame(build_ack(text, result.ack_code, result.error, result.error_field))
    return frame(build_ack(text, "AA", "", ""))


def _apply_frame(payload: bytes, source_name: str) -> ImportResult:
    if binary := BINARY_BYTES.search(payload):
        reason = (
            f"binary data (byte 0x{binary.group()[0]:02x} at offset "
            f"{binary.start()}); the message was copied to the quarantine"
        )
        _quarantine_bytes(payload, source_name, reason)
        return ImportResult("rejected", error=reason, ack_code="AR")
    return import_message(decode_message(payload), source_name)


def _database_writer() -> AbstractContextManager[object]:
    """Return the lock that SQLite writes need, or a context that does nothing."""
    if connection.vendor == "sqlite":
        return _sqlite_writer
    return nullcontext()


def reject_oversized(head: bytes, source_name: str, max_message_bytes: int) -> bytes:
    """Store what can be kept of an oversized message and return the framed AR."""
    reason = (
        f"message is larger than the limit of {max_message_bytes} bytes "
        "(VIEWBOX_HL7_MAX_MESSAGE_BYTES)"
    )
    text = head.decode("latin-1")
    header = text.replace("\n", "\r").split("\r", 1)[0]
    message_type, control_id = read_header_labels(header)
    if BINARY_BYTES.search(header.encode("latin-1")):
        header = ""
    try:
        with _database_writer():
            row = HL7Message.objects.create(
                status=HL7Message.Status.REJECTED,
                control_id=control_id[:64],
                sending_facility=read_sending_facility(header)[:64],
                message_type=message_type[:16],
                raw=header,
                error=f"{reason}; only its MSH segment was kept",
                source_name=source_name,
            )
    except DatabaseError as error:
        logger.error(
            "Storing an oversized HL7 message from %s failed: %s",
            source_name,
            type(error).__name__,
        )
    else:
        logger.warning(
            "Rejected HL7 message %s from %s with AR: larger than %d bytes, "
            "stored as HL7 message %d",
            control_id or "-",
            source_name,
            max_message_bytes,
            row.pk,
        )
    return frame(build_ack(header, "AR", reason, ""))


def build_ack(text: str, code: str, reason: str, field: str) -> bytes:
    """Return an ACK (not framed) for a message, as far as its MSH can be read.

    The ACK is encoded in the character set that the message's MSH-18
    declares, and echoes MSH-3, MSH-4, MSH-9 event, MSH-10, MSH-11 and MSH-12.
    """
    header = _read_header(text)
    event = header["event"]
    message_type = f"ACK^{event}^ACK" if event else "ACK"
    sent_at = datetime.now(UTC).strftime("%Y%m%d%H%M%S+0000")
    msh = [
        "MSH",
        "^~\\&",
        "VIEWBOX",
        "VIEWBOX",
        escape(header["application"]),
        escape(header["facility"]),
        sent_at,
        "",
        message_type,
        uuid.uuid4().hex[:20].upper(),
        escape(header["processing_id"]) or "P",
        escape(header["version"]) or "2.5.1",
    ]
    if header["character_set"]:
        msh += [""] * 5 + [header["character_set"]]
    segments = [
        "|".join(msh),
        "|".join(
            [
                "MSA",
                code,
                escape(header["control_id"]),
                escape(reason[:MSA_TEXT_LENGTH]),
            ]
        ),
    ]
    if code != "AA":
        segments.append(
            "|".join(
                [
                    "ERR",
                    "",
                    _error_location(field),
                    _error_code(reason, field),
                    "E",
                    "",
                    "",
                    "",
                    escape(reason),
                ]
            )
        )
    codec = CHARACTER_SETS.get(header["character_set"]) or "utf-8"
    return ("\r".join(segments) + "\r").encode(codec, errors="replace")


def _read_header(text: str) -> dict[str, str]:
    """Read the MSH fields an ACK echoes, decoded; "" for those not readable."""
    line = text.replace("\r\n", "\r").replace("\n", "\r").split("\r", 1)[0]
    values = dict.fromkeys(
        (
            "application",
            "facility",
            "event",
            "control_id",
            "processing_id",
            "version",
            "character_set",
        ),
        "",
    )
    try:
        msh = parse_message(line + "\r").header
    except HL7Error:
        message_type, values["control_id"] = read_header_labels(line)
        values["event"] = message_type.partition("^")[2]
        return values
    values.update(
        application=msh.get(3),
        facility=msh.get(4),
        event=msh.get(9, 2).upper(),
        control_id=msh.get(10),
        processing_id=msh.get(11),
        version=msh.get(12),
        character_set=msh.get(18).strip().upper(),
    )
    return values


def _error_location(field: str) -> str:
    """Turn "OBR-32.2" into an ERL, "OBR^1^32^1^2"; "" when not one field."""
    segment, _, position = field.partition("-")
    if not position:
        return segment if len(segment) == 3 and segment.isalnum() else ""
    number, _, component = position.partition(".")
    if not number.isdigit():
        return ""
    location = f"{segment}^1^{number}"
    return f"{location}^1^{component}" if component.isdigit() else location


def _error_code(reason: str, field: str) -> str:
    """Pick the ERR-3 code that the reason describes."""
    if field == "MSH-9":
        return ERROR_CODES["unsupported"]
    if field == "MSH-10" and "already processed" in reason:
        return ERROR_CODES["duplicate"]
    if "not found" in reason:
        return ERROR_CODES["unknown"]
    if reason.endswith("is missing"):
        return ERROR_CODES["missing"]
    return ERROR_CODES["other"]


def _log_result(result: ImportResult, source_name: str) -> None:
    if result.status == "rejected":
        # import_message logged the reason's field already.
        return
    logger.info(
        "Acknowledged HL7 message %s (%s) from %s with AA: %s",
        result.control_id,
        result.message_type,
        source_name,
        result.status,
    )


def _quarantine_bytes(payload: bytes, source_name: str, reason: str) -> None:
    folder = Path(settings.QUARANTINE_DIR) / "hl7"
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"{uuid.uuid4().hex}.hl7"
    target.write_bytes(payload)
    row = QuarantinedFile.objects.create(
        kind=QuarantinedFile.Kind.HL7,
        original_name=f"MLLP message from {source_name}"[:255],
        path=str(target),
        reason=f"not an HL7 message: {reason}",
    )
    logger.warning(
        "Quarantined binary MLLP message from %s as quarantined file %d",
        source_name,
        row.pk,
    )


class HL7Listener(socketserver.ThreadingTCPServer):
    """A TCP server that reads MLLP frames, one thread per connection.

    ``stop`` lets every connection finish the frame it is applying, then
    closes it; a connection waits for its next frame at most
    ``idle_timeout_seconds``.
    """

    allow_reuse_address = True
    # Threads are joined on stop, so that no message is cut off mid-way.
    daemon_threads = False
    block_on_close = True

    def __init__(
        self,
        address: tuple[str, int],
        *,
        max_message_bytes: int,
        idle_timeout_seconds: float,
        max_connections: int,
    ) -> None:
        self.max_message_bytes = max_message_bytes
        self.idle_timeout_seconds = idle_timeout_seconds
        self.max_connections = max_connections
        self.connection_slots = threading.BoundedSemaphore(max_connections)
        self.stopping = threading.Event()
        super().__init__(address, _ConnectionHandler)

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    def handle_error(self, request: object, client_address: object) -> None:
        """Log a failed connection without the traceback's values."""
        logger.error(
            "HL7 connection from %s failed",
            client_address[0] if isinstance(client_address, tuple) else "-",
            exc_info=False,
        )

    def stop(self) -> None:
        self.stopping.set()
        self.shutdown()
        self.server_close()


def start_listener(host: str, port: int) -> tuple[HL7Listener, threading.Thread]:
    """Start a listener with the HL7_LISTENER_* settings in a background thread."""
    listener = HL7Listener(
        (host, port),
        max_message_bytes=settings.HL7_LISTENER_MAX_MESSAGE_BYTES,
        idle_timeout_seconds=settings.HL7_LISTENER_IDLE_TIMEOUT_SECONDS,
        max_connections=settings.HL7_LISTENER_MAX_CONNECTIONS,
    )
    thread = threading.Thread(
        target=listener.serve_forever, name="hl7-listener", daemon=True
    )
    thread.start()
    return listener, thread


class _ConnectionHandler(socketserver.BaseRequestHandler):
    server: HL7Listener
    request: socket.socket

    def handle(self) -> None:
        peer = str(self.client_address[0])
        if not self.server.connection_slots.acquire(blocking=False):
            logger.warning(
                "Refused HL7 connection from %s: %d connections are open",
                peer,
                self.server.max_connections,
            )
            return
        try:
            logger.info("Opened HL7 connection from %s", peer)
            received = self._serve(peer)
            logger.info(
                "Closed HL7 connection from %s after %d messages", peer, received
            )
        finally:
            self.server.connection_slots.release()
            # Each thread has its own database connection; close it so that
            # connections do not pile up on the database server.
            connections.close_all()

    def _serve(self, peer: str) -> int:
        """Acknowledge frames until the peer closes, goes idle or the server stops."""
        reader = FrameReader(self.server.max_message_bytes)
        self.request.settimeout(POLL_SECONDS)
        source_name = f"mllp:{peer}"
        received = 0
        idle_seconds = 0.0
        while not (self.server.stopping.is_set() and not reader.pending_bytes):
            try:
                data = self.request.recv(RECEIVE_BYTES)
            except TimeoutError:
                idle_seconds += POLL_SECONDS
                if idle_seconds >= self.server.idle_timeout_seconds:
                    logger.info(
                        "HL7 connection from %s idle for %d seconds%s",
                        peer,
                        idle_seconds,
                        _pending_note(reader),
                    )
                    return received
                continue
            except OSError as error:
                logger.warning("HL7 connection from %s failed: %s", peer, error)
                return received
            if not data:
                if reader.pending_bytes:
                    logger.warning(
                        "HL7 connection from %s closed by the peer%s",
                        peer,
                        _pending_note(reader),
                    )
                return received
            idle_seconds = 0.0

            items = reader.feed(data)
            # Logged before the ACKs go out, so the line precedes them.
            if reader.discarded_bytes:
                logger.warning(
                    "Discarded %d bytes outside MLLP frames from %s",
                    reader.discarded_bytes,
                    peer,
                )
                reader.discarded_bytes = 0
            for item in items:
                if isinstance(item, OversizedFrame):
                    answer = reject_oversized(
                        item.head, source_name, self.server.max_message_bytes
                    )
                    self._send(answer, peer)
                    return received
                received += 1
                if not self._send(acknowledge(item.payload, source_name), peer):
                    return received
        return received

    def _send(self, data: bytes, peer: str) -> bool:
        try:
            self.request.sendall(data)
        except OSError as error:
            logger.warning("Could not send an ACK to %s: %s", peer, error)
            return False
        return True


def _pending_note(reader: FrameReader) -> str:
    if not reader.pending_bytes:
        return ""
    return f", dropping an incomplete frame of {reader.pending_bytes} bytes"
