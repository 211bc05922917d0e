"""The production profile, forged requests, session fixation and error pages."""

import importlib
import os
import subprocess
import sys
from datetime import date
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings as django_settings
from django.contrib.auth import get_user_model
from django.contrib.sessions.backends.db import SessionStore
from django.http import HttpRequest, HttpResponse
from django.test import Client
from django.urls import include, path, reverse

from viewbox.access.actions import issue_icode
from viewbox.accounts.models import Account
from viewbox.conftest import make_exam, make_patient, sign_in_with_icode
from viewbox.downloads.models import Package
from viewbox.records.models import Exam

REPO = Path(__file__).resolve().parents[2]
KEY = "k" * 30 + "-not-a-real-production-key-" + "q" * 10
PASSWORD = "a long passphrase for Fiona"  # noqa: S105 (test account)


def run_manage(
    tmp_path: Path,
    *args: str,
    settings_module: str = "viewbox.settings_production",
    **env: str,
) -> subprocess.CompletedProcess:
    """Run manage.py with settings_module and only the given keys set."""
    base = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith("VIEWBOX_") or name == "VIEWBOX_DATABASE_URL"
    }
    return subprocess.run(
        [sys.executable, str(REPO / "manage.py"), *args],
        env={
            **base,
            "DJANGO_SETTINGS_MODULE": settings_module,
            "VIEWBOX_DATA_DIR": str(tmp_path),
            **env,
        },
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )


PRODUCTION_ENV = {
    "VIEWBOX_SECRET_KEY": KEY,
    "VIEWBOX_ICODE_KEY": KEY[::-1],
    "VIEWBOX_AUDIT_KEY": KEY.upper(),
    "VIEWBOX_ALLOWED_HOSTS": "portal.example.com",
}


class TestProductionProfile:
    def test_missing_secret_key_is_refused(self, tmp_path) -> None:
        env = {**PRODUCTION_ENV}
        del env["VIEWBOX_SECRET_KEY"]
        result = run_manage(tmp_path, "check", **env)
        assert result.returncode != 0
        assert "VIEWBOX_SECRET_KEY must be set to at least 50 characters" in (
            result.stderr
        )
        assert not (tmp_path / "secret_key").exists()

    def test_short_icode_key_is_refused(self, tmp_path) -> None:
        result = run_manage(
            tmp_path, "check", **{**PRODUCTION_ENV, "VIEWBOX_ICODE_KEY": "short"}
        )
        assert result.returncode != 0
        assert "VIEWBOX_ICODE_KEY must be set to at least 50 characters in " + (
            "production (got 5)"
        ) in result.stderr.replace("\n", " ")

    def test_missing_allowed_hosts_is_refused(self, tmp_path) -> None:
        env = {**PRODUCTION_ENV}
        del env["VIEWBOX_ALLOWED_HOSTS"]
        result = run_manage(tmp_path, "check", **env)
        assert result.returncode != 0
        assert "VIEWBOX_ALLOWED_HOSTS must be set" in result.stderr

    def test_deployment_check_has_no_warnings(self, tmp_path) -> None:
        result = run_manage(
            tmp_path,
            "check",
            "--deploy",
            "--fail-level",
            "WARNING",
            **PRODUCTION_ENV,
            VIEWBOX_DEBUG="1",
            VIEWBOX_DEMO_MAILBOX="1",
        )
        assert result.returncode == 0, result.stdout + result.stderr
        assert "System check identified no issues (1 silenced)." in result.stdout
        assert not (tmp_path / "secret_key").exists()
        assert not (tmp_path / "icode_key").exists()

    def test_silenced_csrf_check_is_covered_by_a_subclass(self) -> None:
        # security.W003 looks for Django's CSRF middleware by its dotted
        # path; the portal runs a subclass of it, so the check is silenced.
        from django.middleware.csrf import CsrfViewMiddleware
        from django.utils.module_loading import import_string

        csrf = [
            name
            for name in django_settings.MIDDLEWARE
            if issubclass(import_string(name), CsrfViewMiddleware)
        ]
        assert csrf == ["viewbox.viewer.middleware.FetchMetadataCsrfMiddleware"]


