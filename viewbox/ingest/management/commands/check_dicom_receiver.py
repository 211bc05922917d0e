import os
import socket
import time
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser
from pynetdicom import AE

from viewbox.ingest.dicom_network import VERIFICATION_SOP_CLASS

# Seconds between two attempts while the receiver starts.
_RETRY_SECONDS = 0.5
# Seconds that one attempt may take: the connection, the association, the
# C-ECHO and the release each.
_ATTEMPT_TIMEOUT_SECONDS = 5.0
# Addresses that mean "every interface" to bind(), and the loopback address
# that reaches a receiver bound to them.
_ANY_ADDRESS = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}  # noqa: S104
# State of a listening socket in /proc/net/tcp (TCP_LISTEN in Linux's
# include/net/tcp_states.h).
_TCP_LISTEN = "0A"


def _process_ended(pid: int) -> bool:
    """Return whether process pid has exited, a zombie included."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    except OSError:
        # No /proc: signal 0 shows only whether the process exists.
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        return False
    # The state follows the command name, which may itself contain ")".
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


def _listening_socket_inodes(port: int) -> set[str] | None:
    """Return the inodes of the TCP sockets listening on port.

    Returns None where Linux's /proc/net/tcp is missing.
    """
    inodes: set[str] = set()
    found_table = False
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        found_table = True
        for line in lines:
            # sl, local_address (hex address:hex port), rem_address, st, ...,
            # and the inode as the tenth field.
            fields = line.split()
            local_port = int(fields[1].rsplit(":", 1)[1], 16)
            if local_port == port and fields[3] == _TCP_LISTEN:
                inodes.add(fields[9])
    return inodes if found_table else None


def _holds_listening_socket(pid: int, port: int) -> bool | None:
    """Return whether process pid has a socket listening on port open.

    Returns None where /proc cannot tell.
    """
    inodes = _listening_socket_inodes(port)
    if inodes is None:
        return None
    try:
        descriptors = list(Path(f"/proc/{pid}/fd").iterdir())
    except OSError:
        return False
    for descriptor in descriptors:
        try:
            target = os.readlink(descriptor)
        except OSError:
            continue
        if target.startswith("socket:[") and target[len("socket:[") : -1] in inodes:
            return True
    return False


def _port_accepts(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=_ATTEMPT_TIMEOUT_SECONDS):
            return True
    except OSError:
        return False


def _echo_problem(host: str, port: int, calling: str, called: str) -> str | None:
    """Send one C-ECHO; return what went wrong, or None when it succeeded."""
    ae = AE(ae_title=calling)
    ae.add_requested_context(VERIFICATION_SOP_CLASS)
    ae.connection_timeout = _ATTEMPT_TIMEOUT_SECONDS
    ae.acse_timeout = _ATTEMPT_TIMEOUT_SECONDS
    ae.dimse_timeout = _ATTEMPT_TIMEOUT_SECONDS
    ae.network_timeout = _ATTEMPT_TIMEOUT_SECONDS
    association = ae.associate(host, port, ae_title=called)
    if association.is_rejected:
        return f"it rejected the association from {calling}"
    if not association.is_established:
        return "the association failed"
    status = association.send_c_echo()
    association.release()
    if not status:
        return "no response to the C-ECHO"
    if status.Status != 0:
        return f"the C-ECHO failed with status 0x{status.Status:04X}"
    return None


class Command(BaseCommand):
    help = (
        "Wait until the DICOM receiver responds to a C-ECHO, sent with the first of "
        "VIEWBOX_DICOM_CALLING_AE_TITLES to VIEWBOX_DICOM_AE_TITLE at "
        "VIEWBOX_DICOM_HOST and VIEWBOX_DICOM_PORT. Fails after --timeout seconds, "
        "or as soon as the --pid process has ended."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--timeout",
            type=float,
            default=30.0,
            help="seconds to wait for the receiver (default 30)",
        )
        parser.add_argument(
            "--pid",
            type=int,
            help=(
                "process ID of run_dicom_receiver: fail as soon as it has ended, "
                "and, on Linux, accept a response only while it listens on the "
                "port, so that another program on the port does not pass for it"
            ),
        )

    def handle(self, *args: Any, **options: Any) -> None:
        if not settings.DICOM_CALLING_AE_TITLES:
            raise CommandError(
                "VIEWBOX_DICOM_CALLING_AE_TITLES is empty, so the receiver accepts "
                "no association; list the AE titles allowed to send"
            )
        calling = settings.DICOM_CALLING_AE_TITLES[0]
        called = settings.DICOM_AE_TITLE
        host = _ANY_ADDRESS.get(settings.DICOM_HOST, settings.DICOM_HOST)
        port = settings.DICOM_PORT
        pid = options["pid"]
        timeout = options["timeout"]

        deadline = time.monotonic() + timeout
        while True:
            if pid is not None and _process_ended(pid):
                raise CommandError(
                    f"The DICOM receiver (process {pid}) ended before it responded "
                    "to a C-ECHO"
                )
            problem = self._problem(host, port, calling, called, pid)
            if problem is None:
                break
            if time.monotonic() >= deadline:
                raise CommandError(
                    f"The DICOM receiver {called} at {host}:{port} did not respond to "
                    f"a C-ECHO within {timeout:g} s: {problem}"
                )
            time.sleep(_RETRY_SECONDS)
        self.stdout.write(
            f"The DICOM receiver {called} at {host}:{port} responded to a C-ECHO "
            f"from {calling}"
        )

    def _problem(
        self, host: str, port: int, calling: str, called: str, pid: int | None
    ) -> str | None:
        """Check the receiver once; return what went wrong, or None."""
        # NOTE: without /proc (not Linux), a response from another program on
        # the port passes for the receiver's.
        holds_port = None if pid is None else _holds_listening_socket(pid, port)
        if holds_port is False:
            return f"process {pid} does not listen on port {port}"
        # Without a process to look at, a plain connection comes first,
        # because pynetdicom logs an error for each refused one.
        if holds_port is None and not _port_accepts(host, port):
            return "the port accepts no connection"
        return _echo_problem(host, port, calling, called)
