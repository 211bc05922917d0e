import signal
import time
from pathlib import Path
from types import FrameType
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from viewbox.accounts.mail_catcher import MailCatcher


class Command(BaseCommand):
    help = (
        "Receive the portal's email on a loopback address and save each message "
        "as an .eml file, for the demo's mailbox page. Runs until SIGTERM or "
        "Ctrl-C. Never use it in production: it delivers nothing."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--port",
            type=int,
            default=_portal_smtp_port(),
            help="TCP port to listen on (default: the port of MAILERS['default'], "
            "%(default)s); 0 picks a free one",
        )
        parser.add_argument(
            "--host",
            default="127.0.0.1",
            help="loopback IP address to listen on (default: %(default)s)",
        )
        parser.add_argument(
            "--folder",
            type=Path,
            default=settings.DATA_DIR / "mailbox",
            help="folder the messages are saved in (default: %(default)s)",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        stopping = False

        def request_stop(signum: int, frame: FrameType | None) -> None:
            # Only a flag: an Event's set() here could wait for the lock that
            # the interrupted main thread holds in wait().
            nonlocal stopping
            stopping = True

        try:
            catcher = MailCatcher(options["host"], options["port"], options["folder"])
            catcher.start()
        except (ValueError, OSError) as error:
            raise CommandError(
                f"Could not listen on {options['host']}:{options['port']}: {error}. "
                "Choose another --port and set VIEWBOX_EMAIL_PORT to match."
            ) from error

        previous = {
            number: signal.signal(number, request_stop)
            for number in (signal.SIGTERM, signal.SIGINT)
        }
        try:
            self.stdout.write(
                f"Mail catcher listening on {catcher.host}:{catcher.port}, "
                f"saving to {catcher.folder}"
            )
            self.stdout.flush()
            while not stopping:
                time.sleep(0.2)
        finally:
            catcher.stop()
            for number, handler in previous.items():
                signal.signal(number, handler)
        self.stdout.write("Mail catcher stopped")


def _portal_smtp_port() -> int:
    """Return the port of the portal's default mailer, or SMTP's standard 25."""
    mailers: dict[str, Any] = getattr(settings, "MAILERS", {})
    options = mailers.get("default", {}).get("OPTIONS", {})
    return int(options.get("port", 25))