@pytest.fixture
def production(settings, monkeypatch) -> Any:
    """Apply the production profile's security settings to this test."""
    for name, value in PRODUCTION_ENV.items():
        monkeypatch.setenv(name, value)
    sys.modules.pop("viewbox.settings_production", None)
    profile = importlib.import_module("viewbox.settings_production")
    prefixes = ("SECURE_", "SESSION_COOKIE_", "CSRF_COOKIE_", "LANGUAGE_COOKIE_")
    for name in dir(profile):
        if name.startswith(prefixes) or name in ("DEBUG", "DEMO_MAILBOX"):
            setattr(settings, name, getattr(profile, name))
    return profile


def cookie_attributes(response: HttpResponse, name: str) -> dict[str, Any]:
    assert name in response.cookies, list(response.cookies)
    morsel = response.cookies[name]
    return {key: morsel[key] for key in ("secure", "httponly", "samesite", "path")} | {
        "domain": morsel["domain"]
    }


@pytest.mark.django_db
class TestProductionResponses:
    def test_http_is_redirected_to_https(self, production, client) -> None:
        response = client.get("/")
        assert response.status_code == 301
        assert response["Location"] == "https://testserver/"

    def test_forwarded_proto_is_ignored_without_a_proxy(
        self, production, client
    ) -> None:
        assert production.PROXY_COUNT == 0
        assert not hasattr(production, "SECURE_PROXY_SSL_HEADER")
        response = client.get("/", HTTP_X_FORWARDED_PROTO="https")
        assert response.status_code == 301

    def test_https_page_has_the_security_headers(self, production, client) -> None:
        response = client.get("/", secure=True)
        assert response.status_code == 200
        assert (
            response["Strict-Transport-Security"]
            == "max-age=31536000; includeSubDomains; preload"
        )
        assert response["X-Content-Type-Options"] == "nosniff"
        assert response["X-Frame-Options"] == "DENY"
        assert response["Referrer-Policy"] == "no-referrer"
        assert response["Cache-Control"] == "no-store"
        policy = response["Content-Security-Policy"]
        for directive in (
            "default-src 'self'",
            "script-src 'self'",
            "object-src 'none'",
            "base-uri 'none'",
            "frame-ancestors 'none'",
            "form-action 'self'",
        ):
            assert directive in policy
        assert "unsafe-inline" not in policy
        assert "unsafe-eval" not in policy

    def test_cookies_are_host_only_and_secure(
        self, production, client, california
    ) -> None:
        alice = make_patient(
            california, "DEMO-1001", "Alice", "Testpatient", date(1980, 4, 12)
        )
        exam = make_exam(alice, california, "ACC1001")
        _, code = issue_icode(exam.visit)
        url = reverse(
            "viewer:icode_sign_in", args=[california.group.slug, california.slug]
        )
        client.handler.enforce_csrf_checks = True
        page = client.get(url, secure=True)
        assert cookie_attributes(page, "__Host-csrftoken") == {
            "secure": True,
            "httponly": True,
            "samesite": "Lax",
            "path": "/",
            "domain": "",
        }
        response = client.post(
            url,
            {
                "csrfmiddlewaretoken": page.context["csrf_token"],
                "code": code,
                "birth_date_month": "4",
                "birth_date_day": "12",
                "birth_date_year": "1980",
            },
            secure=True,
            HTTP_SEC_FETCH_SITE="same-origin",
        )
        assert response.status_code == 302
        assert cookie_attributes(response, "__Host-session") == {
            "secure": True,
            "httponly": True,
            "samesite": "Lax",
            "path": "/",
            "domain": "",
        }
        assert "sessionid" not in response.cookies

    def test_sign_out_clears_site_data(self, production, client, california) -> None:
        alice = make_patient(
            california, "DEMO-1001", "Alice", "Testpatient", date(1980, 4, 12)
        )
        exam = make_exam(alice, california, "ACC1001")
        _, code = issue_icode(exam.visit)
        signed_in = client.post(
            reverse(
                "viewer:icode_sign_in", args=[california.group.slug, california.slug]
            ),
            {
                "code": code,
                "birth_date_month": "4",
                "birth_date_day": "12",
                "birth_date_year": "1980",
            },
            secure=True,
        )
        assert signed_in.status_code == 302
        response = client.post(reverse("viewer:sign_out"), secure=True)
        assert response.status_code == 302
        assert response["Clear-Site-Data"] == '"cache", "cookies", "storage"'


