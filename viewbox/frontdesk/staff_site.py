from django.contrib import admin
from django.http import HttpRequest

from viewbox.frontdesk.two_factor import is_verified_staff


class StaffAdminSite(admin.AdminSite):
    """The admin at /staff/, open only after the password and the TOTP code."""

    site_header = "Viewbox staff"
    site_title = "Viewbox staff"
    index_title = "Records and front desk"
    index_template = "frontdesk/admin_index.html"

    def has_permission(self, request: HttpRequest) -> bool:
        return super().has_permission(request) and is_verified_staff(request)
