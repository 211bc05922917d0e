import signal
import time
from types import FrameType
from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from viewbox.downloads.maintenance import run_maintenance


class Command(BaseCommand):
    help = (
        "Warn before prepared downloads are deleted, delete expired ones and "
        "requeue those whose worker stopped. Run it every minute, or once "
        "with --every to keep it running."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--every",
            type=int,
            default=0,
            help="run again after this many seconds until stopped (default: run once)",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        self.stopping = False

        def stop(signum: int, frame: FrameType | None) -> None:
            self.stopping = True

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        while True:
            counts = run_maintenance()
            if options["verbosity"] > 1 or any(counts.values()):
                self.stdout.write(
                    f"{counts['warned']} warned, {counts['expired']} expired, "
                    f"{counts['requeued']} requeued"
                )
            if not options["every"]:
                return
            # Sleep in short steps so that a stop signal ends the loop soon.
            deadline = time.monotonic() + options["every"]
            while not self.stopping and time.monotonic() < deadline:
                time.sleep(0.5)
            if self.stopping:
                return
