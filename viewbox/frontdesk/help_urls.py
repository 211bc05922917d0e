from django.urls import path

from viewbox.frontdesk import help_views

app_name = "help"

urlpatterns = [
    path(
        "g/<slug:group_slug>/<slug:location_slug>/icode/help/",
        help_views.get_help,
        name="get_help",
    ),
]
