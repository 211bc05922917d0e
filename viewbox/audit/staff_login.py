"""The staff admin's log-in, throttled and logged like the patients' one.

Staff can see every patient's records, so guessing their passwords must be
at least as hard as guessing a patient's.
"""

import logging

from django.conf import settings
from django.contrib import admin
from django.http import HttpRequest, HttpResponse
from django.utils.translation import gettext as _

from viewbox.access import throttle
from viewbox.access.scope import client_address
from viewbox.audit.actions import record_event
from viewbox.audit.models import AuditEvent

logger = logging.getLogger(__name__)


def staff_log_in(request: HttpRequest) -> HttpResponse:
    """Refuse log-in attempts past the limits, then let the admin handle it."""
    address = client_address(request)
    username = request.POST.get("username", "") if request.method == "POST" else ""
    keys = {
        "staff-client": throttle.bucket_key(address or ""),
        "staff-user": throttle.bucket_key("staff:" + username.strip().lower()),
    }
    limits = settings.STAFF_LOG_IN_THROTTLE
    if request.method == "POST" and throttle.locked_buckets(limits, keys):
        logger.warning("Staff log-in rejected: too many failed attempts")
        record_event(
            "staff.log_in_throttled",
            outcome=AuditEvent.Outcome.FAILURE,
            actor_kind="anonymous",
            client_address=address,
        )
        return HttpResponse(
            _("Too many failed log-in attempts. Try again in 15 minutes."),
            status=429,
            content_type="text/plain",
        )

    response = admin.site.login(request)
    if request.method == "POST":
        succeeded = request.user.is_authenticated and request.user.is_staff
        user_id = request.user.pk if succeeded else None
        if not succeeded:
            throttle.record_failure(limits, keys)
            logger.warning("Staff log-in failed")
        record_event(
            "staff.log_in",
            outcome=AuditEvent.Outcome.SUCCESS
            if succeeded
            else AuditEvent.Outcome.FAILURE,
            actor_kind="user" if succeeded else "anonymous",
            actor_id=user_id if user_id is not None else "",
            client_address=address,
        )
    return response
