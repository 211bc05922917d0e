"""Look-ups for the front desk. Only verified staff reach the views that call them."""

import logging
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime

import pydicom
from django.core.files.storage import default_storage
from django.db.models import Count, Min, Prefetch, Q, QuerySet
from django.utils import timezone
from pydicom.errors import InvalidDicomError

from viewbox.access.models import ICode
from viewbox.frontdesk.models import HelpRequest
from viewbox.records.models import Exam, Instance, Series, Study, Visit

logger = logging.getLogger(__name__)

MAX_RESULTS = 50


def search_visits(
    name: str = "", birth_date: date | None = None, accession_number: str = ""
) -> QuerySet[Visit]:
    """Return visits matching every given criterion, newest first.

    Each word of ``name`` must start the given or the family name, so
    "ann lee" finds Ann Marie Leeds. With no criterion, nothing is returned.
    """
    visits = Visit.objects.select_related("patient", "location__group")
    if not (name.strip() or birth_date or accession_number.strip()):
        return visits.none()
    for word in name.split():
        visits = visits.filter(
            Q(patient__given_name__istartswith=word)
            | Q(patient__family_name__istartswith=word)
            | Q(patient__given_name__icontains=" " + word)
            | Q(patient__family_name__icontains=" " + word)
        )
    if birth_date is not None:
        visits = visits.filter(patient__birth_date=birth_date)
    if accession_number.strip():
        visits = visits.filter(exams__accession_number=accession_number.strip())
    return visits.distinct().order_by("-date_of_service", "-pk")[:MAX_RESULTS]


def name_words(name: str) -> list[str]:
    """Return the words of a name without case, accents or punctuation, sorted."""
    decomposed = unicodedata.normalize("NFKD", name)
    plain = "".join(c for c in decomposed if not unicodedata.combining(c))
    return sorted(re.sub(r"[^\w]+", " ", plain.casefold()).split())


def matching_icode(help_request: HelpRequest) -> ICode | None:
    """Return the unrevoked I-Code that a Get Help request is about, or None.

    The typed code must match by its hash, at the request's imaging group,
    and the typed name and date of birth must be those of the visit's
    patient. The name matches when it has the same words as the given and
    family names, in any order, case and accents aside.
    """
    if not help_request.code_hash:
        return None
    icode = (
        ICode.objects.select_related("visit__patient", "visit__location")
        .filter(
            code_hash=help_request.code_hash,
            revoked_at__isnull=True,
            visit__location__group_id=help_request.location.group_id,
        )
        .first()
    )
    if icode is None:
        return None
    patient = icode.visit.patient
    if patient.birth_date != help_request.birth_date:
        return None
    if name_words(help_request.name) != name_words(patient.display_name):
        return None
    return icode


def pending_help_requests() -> QuerySet[HelpRequest]:
    return HelpRequest.objects.filter(status=HelpRequest.Status.PENDING).select_related(
        "location__group", "location__state"
    )


def unmatched_studies() -> QuerySet[Study]:
    """Return studies whose images wait for an order, oldest first."""
    return Study.objects.filter(exam__isnull=True).order_by("received_at", "pk")


def unmatched_studies_with_counts() -> QuerySet[Study]:
    """Return the waiting studies with their instance count and series.

    Each study gets ``instance_count`` and ``first_instance_id`` (the
    instance whose header ``study_patient`` reads), and its series come in
    one extra query for the whole list.
    """
    series = Series.objects.only("pk", "study_id", "modality")
    return (
        unmatched_studies()
        .annotate(
            instance_count=Count("series__instances"),
            first_instance_id=Min("series__instances__pk"),
        )
        .prefetch_related(Prefetch("series", queryset=series))
    )


def exams_by_accession(accession_number: str) -> QuerySet[Exam]:
    """Return the exams with an accession number, in every imaging group."""
    return Exam.objects.filter(
        accession_number=accession_number.strip()
    ).select_related("visit__patient", "visit__location__group")


