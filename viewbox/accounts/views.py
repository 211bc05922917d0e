import logging
import secrets
from pathlib import Path
from typing import Any

from django.conf import settings
from django.contrib.auth.hashers import make_password
from django.contrib.auth.views import PasswordResetConfirmView
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils import translation
from django.views.decorators.http import require_http_methods, require_POST

from viewbox.access import throttle
from viewbox.access.scope import client_address
from viewbox.accounts import actions, email_codes, identity, sign_up
from viewbox.accounts.forms import (
    AboutYouForm,
    CredentialsForm,
    EmailCodeForm,
    ForgotPasswordForm,
    IdentityQuestionsForm,
    LogInForm,
)
from viewbox.accounts.mail_catcher import read_mailbox
from viewbox.accounts.passwords import NewPasswordForm
from viewbox.accounts.tasks import send_password_reset_emails
from viewbox.audit.actions import record_event
from viewbox.audit.models import AuditEvent
from viewbox.directory.models import Location
from viewbox.directory.queries import local_today, location_or_404
from viewbox.records.models import Patient
from viewbox.viewer.views import SESSION_GROUP_SLUG

logger = logging.getLogger(__name__)


def _context(location: Location, **extra: Any) -> dict[str, Any]:
    return {"location": location, "group": location.group, **extra}


def _step_url(name: str, location: Location) -> str:
    return reverse(f"accounts:{name}", args=[location.group.slug, location.slug])


# Sign-up, step 1: about you.


@require_http_methods(["GET", "POST"])
def about_you(
    request: HttpRequest, group_slug: str, location_slug: str
) -> HttpResponse:
    location = location_or_404(group_slug, location_slug)
    state = sign_up.load(request, group_slug) or sign_up.SignUpState(
        group_slug=group_slug
    )
    if request.method == "GET":
        form = AboutYouForm(initial=sign_up.about_initial(state))
        return render(
            request, "accounts/about_you.html", _context(location, form=form, step=1)
        )

    form = AboutYouForm(request.POST)
    if not form.is_valid():
        context = _context(location, form=form, step=1)
        return render(request, "accounts/about_you.html", context, status=400)
    about = identity.AboutYou(**form.cleaned_data)
    if identity.is_minor(about.birth_date, local_today(location)):
        sign_up.clear(request)
        return render(request, "accounts/minor.html", _context(location, step=1))

    patient = identity.find_patient(location.group, about)
    state.about = {**form.cleaned_data, "birth_date": about.birth_date.isoformat()}
    state.patient_id = patient.pk if patient else None
    rng = identity.question_rng(location.group, patient, about, local_today(location))
    questions = identity.build_questions(location.group, patient, rng, sex=about.sex)
    state.questions = [question.to_session() for question in questions]
    state.step = sign_up.VERIFY
    sign_up.save(request, state)
    return redirect(_step_url("verify", location))


# Step 2: questions from the patient's own records.


@require_http_methods(["GET", "POST"])
def verify(request: HttpRequest, group_slug: str, location_slug: str) -> HttpResponse:
    location = location_or_404(group_slug, location_slug)
    state = sign_up.load(request, group_slug)
    if state is None or state.step < sign_up.VERIFY:
        return redirect(_step_url("about_you", location))
    questions = [identity.Question.from_session(data) for data in state.questions]
    address = client_address(request)
    patient = (
        Patient.objects.filter(pk=state.patient_id).first()
        if state.patient_id
        else None
    )

    if request.method == "GET":
        form = IdentityQuestionsForm(questions=questions)
        return render(
            request, "accounts/verify.html", _context(location, form=form, step=2)
        )
    form = IdentityQuestionsForm(request.POST, questions=questions)
    if not form.is_valid():
        context = _context(location, form=form, step=2)
        return render(request, "accounts/verify.html", context, status=400)

    about = sign_up.about_you(state)
    if identity.verification_locked(address, patient, about):
        sign_up.clear(request)
        return render(
            request,
            "accounts/not_verified.html",
            _context(location, locked=True),
            status=429,
        )
    # A wrong choice, no matching record and a record that already has an
    # account all end here, the same way.
    has_account = patient is not None and hasattr(patient, "account")
    if has_account or not identity.check_answers(questions, form.cleaned_data):
        identity.record_failed_verification(address, patient, about)
        record_event(
            "account.verify",
            outcome=AuditEvent.Outcome.FAILURE,
            actor_kind="anonymous",
            client_address=address,
        )
        sign_up.clear(request)
        return render(
            request, "accounts/not_verified.html", _context(location), status=400
        )

    state.step = sign_up.CREDENTIALS
    sign_up.save(request, state)
    return redirect(_step_url("credentials", location))


