import ctypes
import logging
import os
import signal
import socket
import time
from types import FrameType
from typing import Any, NoReturn

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import OperationalError, connection

from viewbox.ingest.dicom_receiver import start_receiver
from viewbox.ingest.management.arguments import listen_port

logger = logging.getLogger(__name__)

# Seconds after its start within which a receiver process that fails (exit
# status above 0) is not started again: it failed to start, and would fail
# again. One that was stopped or killed by a signal is started again, after
# _RESTART_PAUSE_SECONDS when it ended that soon, so that a crash at start
# does not loop at full speed.
_QUICK_EXIT_SECONDS = 10.0
_RESTART_PAUSE_SECONDS = 1.0
# prctl(2) option that names the signal sent when the parent process ends.
_PR_SET_PDEATHSIG = 1
# Seconds between two looks of a receiver process at its stop flag.
_STOP_POLL_SECONDS = 0.2
# Seconds that the command waits for SQLite's lock to switch to WAL mode,
# while the web server, the worker and the HL7 listener start beside it.
_WAL_LOCK_SECONDS = 30.0


def _use_write_ahead_log() -> None:
    """Switch the SQLite database to WAL mode, waiting while it is locked.

    In WAL mode a commit costs one fsync instead of the rollback journal's
    several, and readers do not block the receiver's writes. SQLite stores
    the mode in the database file, so it then holds for the web server and
    the worker too. While other processes use the database, SQLite may
    return "database is locked" at once, without waiting for its busy
    timeout, as it did when the demo started its processes together.
    """
    deadline = time.monotonic() + _WAL_LOCK_SECONDS
    while True:
        try:
            with connection.cursor() as cursor:
                cursor.execute("PRAGMA journal_mode=WAL")
            return
        except OperationalError as error:
            connection.close()
            if time.monotonic() >= deadline:
                raise CommandError(
                    "Cannot start the DICOM receiver: could not switch the SQLite "
                    f"database to WAL mode within {_WAL_LOCK_SECONDS:.0f} seconds "
                    f"({error}); stop the process that keeps it locked"
                ) from error
            time.sleep(0.2)


def _usable_cpus() -> int:
    """Return the number of CPUs this process may run on.

    A container or taskset may allow fewer than the machine has, which
    os.cpu_count() reports.
    """
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _stop_with_parent() -> None:
    """Have Linux send this process SIGTERM when its parent ends.

    A parent killed with SIGKILL cannot stop its children, which would go on
    serving the port unsupervised and keep a new receiver from binding it.
    """
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (AttributeError, OSError):
        return  # Not Linux: the children outlive a killed parent.
    prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


