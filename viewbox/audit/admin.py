import logging
from typing import Any

from django.contrib import admin
from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponseRedirect, StreamingHttpResponse
from django.urls import URLPattern, path
from django.utils import timezone
from django.utils.translation import gettext_lazy as _

from viewbox.access.scope import client_address
from viewbox.audit.actions import record_event
from viewbox.audit.export import csv_lines
from viewbox.audit.models import AuditEvent

logger = logging.getLogger(__name__)

EXPORT_PERMISSION = "audit.export_auditevent"
# Query parameters of the time range and id form above the change list.
RANGE_FIELDS = ("at__date__gte", "at__date__lte", "patient_id", "actor_id")


@admin.register(AuditEvent)
class AuditEventAdmin(admin.ModelAdmin):
    """The audit log for auditors: filter, sort and export, never edit.

    Staff see it only with the view permission, which the Auditors group
    holds; exporting also needs the export permission.
    """

    change_list_template = "admin/audit/auditevent/change_list.html"
    list_display = [
        "sequence",
        "at",
        "action",
        "outcome",
        "actor_kind",
        "actor_id",
        "patient_id",
        "exam_id",
        "share_link_id",
        "client_address",
    ]
    list_filter = ["at", "action", "outcome", "actor_kind"]
    date_hierarchy = "at"
    search_fields = ["=patient_id", "=exam_id", "=actor_id", "=share_link_id"]
    search_help_text = _("Search by patient, exam, actor or shared link id.")
    ordering = ["-sequence"]
    list_per_page = 100
    show_full_result_count = False
    actions = ["export_selected"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_export_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm(EXPORT_PERMISSION)

    def get_urls(self) -> list[URLPattern]:
        export = path(
            "export/",
            self.admin_site.admin_view(self.export_view),
            name="audit_auditevent_export",
        )
        return [export, *super().get_urls()]

    def changelist_view(
        self, request: HttpRequest, extra_context: dict[str, Any] | None = None
    ) -> Any:
        # The range form sends its empty fields too; the change list would
        # reject an empty date as an invalid lookup.
        empty = [key for key in RANGE_FIELDS if request.GET.get(key, None) == ""]
        if empty:
            query = request.GET.copy()
            for key in empty:
                del query[key]
            return HttpResponseRedirect(f"{request.path}?{query.urlencode()}")
        extra_context = {
            **(extra_context or {}),
            "can_export": self.has_export_permission(request),
        }
        return super().changelist_view(request, extra_context)

    def export_view(self, request: HttpRequest) -> StreamingHttpResponse:
        """Export the entries the change list shows with the same filters."""
        if not (
            self.has_view_permission(request) and self.has_export_permission(request)
        ):
            raise PermissionDenied
        changelist = self.get_changelist_instance(request)
        return self._csv_response(request, changelist.get_queryset(request))

    @admin.action(
        description=_("Export the selected entries as CSV"), permissions=["export"]
    )
    def export_selected(
        self, request: HttpRequest, queryset: QuerySet[AuditEvent]
    ) -> StreamingHttpResponse:
        if not self.has_export_permission(request):
            raise PermissionDenied
        return self._csv_response(request, queryset)

    def _csv_response(
        self, request: HttpRequest, events: QuerySet[AuditEvent]
    ) -> StreamingHttpResponse:
        record_event(
            "audit.export",
            actor_kind="staff",
            actor_id=request.user.pk or "",
            client_address=client_address(request),
        )
        logger.info("Staff user %s exported the audit log", request.user.pk)
        name = f"audit-{timezone.now():%Y%m%dT%H%M%SZ}.csv"
        response = StreamingHttpResponse(
            csv_lines(events.order_by("sequence").iterator(chunk_size=2000)),
            content_type="text/csv; charset=utf-8",
        )
        response["Content-Disposition"] = f'attachment; filename="{name}"'
        return response
