from zoneinfo import ZoneInfo

from django.conf import settings
from django.core.paginator import Paginator
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import render
from django.views.decorators.http import require_GET

from viewbox.access.scope import Requester
from viewbox.audit import queries
from viewbox.audit.actions import record_event
from viewbox.records.models import Patient
from viewbox.viewer.views import patient_required


@require_GET
@patient_required
def activity(request: HttpRequest, requester: Requester) -> HttpResponse:
    """List who viewed, downloaded or shared the patient's records, and when."""
    if requester.kind not in queries.ACTIVITY_REQUESTER_KINDS:
        raise Http404("Not found")
    patient = Patient.objects.select_related("group__state").get(
        pk=requester.patient_id
    )

    paginator = Paginator(
        queries.activity_events(requester), settings.AUDIT_ACTIVITY_PAGE_SIZE
    )
    page = paginator.get_page(request.GET.get("page"))
    record_event(
        "activity.view",
        actor_kind=requester.kind,
        actor_id=requester.actor_id,
        patient_id=requester.patient_id,
        client_address=requester.client_address,
    )
    context = {
        "page": page,
        "items": queries.describe_events(requester, page.object_list),
        "group": patient.group,
        "time_zone": ZoneInfo(patient.group.state.time_zone),
        "session_idle_seconds": settings.SESSION_COOKIE_AGE,
    }
    return render(request, "audit/activity.html", context)
