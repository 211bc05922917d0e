from django.contrib import admin
from django.http import HttpRequest

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
    list_display = ["received_at", "message_type", "control_id", "status", "error"]
    list_filter = ["status", "message_type"]
    search_fields = ["control_id"]
