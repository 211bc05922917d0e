import logging
from collections.abc import Callable
from functools import wraps
from typing import Any
from zoneinfo import ZoneInfo

from django.conf import settings
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseBase
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.utils.translation import gettext as _
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from viewbox.access import actions as access_actions
from viewbox.access.models import ICode
from viewbox.access.scope import (
    SESSION_SHARE_ENDED,
    SESSION_SHARE_ID,
    Requester,
    access_exam_by_public_id,
    access_instance_by_public_id,
    exams_for,
    images_visible,
    instances_for,
    requester_from_request,
)
from viewbox.audit.actions import record_event
from viewbox.directory.models import ImagingGroup, Location, State
from viewbox.directory.queries import location_or_404
from viewbox.downloads.forms import DownloadForm
from viewbox.downloads.queries import latest_packages, ready_package_exam_ids
from viewbox.records.models import Exam, Instance
from viewbox.records.release import report_state
from viewbox.sharing.models import ShareLink
from viewbox.viewer.forms import ICodeForm
from viewbox.viewer.previews import preview_jpeg
from viewbox.viewer.rendering import RenderError

logger = logging.getLogger(__name__)

SESSION_GROUP_SLUG = "viewbox_group_slug"
RECIPIENT_COOKIE = "viewbox_recipient"

View = Callable[..., HttpResponseBase]


def patient_required(view: View) -> View:
    """Pass the signed-in requester to the view, or send the browser home."""

    @wraps(view)
    def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponseBase:
        requester = requester_from_request(request)
        if requester is None and request.session.get(SESSION_SHARE_ENDED):
            # A recipient whose link expired or was revoked meanwhile.
            return redirect("sharing:ended")
        if requester is None:
            # A browser that still sends a session cookie had a session that
            # ended; tell the person why they are back at the start, or for
            # a recipient, how to open the link again.
            if settings.SESSION_COOKIE_NAME in request.COOKIES:
                if RECIPIENT_COOKIE in request.COOKIES:
                    return redirect(reverse("sharing:left") + "?session=ended")
                return redirect(reverse("viewer:start") + "?session=ended")
            return redirect("viewer:start")
        return view(request, requester, *args, **kwargs)

    return wrapper


def _audit_view(requester: Requester, action: str, exam: Exam | None = None) -> None:
    record_event(
        action,
        actor_kind=requester.kind,
        actor_id=requester.actor_id,
        patient_id=requester.patient_id,
        exam_id=exam.pk if exam else None,
        client_address=requester.client_address,
    )


# Finding the portal: state, imaging group, location.


@require_GET
def start(request: HttpRequest) -> HttpResponse:
    states = State.objects.filter(groups__isnull=False).distinct()
    context = {"states": states, "session_ended": request.GET.get("session") == "ended"}
    return render(request, "viewer/start.html", context)


@require_GET
def choose_group(request: HttpRequest, state_code: str) -> HttpResponse:
    state = get_object_or_404(State, code=state_code.upper())
    return render(
        request,
        "viewer/choose_group.html",
        {"state": state, "groups": state.groups.all()},
    )


@require_GET
def group_portal(request: HttpRequest, group_slug: str) -> HttpResponse:
    group = get_object_or_404(
        ImagingGroup.objects.select_related("state"), slug=group_slug
    )
    context = {
        "group": group,
        "signed_out": request.GET.get("signed_out") == "1",
        "session_ended": request.GET.get("session") == "ended",
    }
    return render(request, "viewer/group_portal.html", context)


@require_GET
def choose_location(request: HttpRequest, group_slug: str) -> HttpResponse:
    group = get_object_or_404(ImagingGroup, slug=group_slug)
    return render(
        request,
        "viewer/choose_location.html",
        {"group": group, "locations": group.locations.all()},
    )


@require_GET
def sign_in_choices(
    request: HttpRequest, group_slug: str, location_slug: str
) -> HttpResponse:
    location = location_or_404(group_slug, location_slug)
    return render(
        request,
        "viewer/sign_in_choices.html",
        {"location": location, "group": location.group},
    )


