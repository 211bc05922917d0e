"""Audit entries for staff reading patient records in the admin."""

from typing import Any

from django.contrib import admin
from django.http import HttpRequest, HttpResponse

from viewbox.access.scope import client_address
from viewbox.audit.actions import record_event


class AuditedRecordAdmin(admin.ModelAdmin):
    """A model admin that records each time staff open one record's page.

    Subclasses set ``audit_action`` and return the record's patient and exam
    ids from ``audit_ids``.
    """

    audit_action = "staff.view_record"

    def audit_ids(self, obj: Any) -> tuple[int | None, int | None]:
        return None, None

    def change_view(
        self,
        request: HttpRequest,
        object_id: str,
        form_url: str = "",
        extra_context: dict[str, Any] | None = None,
    ) -> HttpResponse:
        response = super().change_view(request, object_id, form_url, extra_context)
        obj = getattr(response, "context_data", {}).get("original")
        if response.status_code == 200 and obj is not None:
            patient_id, exam_id = self.audit_ids(obj)
            record_event(
                self.audit_action,
                actor_kind="staff",
                actor_id=request.user.pk or "",
                patient_id=patient_id,
                exam_id=exam_id,
                client_address=client_address(request),
            )
        return response
