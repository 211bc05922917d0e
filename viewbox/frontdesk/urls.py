from django.urls import path

from viewbox.frontdesk import views

app_name = "frontdesk"

urlpatterns = [
    path("", views.find_visit, name="find_visit"),
    path("visits/<int:visit_id>/", views.visit_detail, name="visit"),
    path("visits/<int:visit_id>/pass/", views.print_pass, name="print_pass"),
    path("help/", views.help_queue, name="help_queue"),
    path(
        "help/<int:help_request_id>/approve/", views.approve_help, name="approve_help"
    ),
    path(
        "help/<int:help_request_id>/decline/", views.decline_help, name="decline_help"
    ),
    path("images/", views.unmatched_images, name="unmatched_images"),
    path("images/<int:study_id>/", views.choose_exam, name="choose_exam"),
    path("images/<int:study_id>/attach/", views.attach_images, name="attach_images"),
]
