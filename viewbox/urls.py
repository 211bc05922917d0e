from django.contrib import admin
from django.urls import include, path

from viewbox.audit.staff_login import staff_log_in

urlpatterns = [
    path("staff/login/", staff_log_in, name="staff_log_in"),
    path("staff/", admin.site.urls),
    path("i18n/", include("django.conf.urls.i18n")),
    path("", include("viewbox.accounts.urls")),
    path("", include("viewbox.audit.urls")),
    path("", include("viewbox.downloads.urls")),
    path("", include("viewbox.viewer.urls")),
]
