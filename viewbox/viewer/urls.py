from django.urls import path

from viewbox.viewer import views

app_name = "viewer"

urlpatterns = [
    path("", views.start, name="start"),
    path("state/<str:state_code>/", views.choose_group, name="choose_group"),
    path("g/<slug:group_slug>/", views.group_portal, name="group_portal"),
    path("g/<slug:group_slug>/login/", views.choose_location, name="choose_location"),
    path(
        "g/<slug:group_slug>/<slug:location_slug>/",
        views.sign_in_choices,
        name="sign_in_choices",
    ),
    path(
        "g/<slug:group_slug>/<slug:location_slug>/icode/",
        views.icode_sign_in,
        name="icode_sign_in",
    ),
    path("sign-out/", views.sign_out_or_confirm, name="sign_out"),
    path("session/keep-alive/", views.keep_alive, name="keep_alive"),
    path("exams/", views.exam_list, name="exam_list"),
    path("exams/<str:exam_id>/", views.exam_summary, name="exam_summary"),
    path("exams/<str:exam_id>/report/", views.exam_report, name="exam_report"),
    path(
        "exams/<str:exam_id>/report/print/",
        views.exam_report_print,
        name="exam_report_print",
    ),
    path("exams/<str:exam_id>/images/", views.exam_images, name="exam_images"),
    path(
        "exams/<str:exam_id>/images/<str:instance_id>/",
        views.image_view,
        name="image_view",
    ),
    path(
        "exams/<str:exam_id>/images/<str:instance_id>/<int:frame>/<int:edge>.jpg",
        views.image_jpeg,
        name="image_jpeg",
    ),
]
