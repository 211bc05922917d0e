from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest
from django.utils import timezone

from viewbox.audit.actions import record_event
from viewbox.sharing.models import ShareLink


@admin.register(ShareLink)
class ShareLinkAdmin(admin.ModelAdmin):
    """Share links for staff to look up and turn off, never to edit.

    Nicknames are the patient's own words and may hold health information,
    so the list shows ids and dates only.
    """

    list_display = [
        "pk",
        "patient_id",
        "created_at",
        "expires_on",
        "allow_download",
        "last_used_at",
        "revoked_at",
        "locked_at",
    ]
    list_filter = ["allow_download"]
    search_fields = ["=patient__mrn", "=patient__pk"]
    fields = readonly_fields = (
        "public_id",
        "patient",
        "account",
        "icode",
        "allow_download",
        "expires_on",
        "created_at",
        "first_opened_at",
        "last_used_at",
        "revoked_at",
        "wrong_passwords",
        "paused_until",
        "locked_at",
    )
    actions = ["turn_off"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False

    @admin.action(description="Turn off the selected links")
    def turn_off(self, request: HttpRequest, queryset: QuerySet[ShareLink]) -> None:
        links = list(queryset.filter(revoked_at__isnull=True))
        ShareLink.objects.filter(pk__in=[link.pk for link in links]).update(
            revoked_at=timezone.now()
        )
        for link in links:
            record_event(
                "share.revoke",
                actor_kind="staff",
                actor_id=request.user.pk or "",
                patient_id=link.patient_id,
                share_link_id=link.pk,
            )
        self.message_user(
            request, f"{len(links)} link(s) turned off.", messages.SUCCESS
        )
