import logging
import signal
import threading
from types import FrameType
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from viewbox.ingest.management.arguments import listen_port
from viewbox.ingest.mllp import HL7Listener

logger = logging.getLogger(__name__)


class Command(BaseCommand):
    help = (
        "Receive HL7 v2 messages (ADT^A04, A08, A40, ORM^O01, OMI^O23, ORU^R01) "
        "over MLLP and answer each with an ACK. Runs until SIGTERM or Ctrl-C, "
        "then lets every connection finish the message it is applying."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--host",
            default=settings.HL7_LISTENER_HOST,
            help="address to listen on (default: %(default)s, from VIEWBOX_HL7_HOST)",
        )
        parser.add_argument(
            "--port",
            type=listen_port,
            default=settings.HL7_LISTENER_PORT,
            help="TCP port (default: %(default)s, from VIEWBOX_HL7_PORT)",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            listener = HL7Listener(
                (options["host"], options["port"]),
                max_message_bytes=settings.HL7_LISTENER_MAX_MESSAGE_BYTES,
                idle_timeout_seconds=settings.HL7_LISTENER_IDLE_TIMEOUT_SECONDS,
                max_connections=settings.HL7_LISTENER_MAX_CONNECTIONS,
            )
        except OSError as error:
            raise CommandError(
                f"could not listen on {options['host']}:{options['port']}: "
                f"{error.strerror or error}"
            ) from error

        def request_stop(number: int, frame: FrameType | None) -> None:
            # shutdown() waits for serve_forever to return, so it cannot run
            # in the thread that serve_forever runs in.
            threading.Thread(target=listener.shutdown).start()

        previous = {
            number: signal.signal(number, request_stop)
            for number in (signal.SIGTERM, signal.SIGINT)
        }
        logger.info("HL7 listener started on %s:%d", options["host"], listener.port)
        self.stdout.write(f"Listening for HL7 on {options['host']}:{listener.port}")
        try:
            listener.serve_forever()
        finally:
            listener.stopping.set()
            listener.server_close()
            for number, handler in previous.items():
                signal.signal(number, handler)
            logger.info("HL7 listener stopped")
