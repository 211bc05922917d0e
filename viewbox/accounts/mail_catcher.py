"""A loopback SMTP server that keeps every message, for tests and the demo.

It delivers nothing: each message is parsed and kept in memory, and when a
folder is given also written there as ``<UTC timestamp>-<n>.eml``. Tests
start one on a free port. The demo runs ``manage.py run_mail_catcher`` and
shows the folder with ``read_mailbox``.

    with MailCatcher() as catcher:
        settings.EMAIL_PORT = catcher.port
        send_mail(...)
        message = catcher.wait_for_count(1)[0]
"""

import asyncio
import email
import email.policy
import ipaddress
import logging
import os
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from email.message import EmailMessage
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session

logger = logging.getLogger(__name__)

# File names start with the time received, so that they sort by it.
TIMESTAMP_FORMAT = "%Y%m%dT%H%M%S%fZ"
# Messages kept in memory; older ones are dropped first. The folder keeps
# every message.
MAX_KEPT_MESSAGES = 1000


class MailCatcher:
    """An SMTP server on a loopback address that stores what it receives.

    ``port=0`` picks a free port, readable from ``port`` once started. Only
    loopback IP addresses are accepted as ``host``, because the server
    accepts mail for anyone without authentication.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        folder: Path | str | None = None,
    ) -> None:
        _require_loopback(host)
        self.host = host
        self.folder = Path(folder) if folder is not None else None
        self._requested_port = port
        self._controller: _Controller | None = None
        self._messages: list[EmailMessage] = []
        self._received = 0
        self._changed = threading.Condition()

    @property
    def port(self) -> int:
        """The port the server listens on, or the requested port before start()."""
        if self._controller is None:
            return self._requested_port
        return int(self._controller.port)

    @property
    def messages(self) -> list[EmailMessage]:
        """A copy of the messages kept in memory, oldest first."""
        with self._changed:
            return list(self._messages)

    def start(self) -> None:
        """Start listening, or raise OSError when the address cannot be bound."""
        if self._controller is not None:
            raise RuntimeError("The mail catcher is already running.")
        if self.folder is not None:
            self.folder.mkdir(parents=True, exist_ok=True)
        # aiosmtpd logs each recipient at INFO and each message line at
        # DEBUG, which would put addresses and codes in the portal's log.
        logging.getLogger("mail.log").setLevel(logging.WARNING)
        controller = _Controller(
            _Handler(self),
            hostname=self.host,
            port=self._requested_port,
            # Without it aiosmtpd looks up the machine's FQDN to greet with.
            server_hostname="localhost",
        )
        controller.start()
        self._controller = controller
        logger.info("Mail catcher listening on %s:%d", self.host, self.port)

    def stop(self) -> None:
        """Stop listening. Kept messages stay readable. Stopping twice is harmless."""
        if self._controller is None:
            return
        port = self.port
        self._controller.stop()
        self._controller = None
        logger.info("Mail catcher on %s:%d stopped", self.host, port)

    def clear(self) -> None:
        """Forget the messages kept in memory. Files in the folder stay."""
        with self._changed:
            self._messages.clear()

    def wait_for(
        self, predicate: Callable[[EmailMessage], bool], timeout: float = 5.0
    ) -> EmailMessage:
        """Return the first kept message that ``predicate`` accepts.

        Wait up to ``timeout`` seconds for one to arrive, then raise
        TimeoutError.
        """
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                for message in self._messages:
                    if predicate(message):
                        return message
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(
                        f"No matching message arrived within {timeout} seconds "
                        f"({len(self._messages)} kept)."
                    )
                self._changed.wait(remaining)

    def wait_for_count(self, count: int, timeout: float = 5.0) -> list[EmailMessage]:
        """Return the kept messages once there are at least ``count``.

        Wait up to ``timeout`` seconds, then raise TimeoutError.
        """
        with self._changed:
            arrived = self._changed.wait_for(
                lambda: len(self._messages) >= count, timeout
            )
            if not arrived:
                raise TimeoutError(
                    f"Expected {count} messages within {timeout} seconds, "
                    f"{len(self._messages)} arrived."
                )
            return list(self._messages)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def keep(self, content: bytes) -> int:
        """Store one received message and return its number since start."""
        message = email.message_from_bytes(content, policy=email.policy.default)
        assert isinstance(message, EmailMessage)
        with self._changed:
            self._received += 1
            number = self._received
            self._messages.append(message)
            del self._messages[:-MAX_KEPT_MESSAGES]
            self._changed.notify_all()
        if self.folder is not None:
            _write_atomically(self.folder, _file_name(number), content)
        logger.info("Mail catcher kept message %d (%d bytes)", number, len(content))
        return number


@dataclass(frozen=True)
class MailboxItem:
    """One saved message, as the demo's mailbox page lists it."""

    received_at: datetime
    to: str
    subject: str
    text: str


