from django.urls import path

from viewbox.audit import views

app_name = "audit"

urlpatterns = [
    path("activity/", views.activity, name="activity"),
]
