import json
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from viewbox.directory.loading import DirectoryFileError, load_directory

DEFAULT_FILE = Path(__file__).resolve().parents[2] / "data" / "directory.json"


class Command(BaseCommand):
    help = "Load states, imaging groups and locations from a JSON file."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "file", nargs="?", default=str(DEFAULT_FILE), help="directory JSON file"
        )

    def handle(self, *args: Any, **options: Any) -> None:
        path = Path(options["file"])
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            counts = load_directory(data)
        except (OSError, json.JSONDecodeError, DirectoryFileError) as error:
            raise CommandError(f"Cannot load {path.name}: {error}") from error
        self.stdout.write(
            f"Loaded {counts.states} states, {counts.groups} imaging groups "
            f"and {counts.locations} locations from {path.name}."
        )