@pytest.fixture
def fiona_exam(california) -> Exam:
    fiona = make_patient(california, "DEMO-4001", "Fiona", "Fakename", date(1988, 8, 8))
    return make_exam(fiona, california, "ACC4001")


@pytest.fixture
def fiona_account(fiona_exam) -> Account:
    user = get_user_model().objects.create_user(
        "fiona.fakename", email="fiona@example.com", password=PASSWORD
    )
    return Account.objects.create(user=user, patient=fiona_exam.visit.patient)


def location_url(name: str, exam: Exam, *args: str) -> str:
    location = exam.visit.location
    return reverse(name, args=[location.group.slug, location.slug, *args])


# Every form that changes state. Each needs the CSRF token, whether or
# not the client is signed in.
LOCATION_FORMS = [
    "viewer:icode_sign_in",
    "accounts:log_in",
    "accounts:about_you",
    "accounts:verify",
    "accounts:credentials",
    "accounts:email",
    "accounts:resend_code",
    "accounts:forgot_password",
]


@pytest.mark.django_db
class TestForgedPosts:
    @pytest.mark.parametrize("name", LOCATION_FORMS)
    def test_form_without_token_is_refused(self, fiona_exam, name) -> None:
        forged = Client(enforce_csrf_checks=True)
        response = forged.post(location_url(name, fiona_exam), {"code": "2222"})
        assert response.status_code == 403
        assert "Fiona" not in response.content.decode()

    def test_password_reset_without_token_is_refused(
        self, fiona_exam, fiona_account
    ) -> None:
        forged = Client(enforce_csrf_checks=True)
        url = location_url("accounts:reset_password", fiona_exam, "MQ", "set-password")
        response = forged.post(
            url, {"new_password1": PASSWORD, "new_password2": PASSWORD}
        )
        assert response.status_code == 403

    @pytest.mark.parametrize(
        "name", ["viewer:sign_out", "viewer:keep_alive", "downloads:request"]
    )
    def test_signed_in_post_without_token_is_refused(self, fiona_exam, name) -> None:
        client = Client()
        sign_in_with_icode(client, fiona_exam)
        client.handler.enforce_csrf_checks = True
        args = [fiona_exam.public_id] if name.startswith("downloads") else []
        response = client.post(
            reverse(name, args=args), {"format": "zip", "acknowledge_phi": "on"}
        )
        assert response.status_code == 403
        # Nothing happened: still signed in, and no package asked for.
        summary = reverse("viewer:exam_summary", args=[fiona_exam.public_id])
        assert client.get(summary).status_code == 200
        assert not Package.objects.exists()

    def test_token_from_another_session_is_refused(self, fiona_exam) -> None:
        attacker = Client(enforce_csrf_checks=True)
        url = location_url("viewer:icode_sign_in", fiona_exam)
        token = attacker.get(url).context["csrf_token"]
        victim = Client(enforce_csrf_checks=True)
        victim.get(url)
        response = victim.post(
            url,
            {"csrfmiddlewaretoken": token, "code": "2222"},
            HTTP_SEC_FETCH_SITE="same-origin",
        )
        assert response.status_code == 403

    def test_language_and_staff_forms_need_the_token(self) -> None:
        forged = Client(enforce_csrf_checks=True)
        assert forged.post(reverse("set_language"), {"language": "es"}).status_code == (
            403
        )
        response = forged.post(
            reverse("staff_log_in"), {"username": "staff", "password": PASSWORD}
        )
        assert response.status_code == 403


def session_cookie(client: Client) -> str:
    return client.cookies[django_settings.SESSION_COOKIE_NAME].value


