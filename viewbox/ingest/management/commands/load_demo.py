import tempfile
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandParser

from viewbox.ingest.demo import (
    issue_demo_codes,
    render_hl7_templates,
    write_demo_images,
)


class Command(BaseCommand):
    help = (
        "Load the directory and the demo patients through the HL7 and DICOM "
        "importers, then issue and print fresh demo I-Codes."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--codes-file",
            default=str(Path(settings.DATA_DIR) / "demo-codes.txt"),
            help="where to write the demo I-Codes for the start script to print",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        call_command("load_directory", stdout=self.stdout)
        with tempfile.TemporaryDirectory(prefix="viewbox-demo-") as folder:
            hl7_files = render_hl7_templates(Path(folder) / "hl7")
            call_command("import_hl7", *map(str, hl7_files), stdout=self.stdout)
            image_count = write_demo_images(Path(folder) / "dicom")
            self.stdout.write(f"Prepared {image_count} demo images.")
            call_command(
                "import_dicom", str(Path(folder) / "dicom"), stdout=self.stdout
            )

        lines = ["Demo patients (obviously fake), with a fresh I-Code per visit:", ""]
        for demo in issue_demo_codes():
            patient, first = demo.patient, demo.exams[0]
            location = first.visit.location
            lines.append(
                f"  {patient.given_name.title()} {patient.family_name.title()}"
            )
            lines.append(f"    I-Code:        {demo.code}")
            lines.append(f"    Date of birth: {patient.birth_date:%m/%d/%Y}")
            lines.append(
                f"    Sign-up:       sex {patient.sex or '-'}, "
                f"ZIP {patient.postal_code}, phone {patient.phone}"
            )
            lines.append(
                f"    Portal:        {location.state.name} > {location.group.name} > "
                f"{location.name}"
            )
            lines.append(
                f"    Exams:         {', '.join(e.description for e in demo.exams)}"
            )
            lines.append("")
        text = "\n".join(lines)
        Path(options["codes_file"]).write_text(text + "\n", encoding="utf-8")
        Path(options["codes_file"]).chmod(0o600)
        self.stdout.write(text)
