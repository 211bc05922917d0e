from django.urls import path

from viewbox.sharing import views

app_name = "sharing"

urlpatterns = [
    path("share/", views.create, name="create"),
    path("shares/", views.links, name="links"),
    path("shares/<str:link_id>/", views.detail, name="detail"),
    path("shares/<str:link_id>/created/", views.created, name="created"),
    path("shares/<str:link_id>/expiry/", views.change_expiry, name="change_expiry"),
    path("shares/<str:link_id>/revoke/", views.revoke, name="revoke"),
    path("shares/<str:link_id>/unlock/", views.unlock, name="unlock"),
    # The recipient's side. Only /s/ carries the token, and it redirects.
    path("s/<str:token>/", views.open_link, name="open"),
    path("shared/", views.password, name="password"),
    path("shared/ended/", views.ended, name="ended"),
    path("shared/left/", views.left, name="left"),
]