def read_mailbox(folder: Path | str, limit: int = 100) -> list[MailboxItem]:
    """Return up to ``limit`` messages saved in ``folder``, newest first.

    A missing folder reads as empty. A file that cannot be read is logged
    and skipped.
    """
    path = Path(folder)
    if not path.is_dir():
        return []
    # Names start with the time received and end with a number that grows
    # within a run, so that sorting them by both gives arrival order.
    files = sorted(path.glob("*.eml"), key=_arrival_order, reverse=True)
    items = []
    for file in files[:limit]:
        try:
            items.append(_read_item(file))
        except (OSError, ValueError, LookupError) as error:
            logger.warning("Mailbox file %s skipped: %s", file.name, error)
    return items


def _read_item(file: Path) -> MailboxItem:
    message = email.message_from_bytes(file.read_bytes(), policy=email.policy.default)
    assert isinstance(message, EmailMessage)
    body = message.get_body(preferencelist=("plain",))
    text = body.get_content() if isinstance(body, EmailMessage) else ""
    return MailboxItem(
        received_at=_received_at(file),
        to=str(message.get("To", "")),
        subject=str(message.get("Subject", "")),
        text=text,
    )


def _file_name(number: int) -> str:
    return f"{datetime.now(UTC).strftime(TIMESTAMP_FORMAT)}-{number}.eml"


def _arrival_order(file: Path) -> tuple[str, int]:
    stamp, _, number = file.stem.partition("-")
    return stamp, int(number) if number.isdigit() else 0


def _received_at(file: Path) -> datetime:
    stamp = file.stem.partition("-")[0]
    try:
        return datetime.strptime(stamp, TIMESTAMP_FORMAT).replace(tzinfo=UTC)
    except ValueError:
        return datetime.fromtimestamp(file.stat().st_mtime, UTC)


def _write_atomically(folder: Path, name: str, content: bytes) -> None:
    """Write a file that readers see whole or not at all.

    The temporary file starts with a dot and ends in .tmp, so that
    ``read_mailbox`` never lists it.
    """
    handle, temporary = tempfile.mkstemp(dir=folder, prefix=".", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(content)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, folder / name)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _require_loopback(host: str) -> None:
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(
            f"The mail catcher's host must be a loopback IP address such as "
            f"127.0.0.1, not {host!r}."
        ) from None
    if not address.is_loopback:
        raise ValueError(
            f"{host} is not a loopback address. The mail catcher listens on "
            "loopback addresses only, such as 127.0.0.1."
        )


class _Handler:
    """The aiosmtpd handler, run in the controller's event loop thread."""

    def __init__(self, catcher: MailCatcher) -> None:
        self.catcher = catcher

    async def handle_DATA(
        self, server: SMTP, session: Session, envelope: Envelope
    ) -> str:
        content = envelope.original_content or envelope.content
        if not isinstance(content, bytes):
            content = str(content or "").encode()
        try:
            self.catcher.keep(content)
        except OSError:
            logger.exception("Mail catcher could not save a message")
            return "451 Requested action aborted: the message could not be saved"
        return "250 Message accepted"


class _Controller(Controller):
    """An aiosmtpd Controller that can listen on port 0.

    aiosmtpd 1.4 connects to ``self.port`` once the server is up, to check
    that it responds. With port 0 that is no real port, so the port the operating
    system picked is read from the listening socket first.
    """

    def _trigger_server(self) -> Any:
        if isinstance(self.server, asyncio.Server):
            self.port = self.server.sockets[0].getsockname()[1]
        return super()._trigger_server()
