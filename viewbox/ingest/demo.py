"""Demo records: real images and realistic HL7 messages for fake patients.

The demo goes through the same import paths as production: the HL7
messages in ``demo/hl7`` are imported first, then real DICOM files from the
pydicom, pydicom-data and mammograms packages, given the identifiers of the
demo orders. Times in the messages are relative to now, so that the report
on hold stays on hold whenever the demo is loaded.
"""

import importlib.util
import json
import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pydicom
from django.conf import settings
from django.utils import timezone
from pydicom.uid import generate_uid

from viewbox.access.actions import issue_icode
from viewbox.records.models import Exam, Patient

DEMO_DIR = Path(settings.BASE_DIR) / "demo"
_PLACEHOLDER = re.compile(r"\{\{now-(\d+)([hd])\}\}")


@dataclass(frozen=True)
class DemoCode:
    patient: Patient
    exams: list[Exam]
    code: str


def render_hl7_templates(target: Path, now: datetime | None = None) -> list[Path]:
    """Write the demo messages with their ``{{now-3h}}`` times filled in."""
    now = now or timezone.now()
    target.mkdir(parents=True, exist_ok=True)

    def replace(match: re.Match[str]) -> str:
        amount, unit = int(match.group(1)), match.group(2)
        delta = timedelta(hours=amount) if unit == "h" else timedelta(days=amount)
        return (now - delta).strftime("%Y%m%d%H%M%S+0000")

    written = []
    for template in sorted((DEMO_DIR / "hl7").glob("*.hl7")):
        text = _PLACEHOLDER.sub(replace, template.read_text(encoding="utf-8"))
        path = target / template.name
        # HL7 v2 separates segments with a carriage return.
        path.write_text(
            text.replace("\r\n", "\n").replace("\n", "\r"), encoding="utf-8"
        )
        written.append(path)
    return written


def package_file(package: str, relative: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise FileNotFoundError(f"package {package!r} is not installed")
    path = Path(spec.origin).parent / relative
    if not path.is_file():
        raise FileNotFoundError(f"{relative} is missing from package {package!r}")
    return path


def _manifest() -> dict[str, Any]:
    return json.loads((DEMO_DIR / "images.json").read_text(encoding="utf-8"))


def write_demo_images(target: Path) -> int:
    """Copy the demo images into ``target`` with the demo orders' identifiers.

    UIDs are derived from the demo identifiers, so writing the images twice
    gives the same files and importing them again stores nothing new.
    Pixel data is copied as it is, in its original transfer syntax.
    """
    target.mkdir(parents=True, exist_ok=True)
    count = 0
    for exam_item in _manifest()["exams"]:
        accession = exam_item["accession_number"]
        exam = Exam.objects.select_related("visit__patient").get(
            accession_number=accession, visit__patient__mrn=exam_item["patient_id"]
        )
        patient = exam.visit.patient
        study_uid = generate_uid(entropy_srcs=["viewbox-demo", accession])
        for series_number, series_item in enumerate(exam_item["series"], start=1):
            series_uid = generate_uid(entropy_srcs=[study_uid, str(series_number)])
            for instance_number, (package, relative) in enumerate(
                series_item["files"], start=1
            ):
                ds = pydicom.dcmread(package_file(package, relative))
                sop_uid = generate_uid(entropy_srcs=[series_uid, str(instance_number)])
                ds.PatientName = f"{patient.family_name}^{patient.given_name}"
                ds.PatientID = patient.mrn
                ds.PatientBirthDate = patient.birth_date.strftime("%Y%m%d")
                ds.AccessionNumber = accession
                ds.StudyInstanceUID = study_uid
                ds.SeriesInstanceUID = series_uid
                ds.SOPInstanceUID = sop_uid
                ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
                ds.SeriesNumber = series_number
                ds.InstanceNumber = instance_number
                ds.SeriesDescription = series_item["description"]
                ds.StudyDate = exam.visit.date_of_service.strftime("%Y%m%d")
                # Every image of a study carries the same study time, as a
                # modality writes it; some sample files lack one.
                if exam.performed_at is not None:
                    zone = ZoneInfo(exam.visit.location.state.time_zone)
                    local = timezone.localtime(exam.performed_at, zone)
                    ds.StudyTime = local.strftime("%H%M%S")
                ds.StudyDescription = exam.description
                name = f"{accession}-{series_number:02d}-{instance_number:03d}.dcm"
                ds.save_as(target / name, enforce_file_format=True)
                count += 1
    return count


def issue_demo_codes() -> list[DemoCode]:
    """Issue fresh I-Codes for the demo visits, revoking the demo's older ones."""
    issued = []
    now = timezone.now()
    for item in _manifest()["icodes"]:
        exams = list(
            Exam.objects.select_related("visit__patient", "visit__location")
            .filter(
                visit__patient__mrn=item["patient_id"],
                accession_number__in=item["accessions"],
            )
            .order_by("accession_number")
        )
        visit = exams[0].visit
        visit.icodes.filter(revoked_at__isnull=True, exams__in=exams).update(
            revoked_at=now
        )
        _, code = issue_icode(visit, exams)
        issued.append(DemoCode(patient=visit.patient, exams=exams, code=code))
    return issued
