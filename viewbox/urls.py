from django.contrib import admin
from django.urls import include, path

urlpatterns = [
    path("staff/", admin.site.urls),
    path("i18n/", include("django.conf.urls.i18n")),
    path("", include("viewbox.accounts.urls")),
    path("", include("viewbox.downloads.urls")),
    path("", include("viewbox.viewer.urls")),
]
