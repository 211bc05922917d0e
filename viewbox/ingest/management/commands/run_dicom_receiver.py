import logging
import signal
import threading
from types import FrameType
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import connection

from viewbox.ingest.dicom_receiver import start_receiver

logger = logging.getLogger(__name__)


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
            type=int,
            default=settings.DICOM_PORT,
            help="TCP port to listen on (default: VIEWBOX_DICOM_PORT or 11112)",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        # pynetdicom logs every request at INFO. The receiver logs each
        # association and each rejected instance itself.
        logging.getLogger("pynetdicom").setLevel(logging.WARNING)
        if connection.vendor == "sqlite":
            # In WAL mode a commit costs one fsync instead of the rollback
            # journal's several, and readers do not block the receiver's
            # writes. SQLite stores the mode in the database file, so it then
            # holds for the web server and the worker too.
            with connection.cursor() as cursor:
                cursor.execute("PRAGMA journal_mode=WAL")
            connection.close()
        try:
            server = start_receiver(options["host"], options["port"])
        except (ValueError, OSError) as error:
            raise CommandError(f"Cannot start the DICOM receiver: {error}") from error
        host, port = server.server_address[:2]
        logger.info(
            "DICOM receiver %s listening on %s:%d", settings.DICOM_AE_TITLE, host, port
        )
        self.stdout.write(f"Listening on {host}:{port} as {settings.DICOM_AE_TITLE}")

        stopping = threading.Event()

        def request_stop(signal_number: int, frame: FrameType | None) -> None:
            stopping.set()

        signal.signal(signal.SIGTERM, request_stop)
        signal.signal(signal.SIGINT, request_stop)
        stopping.wait()
        # Associations in progress finish their current request first.
        server.shutdown()
        logger.info("DICOM receiver stopped")
