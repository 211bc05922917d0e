"""Staff pages of the front desk: find a visit and print its Portal Pass,
approve or decline Get Help requests, and attach images that wait for
their order.

Search terms travel in POST bodies, never in URLs, because names and dates
of birth are health information.
"""

import functools
import logging
import uuid
from collections.abc import Callable
from typing import Any
from zoneinfo import ZoneInfo

from django.contrib import admin, messages
from django.contrib.auth.views import redirect_to_login
from django.core.exceptions import PermissionDenied
from django.core.paginator import Paginator
from django.db.models import QuerySet
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.utils.translation import gettext as _
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from viewbox.frontdesk import actions, queries
from viewbox.frontdesk.forms import PrintPassForm, VisitSearchForm
from viewbox.frontdesk.models import HelpRequest
from viewbox.frontdesk.portal_pass import render_portal_pass
from viewbox.frontdesk.two_factor import is_verified_staff
from viewbox.records.models import Exam, Study, Visit

logger = logging.getLogger(__name__)

View = Callable[..., HttpResponse]
FRONT_DESK_PERMISSION = "frontdesk.use_front_desk"
# Listing waiting studies reads one DICOM header per study shown.
WAITING_PAGE_SIZE = 25


def staff_required(view: View) -> View:
    """Let through staff who passed both log-in steps and work at the front desk.

    Other staff, such as auditors, get 403: printing a pass issues an I-Code
    that opens a patient's exams.
    """

    @functools.wraps(view)
    def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        if not is_verified_staff(request):
            return redirect_to_login(request.get_full_path(), reverse("staff_log_in"))
        if not request.user.has_perm(FRONT_DESK_PERMISSION):
            logger.warning(
                "Front desk page rejected for staff user %s without permission",
                request.user.pk,
            )
            raise PermissionDenied
        return view(request, *args, **kwargs)

    return wrapper


def _render(
    request: HttpRequest, template: str, context: dict[str, Any], status: int = 200
) -> HttpResponse:
    context = {**admin.site.each_context(request), **context}
    return render(request, template, context, status=status)


def _portal_url(request: HttpRequest, visit: Visit) -> str:
    """Return the group's regional portal address, or its page on this site."""
    group = visit.location.group
    if group.portal_url:
        return group.portal_url
    return request.build_absolute_uri(reverse("viewer:group_portal", args=[group.slug]))


def _help_sign_in_url(request: HttpRequest, help_request_id: int) -> str:
    """Return the sign-in page of the location a Get Help request came from."""
    help_request = (
        HelpRequest.objects.select_related("location__group")
        .filter(pk=help_request_id)
        .first()
    )
    if help_request is None:
        return request.build_absolute_uri(reverse("viewer:start"))
    location = help_request.location
    path = reverse("viewer:sign_in_choices", args=[location.group.slug, location.slug])
    return request.build_absolute_uri(path)


@require_http_methods(["GET", "POST"])
@staff_required
def find_visit(request: HttpRequest) -> HttpResponse:
    form = VisitSearchForm(request.POST if request.method == "POST" else None)
    visits = None
    if request.method == "POST" and form.is_valid():
        visits = queries.search_visits(**form.cleaned_data)
    context = {"title": _("Front desk"), "form": form, "visits": visits}
    return _render(request, "frontdesk/find_visit.html", context)


def _visit_or_404(visit_id: int) -> Visit:
    return get_object_or_404(
        Visit.objects.select_related("patient", "location__group", "location__state"),
        pk=visit_id,
    )


@require_GET
@staff_required
def visit_detail(request: HttpRequest, visit_id: int) -> HttpResponse:
    visit = _visit_or_404(visit_id)
    form = PrintPassForm(exams=_printable_exams(visit))
    return _render(request, "frontdesk/visit.html", _visit_context(visit, form))


def _printable_exams(visit: Visit) -> QuerySet[Exam]:
    """Return the exams a pass can open: all but the cancelled ones."""
    exams = visit.exams.exclude(status=Exam.Status.CANCELLED)
    return exams.order_by("accession_number")


def _visit_context(visit: Visit, form: PrintPassForm) -> dict[str, Any]:
    return {
        "title": _("Print a Portal Pass"),
        "visit": visit,
        "form": form,
        "icodes": visit.icodes.order_by("-issued_at").prefetch_related("exams"),
        # The admin's base template overwrites a context variable "time_zone".
        "local_zone": ZoneInfo(visit.location.state.time_zone),
    }


@require_POST
@staff_required
def print_pass(request: HttpRequest, visit_id: int) -> HttpResponse:
    """Issue new I-Codes and return the pass; the codes exist only in this PDF."""
    visit = _visit_or_404(visit_id)
    form = PrintPassForm(request.POST, exams=_printable_exams(visit))
    if not form.is_valid():
        return _render(
            request, "frontdesk/visit.html", _visit_context(visit, form), 400
        )

    codes = actions.issue_pass_codes(
        request.user,  # type: ignore[arg-type]
        visit,
        list(form.cleaned_data["exams"]),
        per_exam=form.cleaned_data["per_exam"],
        revoke_older=form.cleaned_data["revoke_older"],
    )
    pdf = render_portal_pass(visit, codes, _portal_url(request, visit))
    response = HttpResponse(pdf, content_type="application/pdf")
    # A neutral name: the file may sit in a shared downloads folder.
    response["Content-Disposition"] = 'attachment; filename="portal-pass.pdf"'
    response["Cache-Control"] = "no-store"
    return response


