"""The staff log-in: a password, then a TOTP code; throttled and audited.

Staff can see every patient's records, so guessing their passwords must be
at least as hard as guessing a patient's, and a password alone is not
enough. Wrong passwords and wrong codes count against the same limits, per
client address and per staff member.
"""

import logging

from django import forms
from django.conf import settings
from django.contrib import admin
from django.contrib.admin.forms import AdminAuthenticationForm
from django.contrib.auth import login
from django.contrib.auth.models import User
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils.http import url_has_allowed_host_and_scheme
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy
from django.views.decorators.http import require_http_methods

from viewbox.access import throttle
from viewbox.access.scope import client_address
from viewbox.audit.actions import record_event
from viewbox.audit.models import AuditEvent
from viewbox.frontdesk import two_factor

logger = logging.getLogger(__name__)


class CodeForm(forms.Form):
    code = forms.CharField(
        label=gettext_lazy("Code from your authenticator app"),
        max_length=12,
        widget=forms.TextInput(
            attrs={
                "autocomplete": "one-time-code",
                "inputmode": "numeric",
                "autofocus": True,
            }
        ),
    )


def _throttle_keys(request: HttpRequest, username: str) -> dict[str, str]:
    return {
        "staff-client": throttle.bucket_key(client_address(request) or ""),
        "staff-user": throttle.bucket_key("staff:" + username.strip().lower()),
    }


def _throttled_response(request: HttpRequest) -> HttpResponse:
    logger.warning("Staff log-in rejected: too many failed attempts")
    record_event(
        "staff.log_in_throttled",
        outcome=AuditEvent.Outcome.FAILURE,
        actor_kind="anonymous",
        client_address=client_address(request),
    )
    return HttpResponse(
        _("Too many failed log-in attempts. Try again in 15 minutes."),
        status=429,
        content_type="text/plain",
    )


def _safe_next(request: HttpRequest, next_url: str) -> str:
    allowed = url_has_allowed_host_and_scheme(
        next_url, allowed_hosts={request.get_host()}, require_https=request.is_secure()
    )
    return next_url if next_url and allowed else reverse("admin:index")


def _render_step(
    request: HttpRequest, template: str, context: dict[str, object], status: int = 200
) -> HttpResponse:
    context = {**admin.site.each_context(request), **context}
    return render(request, template, context, status=status)


@require_http_methods(["GET", "POST"])
def staff_log_in(request: HttpRequest) -> HttpResponse:
    """Check the password, then send the staff member to the code step."""
    next_url = request.POST.get("next") or request.GET.get("next", "")
    if request.method == "GET" and two_factor.is_verified_staff(request):
        return redirect(_safe_next(request, next_url))

    address = client_address(request)
    username = request.POST.get("username", "") if request.method == "POST" else ""
    keys = _throttle_keys(request, username)
    limits = settings.STAFF_LOG_IN_THROTTLE
    if request.method == "POST" and throttle.locked_buckets(limits, keys):
        return _throttled_response(request)

    form = AdminAuthenticationForm(
        request, data=request.POST if request.method == "POST" else None
    )
    if request.method == "POST" and form.is_valid():
        user = form.get_user()
        two_factor.start_pending(request, user, _safe_next(request, next_url))
        record_event(
            "staff.password",
            actor_kind="staff",
            actor_id=user.pk,
            client_address=address,
        )
        if two_factor.confirmed_device(user) is None:
            return redirect("staff_enrol")
        return redirect("staff_log_in_code")

    if request.method == "POST":
        throttle.record_failure(limits, keys)
        logger.warning("Staff log-in failed")
        record_event(
            "staff.log_in",
            outcome=AuditEvent.Outcome.FAILURE,
            actor_kind="anonymous",
            client_address=address,
        )
    context = {
        "form": form,
        "title": _("Log in"),
        "app_path": request.get_full_path(),
        "next": next_url,
    }
    return _render_step(request, "admin/login.html", context)


@require_http_methods(["GET", "POST"])
def staff_log_in_code(request: HttpRequest) -> HttpResponse:
    """Ask for the TOTP code of an enrolled staff member, then log them in."""
    user = two_factor.pending_user(request)
    if user is None:
        return redirect("staff_log_in")
    device = two_factor.confirmed_device(user)
    if device is None:
        return redirect("staff_enrol")

    form = CodeForm(request.POST if request.method == "POST" else None)
    if request.method == "POST":
        response = _check_code(request, user, device, form, "staff.log_in")
        if response is not None:
            return response
    context = {"form": form, "title": _("Two-factor log-in")}
    status = 400 if form.errors else 200
    return _render_step(request, "frontdesk/staff_code.html", context, status)


@require_http_methods(["GET", "POST"])
def staff_enrol(request: HttpRequest) -> HttpResponse:
    """Set up an authenticator app: show its secret, then check a first code."""
    user = two_factor.pending_user(request)
    if user is None:
        return redirect("staff_log_in")
    if two_factor.confirmed_device(user) is not None:
        return redirect("staff_log_in_code")

    device = two_factor.enrolment_device(user)
    form = CodeForm(request.POST if request.method == "POST" else None)
    if request.method == "POST":
        response = _check_code(request, user, device, form, "staff.totp_enrol")
        if response is not None:
            return response
    context = {
        "form": form,
        "title": _("Set up two-factor log-in"),
        "qr_data_uri": two_factor.qr_data_uri(device, user.get_username()),
        "secret": two_factor.grouped_secret(device.secret),
    }
    status = 400 if form.errors else 200
    return _render_step(request, "frontdesk/staff_enrol.html", context, status)


def _check_code(
    request: HttpRequest,
    user: User,
    device: two_factor.StaffDevice,
    form: CodeForm,
    action: str,
) -> HttpResponse | None:
    """Log the user in when the code is right; else count a failure, return None."""
    limits = settings.STAFF_LOG_IN_THROTTLE
    keys = _throttle_keys(request, user.get_username())
    if throttle.locked_buckets(limits, keys):
        return _throttled_response(request)

    address = client_address(request)
    if form.is_valid() and two_factor.use_code(device, form.cleaned_data["code"]):
        backend, next_url = two_factor.clear_pending(request)
        login(request, user, backend=backend or None)
        request.session[two_factor.SESSION_VERIFIED] = user.pk
        record_event(
            action, actor_kind="staff", actor_id=user.pk, client_address=address
        )
        logger.info("Staff member %d logged in with a TOTP code", user.pk)
        return redirect(next_url or reverse("admin:index"))

    throttle.record_failure(limits, keys)
    logger.warning("Staff TOTP code rejected for staff member %d", user.pk)
    record_event(
        action,
        outcome=AuditEvent.Outcome.FAILURE,
        actor_kind="staff",
        actor_id=user.pk,
        client_address=address,
    )
    if not form.errors:
        form.add_error(
            "code",
            _("The code is not right or was already used. Wait for the next code."),
        )
    return None
