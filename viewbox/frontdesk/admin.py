from django.contrib import admin
from django.http import HttpRequest

from viewbox.frontdesk.models import HelpRequest, StaffDevice


@admin.register(HelpRequest)
class HelpRequestAdmin(admin.ModelAdmin):
    """Every Get Help request and its decision. Staff decide on the front desk page."""

    list_display = [
        "pk",
        "created_at",
        "location",
        "status",
        "decided_at",
        "decided_by",
    ]
    list_filter = ["status"]
    fields = [
        "created_at",
        "location",
        "name",
        "birth_date",
        "email",
        "status",
        "decided_at",
        "decided_by",
        "icode",
    ]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False


@admin.register(StaffDevice)
class StaffDeviceAdmin(admin.ModelAdmin):
    """Enrolled authenticators; the secret is never shown after enrolment."""

    list_display = ["user", "created_at", "confirmed_at"]
    fields = ["user", "created_at", "confirmed_at"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False
