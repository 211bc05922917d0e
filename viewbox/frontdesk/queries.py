"""Look-ups for the front desk. Only verified staff reach the views that call them."""

import re
import unicodedata
from datetime import date

from django.db.models import Q, QuerySet
from django.utils import timezone

from viewbox.access.models import ICode
from viewbox.frontdesk.models import HelpRequest
from viewbox.records.models import Exam, Study, Visit

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
        "location__group"
    )


def unmatched_studies() -> QuerySet[Study]:
    """Return studies whose images wait for an order, oldest first."""
    return Study.objects.filter(exam__isnull=True).order_by("received_at", "pk")


def exams_by_accession(accession_number: str) -> QuerySet[Exam]:
    """Return the exams with an accession number, in every imaging group."""
    return Exam.objects.filter(
        accession_number=accession_number.strip()
    ).select_related("visit__patient", "visit__location__group")


def icode_is_expired(icode: ICode) -> bool:
    return icode.expires_at <= timezone.now()