# Step 3: User ID, email and password.


@require_http_methods(["GET", "POST"])
def credentials(
    request: HttpRequest, group_slug: str, location_slug: str
) -> HttpResponse:
    location = location_or_404(group_slug, location_slug)
    state = sign_up.load(request, group_slug)
    if state is None or state.step < sign_up.CREDENTIALS:
        return redirect(_step_url("about_you", location))
    names = {
        "given_name": state.about["given_name"],
        "family_name": state.about["family_name"],
    }

    if request.method == "GET":
        form = CredentialsForm(
            initial={"user_id": state.user_id, "email": state.email}, **names
        )
        return render(
            request, "accounts/credentials.html", _context(location, form=form, step=3)
        )
    form = CredentialsForm(request.POST, **names)
    if not form.is_valid():
        context = _context(location, form=form, step=3)
        return render(request, "accounts/credentials.html", context, status=400)

    state.user_id = form.cleaned_data["user_id"]
    if state.email and state.email != form.cleaned_data["email"]:
        # A new address starts a new sequence of codes, so that a code sent
        # to the old address can never validate the new one.
        state.sign_up_id = secrets.token_hex(16)
    state.email = form.cleaned_data["email"]
    state.password_hash = make_password(form.cleaned_data["password"])
    state.step = sign_up.EMAIL
    sign_up.save(request, state)
    return _send_code(request, state, location)


# Step 4: the code from the email.


@require_http_methods(["GET", "POST"])
def email(request: HttpRequest, group_slug: str, location_slug: str) -> HttpResponse:
    location = location_or_404(group_slug, location_slug)
    state = sign_up.load(request, group_slug)
    if state is None or state.step < sign_up.EMAIL:
        return redirect(_step_url("about_you", location))

    form = EmailCodeForm(request.POST if request.method == "POST" else None)
    problem = None
    if request.method == "POST" and form.is_valid():
        check = email_codes.check_email_code(
            state.sign_up_id, form.cleaned_data["code"]
        )
        if check is email_codes.CodeCheck.VALID:
            return _finish_sign_up(request, location, state)
        problem = check.name.lower()
        record_event(
            "account.email_code",
            outcome=AuditEvent.Outcome.FAILURE,
            actor_kind="anonymous",
            client_address=client_address(request),
        )
    status = 400 if request.method == "POST" else 200
    context = _context(location, form=form, step=4, email=state.email, problem=problem)
    return render(request, "accounts/email.html", context, status=status)


def _finish_sign_up(
    request: HttpRequest, location: Location, state: sign_up.SignUpState
) -> HttpResponse:
    patient = (
        Patient.objects.filter(pk=state.patient_id).first()
        if state.patient_id
        else None
    )
    account = None
    if patient is not None:
        account = actions.create_account(
            patient,
            state.user_id,
            state.email,
            state.password_hash,
            client_address(request),
        )
    sign_up.clear(request)
    if account is None:
        return render(
            request, "accounts/not_verified.html", _context(location), status=400
        )
    return render(request, "accounts/created.html", _context(location))


@require_POST
def resend_code(
    request: HttpRequest, group_slug: str, location_slug: str
) -> HttpResponse:
    location = location_or_404(group_slug, location_slug)
    state = sign_up.load(request, group_slug)
    if state is None or state.step < sign_up.EMAIL:
        return redirect(_step_url("about_you", location))
    return _send_code(request, state, location, resent=True)


def _send_code(
    request: HttpRequest,
    state: sign_up.SignUpState,
    location: Location,
    resent: bool = False,
) -> HttpResponse:
    # Each client may have only so many codes emailed, whatever the address,
    # so that the form cannot be used to flood someone's mailbox.
    keys = {"code-mail-client": throttle.bucket_key(client_address(request) or "")}
    if throttle.locked_buckets(settings.CODE_MAIL_THROTTLE, keys):
        return redirect(_step_url("email", location) + "?sent=0")
    try:
        code = email_codes.issue_email_code(state.sign_up_id, state.email)
    except email_codes.ResendLimitReached:
        return redirect(_step_url("email", location) + "?sent=0")
    throttle.record_failure(settings.CODE_MAIL_THROTTLE, keys)
    email_codes.send_sign_up_code(state.email, code, str(email_codes.PORTAL_NAME))
    suffix = "?sent=1" if resent else ""
    return redirect(_step_url("email", location) + suffix)


