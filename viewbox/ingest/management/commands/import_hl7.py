from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from viewbox.ingest.hl7_import import ImportResult, import_file


class Command(BaseCommand):
    help = (
        "Import HL7 v2 messages (ADT^A04, ADT^A08, ORM^O01, ORU^R01) from files "
        "or folders. Prints one line per message and a summary. Rejected "
        "messages are stored for staff with the reason, and files that are not "
        "HL7 are copied to the quarantine. Exits with status 1 if anything was "
        "rejected or could not be read."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "paths",
            nargs="+",
            metavar="PATH",
            help="HL7 file, or folder read recursively in sorted order "
            "(files and folders whose names start with '.' are skipped)",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        counts = {"processed": 0, "duplicate": 0, "rejected": 0}
        unreadable = 0
        for path in self._find_files(options["paths"]):
            try:
                results = import_file(path)
            except OSError as error:
                self.stderr.write(
                    f"{path}: could not be read: {error.strerror or error}"
                )
                unreadable += 1
                continue
            for number, result in enumerate(results, start=1):
                counts[result.status] += 1
                self._write_result(path, number, result, options["verbosity"])

        self.stdout.write(
            f"{counts['processed']} processed, {counts['duplicate']} duplicate, "
            f"{counts['rejected']} rejected"
        )
        problems = []
        if counts["rejected"]:
            problems.append(
                f"{counts['rejected']} rejected, each kept with its reason as an "
                "HL7 message or a quarantined file"
            )
        if unreadable:
            problems.append(f"{unreadable} files could not be read")
        if problems:
            raise CommandError(". ".join(problems), returncode=1)

    def _write_result(
        self, path: Path, number: int, result: ImportResult, verbosity: int
    ) -> None:
        if result.quarantined:
            self.stderr.write(f"{path}: rejected: {result.error}")
            return
        label = (
            f"{path}: message {number} "
            f"({result.message_type or '?'} {result.control_id or '?'})"
        )
        if result.status == "rejected":
            self.stderr.write(f"{label} rejected: {result.error}")
        elif verbosity >= 1:
            self.stdout.write(f"{label} {result.status}")

    def _find_files(self, names: list[str]) -> list[Path]:
        """Return the files to import, raising CommandError for a missing path."""
        files: list[Path] = []
        for name in names:
            path = Path(name)
            if path.is_dir():
                files.extend(
                    found
                    for found in sorted(path.rglob("*"))
                    if found.is_file()
                    and not any(
                        part.startswith(".") for part in found.relative_to(path).parts
                    )
                )
            elif path.is_file():
                files.append(path)
            else:
                raise CommandError(f"{name}: no such file or folder")
        return files
