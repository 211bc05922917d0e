from datetime import UTC
from typing import Any

from django.conf import settings
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils import translation
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from viewbox.access.models import ICode
from viewbox.access.scope import (
    SESSION_SHARE_ENDED,
    Requester,
    client_address,
    exams_for,
    requester_from_request,
    usable_link,
)
from viewbox.audit.actions import record_event
from viewbox.directory.queries import local_today
from viewbox.records.models import Exam, Patient
from viewbox.sharing import actions
from viewbox.sharing.actions import (
    SESSION_NEW_LINK,
    SESSION_PENDING_LINK,
    SESSION_PENDING_PROBLEM,
    OpenResult,
)
from viewbox.sharing.forms import ExpiryForm, LinkPasswordForm, ShareForm
from viewbox.sharing.models import ShareLink
from viewbox.viewer.views import (
    RECIPIENT_COOKIE,
    SESSION_GROUP_SLUG,
    exam_context,
    patient_required,
)


def _sharing_patient(request: HttpRequest, requester: Requester) -> None:
    """Refuse recipients of a link: they cannot share or manage links."""
    if not actions.may_share(requester):
        raise Http404("Not found")


def _today(requester: Requester, exams: list[Exam]) -> Any:
    if exams:
        return local_today(exams[0].visit.location)
    return None


# The patient's side: create, list, change, revoke, unlock.


@require_http_methods(["GET", "POST"])
@patient_required
def create(request: HttpRequest, requester: Requester) -> HttpResponse:
    _sharing_patient(request, requester)
    exams = exams_for(requester)
    exam_list = list(exams)
    if not exam_list:
        return redirect("viewer:exam_list")
    patient = Patient.objects.get(pk=requester.patient_id)
    form = ShareForm(
        request.POST if request.method == "POST" else None,
        exams=exams,
        today=_today(requester, exam_list),
        names=(patient.given_name, patient.family_name),
        initial=_initial(request, requester, exam_list),
    )
    if request.method == "POST" and form.is_valid():
        chosen = sorted(form.cleaned_data["exams"], key=exam_list.index)
        link, token = actions.create_link(
            requester,
            chosen,
            nickname=form.cleaned_data["nickname"],
            password=form.cleaned_data["password"],
            expires_on=form.cleaned_data["expires_on"],
            allow_download=form.cleaned_data["permission"] == "download",
            notify_email=form.cleaned_data["notify_email"],
            language=translation.get_language() or "en",
        )
        # The token is shown on the next page only, then forgotten.
        request.session[SESSION_NEW_LINK] = {
            "link": str(link.public_id),
            "url": request.build_absolute_uri(reverse("sharing:open", args=[token])),
        }
        return redirect("sharing:created", link.public_id)
    context = exam_context(request, requester, None, "")
    context["form"] = form
    context["icode_expires_on"] = _icode_expiry(requester, exam_list)
    status = 400 if request.method == "POST" else 200
    return render(request, "sharing/create.html", context, status=status)


def _icode_expiry(requester: Requester, exams: list[Exam]) -> Any:
    """Return the local date an I-Code session's links stop with its code."""
    if requester.kind != "icode":
        return None
    icode = ICode.objects.get(pk=requester.actor_id)
    return actions.icode_end_date(icode, exams)


def _initial(
    request: HttpRequest, requester: Requester, exams: list[Exam]
) -> dict[str, Any]:
    from viewbox.accounts.models import Account

    initial: dict[str, Any] = {"permission": "view"}
    chosen = request.GET.get("exam")
    if chosen:
        initial["exams"] = [e for e in exams if str(e.public_id) == chosen]
    if requester.kind == "account":
        account = Account.objects.select_related("user").get(pk=requester.actor_id)
        initial["notify_email"] = account.user.email
    return initial


@require_GET
@patient_required
def created(request: HttpRequest, requester: Requester, link_id: str) -> HttpResponse:
    _sharing_patient(request, requester)
    link = actions.link_by_public_id(requester, link_id)
    new_link = request.session.get(SESSION_NEW_LINK) or {}
    url = None
    if new_link.get("link") == str(link.public_id):
        url = new_link["url"]
        del request.session[SESSION_NEW_LINK]
    exams = list(link.exams.select_related("visit__location__state"))
    context = exam_context(request, requester, None, "")
    context.update(
        {"link": link, "url": url, "works_through": actions.works_through(link, exams)}
    )
    return render(request, "sharing/created.html", context)


@require_GET
@patient_required
def links(request: HttpRequest, requester: Requester) -> HttpResponse:
    _sharing_patient(request, requester)
    context = exam_context(request, requester, None, "")
    exams = context["exams"]
    context["time_zone"] = actions.link_time_zone(exams) if exams else UTC
    own_links = (
        actions.links_for(requester)
        .select_related("icode", "account__user")
        .prefetch_related("exams__visit__location__state")
    )
    context["links"] = [
        (link, actions.works_through(link, list(link.exams.all())))
        for link in own_links
    ]
    return render(request, "sharing/links.html", context)


def _detail_context(
    request: HttpRequest, requester: Requester, link: ShareLink
) -> dict[str, Any]:
    context = exam_context(request, requester, None, "")
    exams = list(link.exams.select_related("visit__location__state"))
    context.update(
        {
            "works_through": actions.works_through(link, exams),
            "time_zone": actions.link_time_zone(exams) if exams else UTC,
            "link": link,
            "link_exams": exams,
            "accesses": link.accesses.all()[:200],
            "expiry_form": ExpiryForm(
                today=_today(requester, exams),
                initial={"expires_on": link.expires_on},
            ),
        }
    )
    return context