def icode_is_expired(icode: ICode) -> bool:
    return icode.expires_at <= timezone.now()


@dataclass(frozen=True)
class StudyPatient:
    """The patient named in the header of one of a study's stored files."""

    name_words: frozenset[str]
    display_name: str
    birth_date: date | None
    description: str


@dataclass(frozen=True)
class WaitingStudy:
    """A study waiting for its order, with the details that distinguish it."""

    study: Study
    # None when the study has no instance or its header cannot be read.
    patient: StudyPatient | None
    modalities: list[str]


@dataclass(frozen=True)
class PatientMismatch:
    """Flags for the images' patient details that disagree with an exam's patient."""

    unreadable: bool = False
    name: bool = False
    birth_date: bool = False

    def __bool__(self) -> bool:
        return self.unreadable or self.name or self.birth_date


def study_patient(study: Study) -> StudyPatient | None:
    """Return the patient details in the header of one of the study's files."""
    instance = Instance.objects.filter(series__study=study).order_by("pk").first()
    if instance is None:
        return None
    return read_study_patient(instance)


def describe_waiting_studies(studies: Sequence[Study]) -> list[WaitingStudy]:
    """Read the patient details of studies from ``unmatched_studies_with_counts``.

    One query fetches the first instance of every study. Then one header is
    read per study, so callers pass one page of studies, not all of them.
    """
    first_instance_ids = {
        study.pk: study.first_instance_id  # type: ignore[attr-defined]
        for study in studies
    }
    instances = Instance.objects.in_bulk(
        [pk for pk in first_instance_ids.values() if pk is not None]
    )
    described = []
    for study in studies:
        instance = instances.get(first_instance_ids[study.pk])
        modalities = {series.modality for series in study.series.all()}
        described.append(
            WaitingStudy(
                study=study,
                patient=read_study_patient(instance) if instance else None,
                modalities=sorted(modality for modality in modalities if modality),
            )
        )
    return described


def read_study_patient(instance: Instance) -> StudyPatient | None:
    """Return the patient details in the header of one stored file."""
    try:
        with default_storage.open(instance.file, "rb") as handle:
            header = pydicom.dcmread(handle, stop_before_pixels=True)
    except (OSError, InvalidDicomError) as error:
        logger.warning("Cannot read the header of instance %d: %s", instance.pk, error)
        return None
    raw_name = str(header.get("PatientName", "") or "")
    words = frozenset(_name_words(raw_name))
    # A name may have ideographic and phonetic groups after "=" (PS3.5
    # section 6.2.1.2); the first, alphabetic one is shown.
    shown_name = raw_name.split("=")[0]
    birth = None
    try:
        value = str(header.get("PatientBirthDate", "") or "")
        birth = datetime.strptime(value, "%Y%m%d").date() if value else None
    except ValueError:
        birth = None
    display = " ".join(part for part in reversed(shown_name.split("^")[:2]) if part)
    return StudyPatient(
        name_words=words,
        display_name=display,
        birth_date=birth,
        description=str(header.get("StudyDescription", "") or ""),
    )


def compare_patient_details(found: StudyPatient | None, exam: Exam) -> PatientMismatch:
    """Compare the images' name and birth date with the exam's patient.

    Images without readable details count as differing, so that staff
    confirm the choice. The name agrees when every word of the patient's
    family and given names is in the images' name, so that a relative with
    the same family name needs a confirmation. Images without a birth date
    agree with any birth date.
    """
    if found is None:
        return PatientMismatch(unreadable=True)
    patient = exam.visit.patient
    patient_words = _name_words(patient.family_name) | _name_words(patient.given_name)
    return PatientMismatch(
        name=not patient_words <= found.name_words,
        birth_date=(
            found.birth_date is not None and found.birth_date != patient.birth_date
        ),
    )


def _name_words(name: str) -> set[str]:
    return {word.casefold() for word in re.split(r"[\^=\s,-]+", name) if word}