@require_http_methods(["GET", "POST"])
def icode_sign_in(
    request: HttpRequest, group_slug: str, location_slug: str
) -> HttpResponse:
    location = location_or_404(group_slug, location_slug)
    form = ICodeForm(request.POST if request.method == "POST" else None)
    problem = None
    if request.method == "POST" and form.is_valid():
        result = access_actions.sign_in_with_icode(
            request,
            location.group,
            form.cleaned_data["code"],
            form.cleaned_data["birth_date"],
        )
        if result is access_actions.SignInResult.SUCCESS:
            request.session[SESSION_GROUP_SLUG] = location.group.slug
            return redirect("viewer:exam_list")
        problem = result.value
    context = {
        "location": location,
        "group": location.group,
        "form": form,
        "problem": problem,
    }
    if problem == "throttled":
        context["wait_minutes"] = access_actions.minutes_until_unlocked(
            request, form.cleaned_data["code"]
        )
    status = 200
    if problem == "throttled":
        status = 429
    elif problem is not None or (request.method == "POST" and not form.is_valid()):
        status = 400
    return render(request, "viewer/icode_sign_in.html", context, status=status)


@require_http_methods(["GET", "POST"])
def sign_out_or_confirm(request: HttpRequest) -> HttpResponse:
    """Sign out on POST; on GET, offer the button, since a link must not sign out."""
    if request.method == "GET":
        return render(request, "viewer/sign_out.html")
    return _sign_out(request)


def _sign_out(request: HttpRequest) -> HttpResponse:
    group_slug = request.session.get(SESSION_GROUP_SLUG)
    recipient = SESSION_SHARE_ID in request.session
    access_actions.sign_out(request)
    if recipient:
        target = reverse("sharing:left")
    elif group_slug:
        target = reverse("viewer:group_portal", args=[group_slug])
    else:
        target = reverse("viewer:start")
    # The page's timer signs out an idle session with reason "idle".
    idle = request.POST.get("reason") == "idle"
    response = redirect(target + ("?session=ended" if idle else "?signed_out=1"))
    # Ask the browser to drop everything it kept from the session as well.
    response["Clear-Site-Data"] = '"cache", "cookies", "storage"'
    return response


@require_POST
@patient_required
def keep_alive(request: HttpRequest, requester: Requester) -> HttpResponse:
    """Extend a session whose owner confirmed they are still there."""
    return HttpResponse(status=204)


def csrf_failure(request: HttpRequest, reason: str = "") -> HttpResponse:
    """Explain a refused form in words a patient can act on."""
    logger.warning("Form rejected by the CSRF check: %s", reason)
    return render(request, "viewer/csrf_failure.html", status=403)


# The exam view: list on the left, three tabs on the right.


def _local_time_zone(exam: Exam) -> ZoneInfo:
    return ZoneInfo(exam.visit.location.state.time_zone)


def exam_context(
    request: HttpRequest, requester: Requester, exam: Exam | None, tab: str
) -> dict[str, Any]:
    """Return what every page of the exam view shows: the list and the tabs."""
    group = ImagingGroup.objects.filter(
        slug=request.session.get(SESSION_GROUP_SLUG)
    ).first()
    exams = list(exams_for(requester))
    return {
        "exams": exams,
        "ready_exam_ids": (
            ready_package_exam_ids(exams) if requester.can_download else set()
        ),
        "exam": exam,
        "tab": tab,
        "group": group,
        "time_zone": _local_time_zone(exam) if exam else None,
        "session_idle_seconds": settings.SESSION_COOKIE_AGE,
        "sign_up_location": _sign_up_location(requester),
        "requester": requester,
        "shared_by": _shared_by(requester),
    }


def _shared_by(requester: Requester) -> ShareLink | None:
    """Return the link a recipient came in with, for the page's banner."""
    if not requester.is_recipient:
        return None
    return ShareLink.objects.select_related("patient").get(pk=requester.actor_id)


def _sign_up_location(requester: Requester) -> Location | None:
    """Return where an I-Code holder can create an account, or None."""
    if requester.kind != "icode":
        return None
    icode = ICode.objects.select_related("visit__location__group").get(
        pk=requester.actor_id
    )
    return icode.visit.location


@require_GET
@patient_required
def exam_list(request: HttpRequest, requester: Requester) -> HttpResponse:
    exams = exams_for(requester)
    if len(exams) == 1:
        return redirect("viewer:exam_summary", exams[0].public_id)
    _audit_view(requester, "exam.list")
    return render(
        request, "viewer/exam_list.html", exam_context(request, requester, None, "")
    )


