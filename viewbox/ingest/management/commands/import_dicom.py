import logging
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from viewbox.ingest.dicom_import import UnusableDicomError, import_dicom_file
from viewbox.ingest.models import QuarantinedFile
from viewbox.ingest.quarantine import quarantine_file

logger = logging.getLogger(__name__)

# A DICOMDIR indexes files on media; it is not an image to store.
_SKIPPED_NAMES = {"DICOMDIR"}


class Command(BaseCommand):
    help = (
        "Import DICOM files from folders. Unusable files are moved to the "
        "quarantine folder; the others are stored and matched to exams."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "paths", nargs="+", help="files or folders, read recursively"
        )
        parser.add_argument(
            "--keep-rejected",
            action="store_true",
            help="copy rejected files to the quarantine instead of moving them",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        counts = {"stored": 0, "duplicate": 0, "rejected": 0}
        for path in self._files(options["paths"]):
            try:
                result = import_dicom_file(path)
            except UnusableDicomError as error:
                kept = quarantine_file(
                    path,
                    QuarantinedFile.Kind.DICOM,
                    str(error),
                    move=not options["keep_rejected"],
                )
                # File names may carry patient names; the log gets the id.
                logger.warning(
                    "Rejected DICOM file, quarantined as %d: %s", kept.pk, error
                )
                self.stderr.write(f"{path}: rejected: {error}")
                counts["rejected"] += 1
                continue
            counts[result.status] += 1
            if options["verbosity"] > 1:
                self.stdout.write(f"{path}: {result.status}")
        self.stdout.write(
            f"{counts['stored']} stored, {counts['duplicate']} duplicate, "
            f"{counts['rejected']} rejected"
        )
        if counts["rejected"]:
            raise CommandError(
                f"{counts['rejected']} files were rejected and kept in the quarantine",
                returncode=1,
            )

    def _files(self, paths: list[str]) -> list[Path]:
        files: list[Path] = []
        for name in paths:
            path = Path(name)
            if path.is_dir():
                files.extend(p for p in sorted(path.rglob("*")) if p.is_file())
            elif path.is_file():
                files.append(path)
            else:
                raise CommandError(f"{name}: no such file or folder")
        return [p for p in files if p.name.upper() not in _SKIPPED_NAMES]