# Log in, and forgotten passwords.


@require_http_methods(["GET", "POST"])
def log_in(request: HttpRequest, group_slug: str, location_slug: str) -> HttpResponse:
    location = location_or_404(group_slug, location_slug)
    form = LogInForm(request.POST if request.method == "POST" else None)
    problem = None
    if request.method == "POST" and form.is_valid():
        result = actions.log_in(
            request,
            location.group,
            form.cleaned_data["user_id"],
            form.cleaned_data["password"],
        )
        if result is actions.LogInResult.SUCCESS:
            request.session[SESSION_GROUP_SLUG] = location.group.slug
            return redirect("viewer:exam_list")
        problem = result.value
    status = 200
    if problem == "throttled":
        status = 429
    elif request.method == "POST":
        status = 400
    context = _context(location, form=form, problem=problem)
    return render(request, "accounts/log_in.html", context, status=status)


@require_http_methods(["GET", "POST"])
def forgot_password(
    request: HttpRequest, group_slug: str, location_slug: str
) -> HttpResponse:
    location = location_or_404(group_slug, location_slug)
    form = ForgotPasswordForm(request.POST if request.method == "POST" else None)
    if request.method == "POST" and form.is_valid():
        identifier = form.cleaned_data["identifier"]
        keys = {
            "reset-client": throttle.bucket_key(client_address(request) or ""),
            "reset-account": throttle.bucket_key("reset:" + identifier.strip().lower()),
        }
        # Past the limit nothing is sent, but the response is the same, so
        # that it tells nothing about accounts or limits.
        if not throttle.locked_buckets(settings.RESET_MAIL_THROTTLE, keys):
            throttle.record_failure(settings.RESET_MAIL_THROTTLE, keys)
            # The emails go out from the worker, so this response takes the
            # same time whether or not an account matches.
            send_password_reset_emails.enqueue(
                identifier,
                location.pk,
                request.build_absolute_uri("/")[:-1],
                translation.get_language() or "en",
            )
        return render(request, "accounts/forgot_password_sent.html", _context(location))
    status = 400 if request.method == "POST" else 200
    context = _context(location, form=form)
    return render(request, "accounts/forgot_password.html", context, status=status)


class ResetPasswordView(PasswordResetConfirmView):
    """Set a new password from the emailed link, valid one hour and once."""

    template_name = "accounts/reset_password.html"
    form_class = NewPasswordForm
    post_reset_login = False

    def get_success_url(self) -> str:
        return reverse(
            "accounts:reset_done",
            args=[self.kwargs["group_slug"], self.kwargs["location_slug"]],
        )

    def get_context_data(self, **kwargs: Any) -> dict[str, Any]:
        context = super().get_context_data(**kwargs)
        location = location_or_404(
            self.kwargs["group_slug"], self.kwargs["location_slug"]
        )
        context.update(_context(location))
        return context

    def form_valid(self, form: Any) -> HttpResponse:
        response = super().form_valid(form)
        account = form.user.patient_account
        record_event(
            "account.password_reset",
            actor_kind="account",
            actor_id=account.pk,
            patient_id=account.patient_id,
            client_address=client_address(self.request),
        )
        return response

    def get_user(self, uidb64: str) -> Any:
        user = super().get_user(uidb64)
        # Only patient accounts reset here; staff accounts never do.
        if user is not None and not hasattr(user, "patient_account"):
            return None
        return user


def reset_done(
    request: HttpRequest, group_slug: str, location_slug: str
) -> HttpResponse:
    location = location_or_404(group_slug, location_slug)
    return render(request, "accounts/reset_done.html", _context(location))


def demo_mailbox(request: HttpRequest) -> HttpResponse:
    """List the demo's emails, so that a person can finish sign-up on one machine.

    Only the demo turns this page on; anywhere else it does not exist.
    """
    if not settings.DEMO_MAILBOX:
        raise Http404("Not found")
    messages = read_mailbox(Path(settings.DATA_DIR) / "mailbox", limit=20)
    return render(request, "accounts/demo_mailbox.html", {"messages": messages})