@pytest.mark.django_db
class TestSessionFixation:
    def planted_session(self, client: Client, url: str) -> str:
        client.get(url)
        session = client.session
        session["planted"] = True
        session.save()
        client.cookies[django_settings.SESSION_COOKIE_NAME] = session.session_key
        return session.session_key

    def test_old_key_is_dead_after_icode_sign_in(self, fiona_exam) -> None:
        client = Client()
        old = self.planted_session(
            client, location_url("viewer:icode_sign_in", fiona_exam)
        )
        sign_in_with_icode(client, fiona_exam)
        assert session_cookie(client) != old
        assert not SessionStore().exists(old)
        replayed = Client()
        replayed.cookies[django_settings.SESSION_COOKIE_NAME] = old
        summary = reverse("viewer:exam_summary", args=[fiona_exam.public_id])
        assert replayed.get(summary).status_code != 200

    def test_old_key_is_dead_after_account_log_in(self, fiona_account) -> None:
        exam = Exam.objects.get(accession_number="ACC4001")
        client = Client()
        url = location_url("accounts:log_in", exam)
        old = self.planted_session(client, url)
        response = client.post(url, {"user_id": "fiona.fakename", "password": PASSWORD})
        assert response.status_code == 302
        assert session_cookie(client) != old
        assert not SessionStore().exists(old)
        replayed = Client()
        replayed.cookies[django_settings.SESSION_COOKIE_NAME] = old
        summary = reverse("viewer:exam_summary", args=[exam.public_id])
        assert replayed.get(summary).status_code != 200
        assert client.get(summary).status_code == 200


def failing_view(request: HttpRequest) -> HttpResponse:
    exam = Exam.objects.get(accession_number="ACC4001")
    raise RuntimeError(f"failure while showing exam {exam.pk}: detail-7f3a")


urlpatterns = [
    path("test-failure/", failing_view),
    path("", include("viewbox.urls")),
]
ERROR_TRACES = ("Traceback", "detail-7f3a", "RuntimeError", "failing_view")


def assert_no_patient_data(page: str) -> None:
    for value in ("Fiona", "Fakename", "1988", "ACC4001", "DEMO-4001"):
        assert value not in page, value
    for trace in ERROR_TRACES:
        assert trace not in page, trace


@pytest.mark.django_db
@pytest.mark.urls(__name__)
class TestErrorPages:
    def test_not_found_page_has_no_patient_data(self, fiona_exam, settings) -> None:
        assert settings.DEBUG is False
        client = Client()
        sign_in_with_icode(client, fiona_exam)
        for url in (
            reverse("viewer:exam_summary", args=["0" * 32]),
            f"/exams/{fiona_exam.public_id}/nothing-here/",
            "/no-such-page/",
        ):
            response = client.get(url)
            assert response.status_code == 404, url
            assert_no_patient_data(response.content.decode())

    def test_server_error_page_has_no_patient_data(self, fiona_exam) -> None:
        client = Client(raise_request_exception=False)
        sign_in_with_icode(client, fiona_exam)
        response = client.get("/test-failure/")
        assert response.status_code == 500
        page = response.content.decode()
        assert_no_patient_data(page)
        assert page.lower().startswith("<!doctype html>")
        assert response["Cache-Control"] == "no-store"

    def test_forbidden_page_has_no_patient_data(self, fiona_exam) -> None:
        client = Client()
        sign_in_with_icode(client, fiona_exam)
        client.handler.enforce_csrf_checks = True
        response = client.post(reverse("viewer:keep_alive"))
        assert response.status_code == 403
        assert_no_patient_data(response.content.decode())


@pytest.mark.django_db
class TestUploadLimits:
    def test_oversized_form_post_is_refused(self, fiona_exam, settings) -> None:
        settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 10_000
        url = location_url("viewer:icode_sign_in", fiona_exam)
        response = Client().post(url, {"code": "x" * 20_000})
        assert response.status_code == 400

    def test_too_many_fields_are_refused(self, fiona_exam) -> None:
        url = location_url("viewer:icode_sign_in", fiona_exam)
        fields = {f"field{number}": "x" for number in range(300)}
        response = Client().post(url, fields)
        assert response.status_code == 400
