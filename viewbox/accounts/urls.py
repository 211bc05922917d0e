from django.urls import path

from viewbox.accounts import views

app_name = "accounts"

prefix = "g/<slug:group_slug>/<slug:location_slug>/"
urlpatterns = [
    path(prefix + "sign-up/", views.about_you, name="about_you"),
    path(prefix + "sign-up/verify/", views.verify, name="verify"),
    path(prefix + "sign-up/account/", views.credentials, name="credentials"),
    path(prefix + "sign-up/email/", views.email, name="email"),
    path(prefix + "sign-up/email/resend/", views.resend_code, name="resend_code"),
    path(prefix + "log-in/", views.log_in, name="log_in"),
    path(prefix + "forgot-password/", views.forgot_password, name="forgot_password"),
    path(
        prefix + "reset/<uidb64>/<token>/",
        views.ResetPasswordView.as_view(),
        name="reset_password",
    ),
    path(prefix + "reset/done/", views.reset_done, name="reset_done"),
    path("demo/mailbox/", views.demo_mailbox, name="demo_mailbox"),
]