@require_GET
@patient_required
def detail(request: HttpRequest, requester: Requester, link_id: str) -> HttpResponse:
    _sharing_patient(request, requester)
    link = actions.link_by_public_id(requester, link_id)
    return render(
        request, "sharing/detail.html", _detail_context(request, requester, link)
    )


@require_POST
@patient_required
def change_expiry(
    request: HttpRequest, requester: Requester, link_id: str
) -> HttpResponse:
    _sharing_patient(request, requester)
    link = actions.link_by_public_id(requester, link_id)
    if link.revoked_at is not None:
        return redirect("sharing:detail", link.public_id)
    context = _detail_context(request, requester, link)
    form = ExpiryForm(request.POST, today=context["expiry_form"].today)
    if not form.is_valid():
        context["expiry_form"] = form
        return render(request, "sharing/detail.html", context, status=400)
    actions.change_expiry(requester, link, form.cleaned_data["expires_on"])
    return redirect(reverse("sharing:detail", args=[link.public_id]) + "?changed=1")


@require_http_methods(["GET", "POST"])
@patient_required
def revoke(request: HttpRequest, requester: Requester, link_id: str) -> HttpResponse:
    """Ask first on GET; turn the link off on POST."""
    _sharing_patient(request, requester)
    link = actions.link_by_public_id(requester, link_id)
    if request.method == "POST":
        actions.revoke_link(requester, link)
        return redirect(reverse("sharing:detail", args=[link.public_id]) + "?revoked=1")
    context = exam_context(request, requester, None, "")
    context["link"] = link
    return render(request, "sharing/revoke.html", context)


@require_POST
@patient_required
def unlock(request: HttpRequest, requester: Requester, link_id: str) -> HttpResponse:
    _sharing_patient(request, requester)
    link = actions.link_by_public_id(requester, link_id)
    actions.unlock_link(requester, link)
    return redirect(reverse("sharing:detail", args=[link.public_id]) + "?unlocked=1")


# The recipient's side: the link, the password, and the pages after.


@require_GET
def open_link(request: HttpRequest, token: str) -> HttpResponse:
    """Swap the token for a session entry and move on to a URL without it.

    Whatever the token leads to, the response is the same redirect, so the
    token never stays in the address bar, the history or a Referer.
    """
    request.session.pop(SESSION_PENDING_LINK, None)
    request.session.pop(SESSION_PENDING_PROBLEM, None)
    if actions.client_locked(request):
        request.session[SESSION_PENDING_PROBLEM] = "throttled"
    else:
        link = actions.link_for_token(token)
        if link is None:
            actions.count_client_failure(request)
            request.session[SESSION_PENDING_PROBLEM] = "unknown"
        else:
            request.session[SESSION_PENDING_LINK] = link.pk
            record_event(
                "share.open",
                actor_kind="share",
                actor_id=link.pk,
                patient_id=link.patient_id,
                share_link_id=link.pk,
                client_address=client_address(request),
            )
    return redirect("sharing:password")


@require_http_methods(["GET", "POST"])
def password(request: HttpRequest) -> HttpResponse:
    problem = request.session.get(SESSION_PENDING_PROBLEM)
    if problem == "unknown":
        return render(request, "sharing/not_found.html", status=404)
    if problem == "throttled":
        return render(request, "sharing/throttled.html", status=429)
    link_id = request.session.get(SESSION_PENDING_LINK)
    link = (
        ShareLink.objects.select_related("icode", "account__user", "patient__group")
        .filter(pk=link_id)
        .first()
        if link_id is not None
        else None
    )
    if link is None:
        requester = requester_from_request(request)
        if requester is not None and requester.is_recipient:
            return redirect("viewer:exam_list")
        return render(request, "sharing/open_again.html")
    ended = usable_link(link)
    if ended is not None:
        return _ended_page(request, ended, link)

    form = LinkPasswordForm(request.POST if request.method == "POST" else None)
    result = None
    if request.method == "POST" and form.is_valid():
        result = actions.open_link(request, link, form.cleaned_data["password"])
        if result is OpenResult.SUCCESS:
            request.session[SESSION_GROUP_SLUG] = link.patient.group.slug
            response = redirect("viewer:exam_list")
            # Marks this browser as a recipient's, so that a page reached
            # after the session timed out explains how to open the link again.
            response.set_cookie(
                RECIPIENT_COOKIE, "1", samesite="Strict", secure=settings.HTTPS
            )
            return response
        if result is OpenResult.ENDED:
            return _ended_page(request, usable_link(link) or "revoked", link)
    context = {
        "form": form,
        "result": result.value if result else None,
        "pause_minutes": (
            actions.pause_minutes_left(link) if result is OpenResult.PAUSED else 0
        ),
    }
    status = {
        None: 400 if request.method == "POST" else 200,
        OpenResult.WRONG: 400,
        OpenResult.PAUSED: 429,
        OpenResult.THROTTLED: 429,
        OpenResult.LOCKED: 423,
    }.get(result, 200)
    return render(request, "sharing/password.html", context, status=status)


def _ended_page(
    request: HttpRequest, reason: str, link: ShareLink | None = None
) -> HttpResponse:
    context = {
        "reason": reason,
        "expired_on": link.expires_on if link and reason == "expired" else None,
    }
    return render(request, "sharing/ended.html", context, status=410)


@require_GET
def ended(request: HttpRequest) -> HttpResponse:
    """Explain to a recipient whose link stopped working during the visit."""
    reason = request.session.get(SESSION_SHARE_ENDED) or "revoked"
    return _ended_page(request, reason)


@require_GET
def left(request: HttpRequest) -> HttpResponse:
    context = {"idle": request.GET.get("session") == "ended"}
    response = render(request, "sharing/left.html", context)
    response.delete_cookie(RECIPIENT_COOKIE, samesite="Strict")
    return response