@require_GET
@patient_required
def exam_summary(
    request: HttpRequest, requester: Requester, exam_id: str
) -> HttpResponse:
    exam = access_exam_by_public_id(requester, exam_id)
    _audit_view(requester, "exam.summary", exam)
    context = exam_context(request, requester, exam, "summary")
    context["report"] = report_state(exam)
    return render(request, "viewer/exam_summary.html", context)


@require_GET
@patient_required
def exam_report(
    request: HttpRequest, requester: Requester, exam_id: str
) -> HttpResponse:
    exam = access_exam_by_public_id(requester, exam_id)
    state = report_state(exam)
    _audit_view(
        requester, "report.view" if state.released else "report.unavailable", exam
    )
    context = exam_context(request, requester, exam, "report")
    context["report"] = state
    return render(request, "viewer/exam_report.html", context)


@require_GET
@patient_required
def exam_report_print(
    request: HttpRequest, requester: Requester, exam_id: str
) -> HttpResponse:
    exam = access_exam_by_public_id(requester, exam_id)
    state = report_state(exam)
    if state.released is None:
        raise Http404("Not found")
    _audit_view(requester, "report.print", exam)
    context = {"exam": exam, "report": state, "time_zone": _local_time_zone(exam)}
    return render(request, "viewer/report_print.html", context)


@require_GET
@patient_required
def exam_images(
    request: HttpRequest, requester: Requester, exam_id: str
) -> HttpResponse:
    exam = access_exam_by_public_id(requester, exam_id)
    _audit_view(requester, "images.list", exam)
    context = exam_context(request, requester, exam, "images")
    context["instances"] = [i for i in instances_for(exam) if i.has_pixels]
    context["tile_edge"] = settings.RENDER_TILE_EDGE
    may_download = requester.can_download and images_visible(exam)
    context["packages"] = latest_packages(exam) if may_download else []
    context["download_form"] = DownloadForm() if may_download else None
    return render(request, "viewer/exam_images.html", context)


def _frame_number(request: HttpRequest, frames: int) -> int:
    """Return the 1-based frame asked for in the query, within the image."""
    try:
        frame = int(request.GET.get("frame", "1"))
    except ValueError:
        frame = 1
    return min(max(frame, 1), frames)


def _image_sources(instance: Instance) -> list[tuple[int, int]]:
    """Return (edge, width in pixels) for the srcset, one per distinct width.

    The browser takes a width descriptor at its word, so it must be the real
    width of the JPEG: images are never scaled up.
    """
    sources: dict[int, int] = {}
    longest = max(instance.rows, instance.columns)
    for edge in settings.RENDER_VIEW_EDGES:
        width = (
            instance.columns if longest <= edge else instance.columns * edge // longest
        )
        sources.setdefault(width, edge)
    return [(edge, width) for width, edge in sources.items()]


@require_GET
@patient_required
def image_view(
    request: HttpRequest, requester: Requester, exam_id: str, instance_id: str
) -> HttpResponse:
    exam, instance = access_instance_by_public_id(requester, exam_id, instance_id)
    frame = _frame_number(request, instance.number_of_frames)
    _audit_view(requester, "image.view", exam)
    context = exam_context(request, requester, exam, "images")
    position = list(
        instances_for(exam).filter(rows__gt=0).values_list("public_id", flat=True)
    )
    index = position.index(instance.public_id)
    context.update(
        {
            "instance": instance,
            "frame": frame,
            "sources": _image_sources(instance),
            "previous_id": position[index - 1] if index > 0 else None,
            "next_id": position[index + 1] if index + 1 < len(position) else None,
            "image_number": index + 1,
            "image_count": len(position),
        }
    )
    return render(request, "viewer/image_view.html", context)


@require_GET
@patient_required
def image_jpeg(
    request: HttpRequest,
    requester: Requester,
    exam_id: str,
    instance_id: str,
    frame: int,
    edge: int,
) -> HttpResponse:
    allowed_edges = (settings.RENDER_TILE_EDGE, *settings.RENDER_VIEW_EDGES)
    instance = access_instance_by_public_id(requester, exam_id, instance_id)[1]
    if edge not in allowed_edges or not 1 <= frame <= instance.number_of_frames:
        raise Http404("Not found")
    try:
        jpeg = preview_jpeg(instance, frame=frame - 1, edge=edge)
    except RenderError as error:
        logger.warning("Cannot render instance %d: %s", instance.pk, error)
        return HttpResponse(
            _("This image cannot be shown."), status=422, content_type="text/plain"
        )
    return HttpResponse(jpeg, content_type="image/jpeg")
