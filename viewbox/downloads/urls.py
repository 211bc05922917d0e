from django.urls import path

from viewbox.downloads import views

app_name = "downloads"

urlpatterns = [
    path("exams/<str:exam_id>/download/", views.request_download, name="request"),
    path(
        "exams/<str:exam_id>/download/<str:package_id>/",
        views.package_status,
        name="status",
    ),
    path(
        "exams/<str:exam_id>/download/<str:package_id>/progress/",
        views.package_progress,
        name="progress",
    ),
    path(
        "exams/<str:exam_id>/download/<str:package_id>/file/",
        views.package_file,
        name="file",
    ),
]
