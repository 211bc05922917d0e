from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest
from django.utils.translation import gettext_lazy as _
from django.utils.translation import ngettext

from viewbox.audit.actions import record_event
from viewbox.ingest.hl7_import import retry_message
from viewbox.ingest.models import HL7Message, QuarantinedFile


class ReadOnlyAdmin(admin.ModelAdmin):
    """Input kept for staff to read; it is never edited in place."""

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False


@admin.register(QuarantinedFile)
class QuarantinedFileAdmin(ReadOnlyAdmin):
    list_display = ["received_at", "kind", "original_name", "reason"]
    list_filter = ["kind"]


@admin.register(HL7Message)
class HL7MessageAdmin(ReadOnlyAdmin):
    """Every HL7 message; the rejected ones are the dead-letter list."""

    list_display = [
        "received_at",
        "message_type",
        "control_id",
        "sending_facility",
        "status",
        "error",
        "retried_at",
    ]
    list_filter = ["status", "message_type"]
    search_fields = ["control_id"]
    actions = ["retry"]

    @admin.action(description=_("Retry"), permissions=["retry"])
    def retry(self, request: HttpRequest, queryset: QuerySet[HL7Message]) -> None:
        """Apply the selected rejected messages again, oldest first."""
        rows = queryset.filter(status=HL7Message.Status.REJECTED).order_by("pk")
        counts = {"processed": 0, "duplicate": 0, "rejected": 0}
        for row in rows:
            result = retry_message(row)
            counts[result.status] += 1
            record_event(
                "hl7.retry",
                outcome="success" if result.status != "rejected" else "failure",
                actor_kind="user",
                actor_id=request.user.pk or "",
            )

        applied = counts["processed"] + counts["duplicate"]
        if applied:
            self.message_user(
                request,
                ngettext(
                    "%(count)d message was applied.",
                    "%(count)d messages were applied.",
                    applied,
                )
                % {"count": applied},
                messages.SUCCESS,
            )
        if counts["rejected"]:
            self.message_user(
                request,
                ngettext(
                    "%(count)d message was rejected again; its reason is updated.",
                    "%(count)d messages were rejected again; their reasons are "
                    "updated.",
                    counts["rejected"],
                )
                % {"count": counts["rejected"]},
                messages.WARNING,
            )
        if not applied and not counts["rejected"]:
            self.message_user(
                request, _("Only rejected messages can be retried."), messages.INFO
            )

    def has_retry_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("ingest.retry_hl7message")
