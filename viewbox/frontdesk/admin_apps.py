from django.contrib.admin.apps import AdminConfig


class StaffAdminConfig(AdminConfig):
    """Django's admin app, served by ``StaffAdminSite``.

    This module imports no models, because Django imports it while it is
    still loading the apps.
    """

    default_site = "viewbox.frontdesk.staff_site.StaffAdminSite"
