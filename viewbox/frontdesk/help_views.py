"""Get Help: the portal form that requests the renewal of an expired I-Code."""

import logging

from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.views.decorators.http import require_http_methods

from viewbox.access import throttle
from viewbox.access.scope import client_address
from viewbox.directory.queries import location_or_404
from viewbox.frontdesk import actions
from viewbox.frontdesk.forms import GetHelpForm

logger = logging.getLogger(__name__)


@require_http_methods(["GET", "POST"])
def get_help(request: HttpRequest, group_slug: str, location_slug: str) -> HttpResponse:
    location = location_or_404(group_slug, location_slug)
    context = {"location": location, "group": location.group}
    form = GetHelpForm(request.POST if request.method == "POST" else None)
    if request.method == "POST" and form.is_valid():
        address = client_address(request)
        keys = {"help-client": throttle.bucket_key(address or "")}
        # Past the limit nothing is stored, but the response is the same, so
        # that it reveals nothing about codes or limits.
        if throttle.locked_buckets(settings.GET_HELP_THROTTLE, keys):
            logger.warning("Get Help request dropped: limit reached for a client")
        else:
            throttle.record_failure(settings.GET_HELP_THROTTLE, keys)
            data = form.cleaned_data
            actions.submit_help_request(
                location,
                data["name"],
                data["birth_date"],
                data["code"],
                data["email"],
                address,
            )
        return render(request, "frontdesk/get_help_sent.html", context)
    status = 400 if request.method == "POST" else 200
    return render(
        request, "frontdesk/get_help.html", {**context, "form": form}, status=status
    )