@require_GET
@staff_required
def help_queue(request: HttpRequest) -> HttpResponse:
    rows = [
        {
            "request": help_request,
            "icode": queries.matching_icode(help_request),
            "local_zone": ZoneInfo(help_request.location.state.time_zone),
        }
        for help_request in queries.pending_help_requests()
    ]
    context = {"title": _("Get Help requests"), "rows": rows}
    return _render(request, "frontdesk/help_queue.html", context)


@require_POST
@staff_required
def approve_help(request: HttpRequest, help_request_id: int) -> HttpResponse:
    try:
        actions.approve_help_request(
            request.user,  # type: ignore[arg-type]
            help_request_id,
            _help_sign_in_url(request, help_request_id),
        )
    except actions.NoMatch:
        messages.error(
            request, _("No match: the code, name and date of birth fit no I-Code.")
        )
    except actions.NotPending:
        messages.error(request, _("This request was already answered."))
    except HelpRequest.DoesNotExist as error:
        raise Http404("Not found") from error
    else:
        messages.success(request, _("Approved: the I-Code works for 90 more days."))
    return redirect("frontdesk:help_queue")


@require_POST
@staff_required
def decline_help(request: HttpRequest, help_request_id: int) -> HttpResponse:
    try:
        actions.decline_help_request(
            request.user,  # type: ignore[arg-type]
            help_request_id,
            _help_sign_in_url(request, help_request_id),
        )
    except actions.NotPending:
        messages.error(request, _("This request was already answered."))
    except HelpRequest.DoesNotExist as error:
        raise Http404("Not found") from error
    else:
        messages.success(request, _("Declined: the person is told to call."))
    return redirect("frontdesk:help_queue")


@require_GET
@staff_required
def unmatched_images(request: HttpRequest) -> HttpResponse:
    paginator = Paginator(queries.unmatched_studies_with_counts(), WAITING_PAGE_SIZE)
    page = paginator.get_page(request.GET.get("page"))
    context = {
        "title": _("Images waiting for an order"),
        "page": page,
        "studies": queries.describe_waiting_studies(page),
    }
    return _render(request, "frontdesk/unmatched_images.html", context)


def _choose_exam_context(
    study: Study,
    found: queries.StudyPatient | None,
    accession_number: str,
    chosen: Exam | None = None,
    mismatch: queries.PatientMismatch | None = None,
) -> dict[str, Any]:
    exams = queries.exams_by_accession(accession_number) if accession_number else None
    return {
        "title": _("Attach images to an exam"),
        "study": study,
        "found": found,
        "accession_number": accession_number,
        "rows": (
            [(exam, queries.compare_patient_details(found, exam)) for exam in exams]
            if exams is not None
            else None
        ),
        "chosen": chosen,
        "mismatch": mismatch,
    }


@require_http_methods(["GET", "POST"])
@staff_required
def choose_exam(request: HttpRequest, study_id: int) -> HttpResponse:
    """List the exams with a typed accession number, so staff see whom they pick."""
    study = get_object_or_404(queries.unmatched_studies(), pk=study_id)
    accession_number = request.POST.get("accession_number", "").strip()
    found = queries.study_patient(study)
    context = _choose_exam_context(study, found, accession_number)
    return _render(request, "frontdesk/choose_exam.html", context)


@require_POST
@staff_required
def attach_images(request: HttpRequest, study_id: int) -> HttpResponse:
    study = get_object_or_404(queries.unmatched_studies(), pk=study_id)
    try:
        exam_id = uuid.UUID(request.POST.get("exam", ""))
    except ValueError as error:
        raise Http404("Not found") from error
    exam = get_object_or_404(
        Exam.objects.select_related("visit__patient"), public_id=exam_id
    )

    # Images of one patient on another's exam would show them to the wrong
    # person, so a mismatch needs an explicit confirmation. The page comes
    # back with the same choice and names the details that differ.
    found = queries.study_patient(study)
    mismatch = queries.compare_patient_details(found, exam)
    if mismatch and request.POST.get("confirm_mismatch") != "on":
        logger.info(
            "Staff member %d must confirm attaching study %d to exam %d",
            request.user.pk,
            study.pk,
            exam.pk,
        )
        context = _choose_exam_context(
            study, found, exam.accession_number, chosen=exam, mismatch=mismatch
        )
        return _render(request, "frontdesk/choose_exam.html", context, 400)

    try:
        actions.attach_study(request.user, study.pk, exam)  # type: ignore[arg-type]
    except actions.StudyAlreadyAttached:
        messages.error(request, _("These images were attached in the meantime."))
    else:
        messages.success(request, _("The images are attached to the exam."))
    return redirect("frontdesk:unmatched_images")
