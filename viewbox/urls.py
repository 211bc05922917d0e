from django.contrib import admin
from django.urls import include, path

from viewbox.audit.staff_login import staff_enrol, staff_log_in, staff_log_in_code

urlpatterns = [
    path("staff/login/", staff_log_in, name="staff_log_in"),
    path("staff/login/code/", staff_log_in_code, name="staff_log_in_code"),
    path("staff/login/enrol/", staff_enrol, name="staff_enrol"),
    path("staff/frontdesk/", include("viewbox.frontdesk.urls")),
    path("staff/", admin.site.urls),
    path("i18n/", include("django.conf.urls.i18n")),
    path("", include("viewbox.frontdesk.help_urls")),
    path("", include("viewbox.accounts.urls")),
    path("", include("viewbox.audit.urls")),
    path("", include("viewbox.downloads.urls")),
    path("", include("viewbox.sharing.urls")),
    path("", include("viewbox.ingest.urls")),
    path("", include("viewbox.viewer.urls")),
]