class Command(BaseCommand):
    help = (
        "Run the DICOM receiver (C-STORE SCP) until SIGTERM or Ctrl-C. Its AE "
        "title, address and allowed calling AE titles come from the settings."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--host",
            default=settings.DICOM_HOST,
            help="address to listen on (default: VIEWBOX_DICOM_HOST or 127.0.0.1)",
        )
        parser.add_argument(
            "--port",
            type=listen_port,
            default=settings.DICOM_PORT,
            help="TCP port to listen on (default: VIEWBOX_DICOM_PORT or 11112)",
        )
        parser.add_argument(
            "--processes",
            type=int,
            default=settings.DICOM_RECEIVER_PROCESSES,
            help=(
                "receiver processes sharing the port, each serving whole "
                "associations (default: VIEWBOX_DICOM_RECEIVER_PROCESSES, else two "
                "per CPU)"
            ),
        )

    def handle(self, *args: Any, **options: Any) -> None:
        processes = options["processes"]
        if processes is None:
            processes = 2 * _usable_cpus()
        if processes < 1:
            raise CommandError("--processes must be 1 or more")
        if connection.vendor == "sqlite":
            _use_write_ahead_log()
        # A forked process must not share its parent's database connection.
        connection.close()

        if not settings.DICOM_CALLING_AE_TITLES:
            raise CommandError(
                "Cannot start the DICOM receiver: VIEWBOX_DICOM_CALLING_AE_TITLES is "
                "empty; list the AE titles of the modalities and PACS allowed to "
                "send, separated by commas"
            )
        try:
            listener = socket.create_server(
                (options["host"], options["port"]), backlog=64
            )
        except OSError as error:
            raise CommandError(f"Cannot start the DICOM receiver: {error}") from error
        # Even one process runs under a parent that starts it again when it
        # dies.
        self._supervise(listener, processes)

    def _serve(self, listener: socket.socket) -> None:
        """Serve associations from listener in this process until SIGTERM or SIGINT."""
        stopping = False

        def request_stop(signal_number: int, frame: FrameType | None) -> None:
            # Only a flag, because an Event's set() here could wait for the
            # lock of the interrupted wait(). Ctrl-C also brings the parent's SIGTERM.
            nonlocal stopping
            stopping = True

        signal.signal(signal.SIGTERM, request_stop)
        signal.signal(signal.SIGINT, request_stop)
        try:
            server = start_receiver("", 0, listener)
        except (ValueError, OSError) as error:
            raise CommandError(f"Cannot start the DICOM receiver: {error}") from error
        bound_host, bound_port = server.server_address[:2]
        logger.info(
            "DICOM receiver %s listening on %s:%d (process %d)",
            settings.DICOM_AE_TITLE,
            bound_host,
            bound_port,
            os.getpid(),
        )
        while not stopping:
            time.sleep(_STOP_POLL_SECONDS)
        # Associations in progress finish their current request first.
        server.shutdown()
        logger.info("DICOM receiver stopped (process %d)", os.getpid())

    def _supervise(self, listener: socket.socket, processes: int) -> None:
        """Fork the receiver processes, pass on SIGTERM, and wait for them.

        A process that ends by itself is started again, unless it ended
        within _QUICK_EXIT_SECONDS of its start: then the others are stopped
        too and the command fails, because a new one would fail the same way.
        """
        children: dict[int, float] = {}
        stopping = False

        def stop_children(signal_number: int, frame: FrameType | None) -> None:
            nonlocal stopping
            stopping = True
            for child in children:
                try:
                    os.kill(child, signal.SIGTERM)
                except ProcessLookupError:
                    pass

        # Set before the first fork, so that a SIGTERM that comes while the
        # processes start stops them too. Each child sets its own handlers.
        signal.signal(signal.SIGTERM, stop_children)
        signal.signal(signal.SIGINT, stop_children)
        for _ in range(processes):
            children[self._fork_child(listener)] = time.monotonic()
        listener_host, listener_port = listener.getsockname()[:2]
        self.stdout.write(
            f"Listening on {listener_host}:{listener_port} as "
            f"{settings.DICOM_AE_TITLE} with {processes} "
            f"{'process' if processes == 1 else 'processes'}"
        )
        self.stdout.flush()

        failed = False
        while children:
            pid, status = os.wait()
            started = children.pop(pid, None)
            if stopping or started is None:
                continue
            code = os.waitstatus_to_exitcode(status)
            quick = time.monotonic() - started < _QUICK_EXIT_SECONDS
            if quick and code > 0:
                logger.error(
                    "DICOM receiver process %d ended with status %d right after "
                    "it started; stopping the others",
                    pid,
                    code,
                )
                failed = True
                stop_children(signal.SIGTERM, None)
                continue
            logger.error(
                "DICOM receiver process %d ended with status %d; starting another",
                pid,
                code,
            )
            if quick:
                time.sleep(_RESTART_PAUSE_SECONDS)
                if stopping:
                    continue
            children[self._fork_child(listener)] = time.monotonic()
        listener.close()
        if failed:
            raise CommandError("A DICOM receiver process ended unexpectedly")

    def _fork_child(self, listener: socket.socket) -> int:
        parent = os.getpid()
        pid = os.fork()
        if pid == 0:
            # The parent's handlers would signal the other children.
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            _stop_with_parent()
            if os.getppid() != parent:
                os._exit(0)  # The parent died before prctl() took effect.
            self._run_child(listener)
        return pid

    def _run_child(self, listener: socket.socket) -> NoReturn:
        status = 1
        try:
            self._serve(listener)
            status = 0
        except CommandError as error:
            logger.error("%s", error)
        except BaseException as error:
            logger.error(
                "DICOM receiver process %d failed: %s",
                os.getpid(),
                type(error).__name__,
            )
        finally:
            logging.shutdown()
            os._exit(status)
