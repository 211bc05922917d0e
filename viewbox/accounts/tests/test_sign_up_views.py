"""Sign-up, log-in and password reset through HTTP, with mail over real SMTP."""

import re
import time
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest
import time_machine
from django.contrib.auth import get_user_model
from django.test import Client
from django.urls import reverse

from viewbox.access.actions import issue_icode
from viewbox.accounts.models import Account
from viewbox.conftest import make_exam, make_patient
from viewbox.records.models import Patient

NOT_VERIFIED = "We could not create an account with the details and answers you gave."
PASSWORD = "correct horse battery staple"


@pytest.fixture
def barbara(maryland) -> Patient:
    """A patient with two visits at two dates, and someone else in the group."""
    patient = make_patient(
        maryland, "DEMO-2001", "Barbara", "Sample", date(1975, 9, 30)
    )
    Patient.objects.filter(pk=patient.pk).update(
        sex="F", postal_code="21204", phone="4105550123"
    )
    make_exam(
        patient,
        maryland,
        "ACC1",
        day=date(2026, 10, 2),
        description="US ECHOCARDIOGRAM",
    )
    make_exam(
        patient, maryland, "ACC2", day=date(2026, 11, 20), description="MG SCREENING"
    )
    other = make_patient(maryland, "DEMO-9001", "Olive", "Other", date(1960, 1, 1))
    make_exam(other, maryland, "ACC9", day=date(2026, 11, 1), description="CT HEAD")
    patient.refresh_from_db()
    return patient


def url(name: str, location: Any, *args: str) -> str:
    return reverse(name, args=[location.group.slug, location.slug, *args])


def about_barbara(**changes: Any) -> dict[str, Any]:
    data = {
        "given_name": "barbara ",
        "family_name": "SAMPLE",
        "birth_date_month": "9",
        "birth_date_day": "30",
        "birth_date_year": "1975",
        "sex": "F",
        "postal_code": "21204",
        "phone": "(410) 555-0123",
    }
    data.update(changes)
    return data


def right_answers(client: Client) -> dict[str, str]:
    questions = client.session["viewbox_sign_up"]["questions"]
    return {q["key"]: q["answer"] or "none" for q in questions}


def wrong_answers(client: Client) -> dict[str, str]:
    answers = right_answers(client)
    first = next(iter(answers))
    answers[first] = "none" if answers[first] != "none" else "1"
    return answers


def credentials(
    user_id: str = "barbara.sample", password: str = PASSWORD
) -> dict[str, str]:
    return {
        "user_id": user_id,
        "email": "barbara@example.com",
        "password": password,
        "password_again": password,
    }


def emailed_code(mail_catcher, count: int = 1) -> str:
    mail_catcher.wait_for_count(count)
    text = mail_catcher.messages[count - 1].get_body(("plain",)).get_content()
    match = re.search(r"\b(\d{3}[ -]?\d{3})\b", text)
    assert match is not None, text
    return match.group(1)


def sign_up_until_code(
    client: Client, location: Any, user_id: str = "barbara.sample"
) -> None:
    assert (
        client.post(url("accounts:about_you", location), about_barbara()).status_code
        == 302
    )
    response = client.post(url("accounts:verify", location), right_answers(client))
    assert response.status_code == 302
    response = client.post(url("accounts:credentials", location), credentials(user_id))
    assert response.status_code == 302, response.content.decode()


@pytest.mark.django_db
class TestRefusedSignUp:
    def test_minor_is_stopped_at_step_one(self, client, maryland) -> None:
        today = date.today()
        birth = {
            "birth_date_month": str(today.month),
            "birth_date_day": str(min(today.day, 28)),
            "birth_date_year": str(today.year - 17),
        }
        response = client.post(
            url("accounts:about_you", maryland), about_barbara(**birth)
        )
        page = response.content.decode()
        assert "Only people who are 18 or older can create an account." in page
        assert "please use the I-Code printed on the Portal Pass of each visit" in page
        assert "viewbox_sign_up" not in client.session

    def test_wrong_answer_ends_like_no_match(self, client, maryland, barbara) -> None:
        client.post(url("accounts:about_you", maryland), about_barbara())
        response = client.post(url("accounts:verify", maryland), wrong_answers(client))
        assert response.status_code == 400
        assert NOT_VERIFIED in response.content.decode()

        client.post(
            url("accounts:about_you", maryland), about_barbara(phone="4105550000")
        )
        response = client.post(url("accounts:verify", maryland), right_answers(client))
        assert response.status_code == 400
        assert NOT_VERIFIED in response.content.decode()

    def test_patient_with_an_account_ends_the_same_way(
        self, client, maryland, barbara
    ) -> None:
        user = get_user_model().objects.create_user("first.account", password=PASSWORD)
        Account.objects.create(user=user, patient=barbara)
        client.post(url("accounts:about_you", maryland), about_barbara())
        response = client.post(url("accounts:verify", maryland), right_answers(client))
        assert response.status_code == 400
        assert NOT_VERIFIED in response.content.decode()

    def test_later_steps_cannot_be_skipped(self, client, maryland, barbara) -> None:
        for name in ("accounts:verify", "accounts:credentials", "accounts:email"):
            response = client.get(url(name, maryland))
            assert response.status_code == 302
            assert response["Location"] == url("accounts:about_you", maryland)

    def test_common_password_is_refused(self, client, maryland, barbara) -> None:
        client.post(url("accounts:about_you", maryland), about_barbara())
        client.post(url("accounts:verify", maryland), right_answers(client))
        response = client.post(
            url("accounts:credentials", maryland), credentials(password="password123")
        )
        assert response.status_code == 400
        assert "This password is too common." in response.content.decode()

    def test_short_password_and_mismatch_are_refused(
        self, client, maryland, barbara
    ) -> None:
        client.post(url("accounts:about_you", maryland), about_barbara())
        client.post(url("accounts:verify", maryland), right_answers(client))
        data = credentials(password="x7#kq")
        data["password_again"] = "something else"
        page = client.post(url("accounts:credentials", maryland), data).content.decode()
        assert (
            "This password is too short. It must contain at least 8 characters." in page
        )
        assert "The two passwords are not the same." in page

    def test_password_like_the_user_id_is_refused(
        self, client, maryland, barbara
    ) -> None:
        client.post(url("accounts:about_you", maryland), about_barbara())
        client.post(url("accounts:verify", maryland), right_answers(client))
        page = client.post(
            url("accounts:credentials", maryland),
            credentials(user_id="sunflower.garden", password="sunflower.garden1"),
        ).content.decode()
        assert (
            "The password is too much like your name, User ID or email address." in page
        )
        assert "similar to the username" not in page

    def test_month_out_of_range_is_named(self, client, maryland) -> None:
        response = client.post(
            url("accounts:about_you", maryland), about_barbara(birth_date_month="13")
        )
        assert "Enter the month as a number from 1 to 12." in response.content.decode()

    def test_taken_user_id_is_refused(self, client, maryland, barbara) -> None:
        get_user_model().objects.create_user("Barbara.Sample", password=PASSWORD)
        client.post(url("accounts:about_you", maryland), about_barbara())
        client.post(url("accounts:verify", maryland), right_answers(client))
        page = client.post(url("accounts:credentials", maryland), credentials()).content
        assert b"This User ID is not available. Choose another." in page

    def test_wrong_code_is_refused(
        self, client, maryland, barbara, mail_catcher
    ) -> None:
        sign_up_until_code(client, maryland)
        code = emailed_code(mail_catcher)
        wrong = "000000" if code != "000000" else "111111"
        response = client.post(url("accounts:email", maryland), {"code": wrong})
        assert response.status_code == 400
        assert "That code is not right." in response.content.decode()
        assert not Account.objects.exists()

    def test_code_after_ten_minutes_is_refused(
        self, client, maryland, barbara, mail_catcher
    ) -> None:
        sign_up_until_code(client, maryland)
        code = emailed_code(mail_catcher)
        with time_machine.travel(datetime.now(UTC) + timedelta(minutes=10, seconds=1)):
            response = client.post(url("accounts:email", maryland), {"code": code})
        assert "That code has expired." in response.content.decode()
        assert not Account.objects.exists()

    def test_code_from_another_sign_up_is_refused(
        self, maryland, barbara, mail_catcher
    ) -> None:
        first, second = Client(), Client()
        sign_up_until_code(first, maryland, "first.try")
        code = emailed_code(mail_catcher, 1)
        sign_up_until_code(second, maryland, "second.try")
        response = second.post(url("accounts:email", maryland), {"code": code})
        assert response.status_code == 400
        assert not Account.objects.exists()

    def test_replayed_code_creates_nothing_more(
        self, client, maryland, barbara, mail_catcher
    ) -> None:
        sign_up_until_code(client, maryland)
        code = emailed_code(mail_catcher)
        client.post(url("accounts:email", maryland), {"code": code})
        response = client.post(url("accounts:email", maryland), {"code": code})
        assert response.status_code == 302
        assert Account.objects.count() == 1

    def test_sending_step_one_again_gives_the_same_questions(
        self, client, maryland, barbara
    ) -> None:
        client.post(url("accounts:about_you", maryland), about_barbara())
        first = client.session["viewbox_sign_up"]["questions"]
        for _ in range(5):
            client.post(url("accounts:about_you", maryland), about_barbara())
            assert client.session["viewbox_sign_up"]["questions"] == first

    def test_decoys_repeat_for_made_up_person(self, client, maryland, barbara) -> None:
        made_up = about_barbara(given_name="Zed", family_name="Nobody")
        client.post(url("accounts:about_you", maryland), made_up)
        first = client.session["viewbox_sign_up"]["questions"]
        client.post(url("accounts:about_you", maryland), made_up)
        assert client.session["viewbox_sign_up"]["questions"] == first

    def test_code_for_old_address_is_rejected(
        self, client, maryland, barbara, mail_catcher
    ) -> None:
        sign_up_until_code(client, maryland)
        old_code = emailed_code(mail_catcher, 1)
        data = credentials()
        data["email"] = "someone.else@example.com"
        client.post(url("accounts:credentials", maryland), data)
        new_code = emailed_code(mail_catcher, 2)
        assert mail_catcher.messages[1]["To"] == "someone.else@example.com"
        if old_code != new_code:
            response = client.post(url("accounts:email", maryland), {"code": old_code})
            assert response.status_code == 400
            assert not Account.objects.exists()

    def test_sign_up_form_without_csrf_token_is_refused(
        self, maryland, barbara
    ) -> None:
        client = Client(enforce_csrf_checks=True)
        response = client.post(url("accounts:about_you", maryland), about_barbara())
        assert response.status_code == 403

    def test_missing_fields_are_named_and_input_is_kept(self, client, maryland) -> None:
        response = client.post(
            url("accounts:about_you", maryland),
            about_barbara(phone="", postal_code="2"),
        )
        page = response.content.decode()
        assert response.status_code == 400
        assert "Enter your phone number." in page
        assert "Enter a 5-digit ZIP code, for example 21204." in page
        assert 'value="SAMPLE"' in page


@pytest.mark.django_db
class TestSignUp:
    def test_whole_sign_up_creates_the_account(
        self, client, maryland, barbara, mail_catcher
    ) -> None:
        sign_up_until_code(client, maryland)
        code = emailed_code(mail_catcher)
        response = client.post(url("accounts:email", maryland), {"code": code})
        assert response.status_code == 200
        assert "Your account is ready" in response.content.decode()
        account = Account.objects.get()
        assert account.patient == barbara
        assert account.user.username == "barbara.sample"
        assert account.user.password.startswith("argon2")

    def test_email_holds_no_health_information(
        self, client, maryland, barbara, mail_catcher
    ) -> None:
        sign_up_until_code(client, maryland)
        mail_catcher.wait_for_count(1)
        message = mail_catcher.messages[0]
        # The readable parts; the raw message has random MIME boundaries.
        text = " ".join(
            [
                str(message["Subject"]),
                message.get_body(("plain",)).get_content(),
                message.get_body(("html",)).get_content(),
            ]
        )
        assert message["To"] == "barbara@example.com"
        for secret in ("Barbara", "SAMPLE", "Sample", "1975", "ECHOCARDIOGRAM", "ACC1"):
            assert secret not in text

    def test_password_of_100_unicode_characters_works(
        self, client, maryland, barbara, mail_catcher
    ) -> None:
        password = "ÄŋŧĦ🙂ß日本語é" * 10
        assert len(password) == 100
        client.post(url("accounts:about_you", maryland), about_barbara())
        client.post(url("accounts:verify", maryland), right_answers(client))
        response = client.post(
            url("accounts:credentials", maryland), credentials(password=password)
        )
        assert response.status_code == 302
        client.post(
            url("accounts:email", maryland), {"code": emailed_code(mail_catcher)}
        )
        login = Client().post(
            url("accounts:log_in", maryland),
            {"user_id": "barbara.sample", "password": password},
        )
        assert login.status_code == 302

    def test_back_keeps_what_was_typed(self, client, maryland, barbara) -> None:
        client.post(url("accounts:about_you", maryland), about_barbara())
        page = client.get(url("accounts:about_you", maryland)).content.decode()
        assert 'value="SAMPLE"' in page
        assert 'value="21204"' in page

    def test_resend_makes_the_old_code_stop_working(
        self, client, maryland, barbara, mail_catcher
    ) -> None:
        sign_up_until_code(client, maryland)
        old = emailed_code(mail_catcher, 1)
        client.post(url("accounts:resend_code", maryland))
        new = emailed_code(mail_catcher, 2)
        if old != new:
            response = client.post(url("accounts:email", maryland), {"code": old})
            assert response.status_code == 400
        response = client.post(url("accounts:email", maryland), {"code": new})
        assert response.status_code == 200
        assert Account.objects.count() == 1


@pytest.fixture
def barbara_account(barbara) -> Account:
    user = get_user_model().objects.create_user(
        "barbara.sample", email="barbara@example.com", password=PASSWORD
    )
    return Account.objects.create(user=user, patient=barbara)


@pytest.mark.django_db
class TestLogIn:
    def test_wrong_password_and_unknown_user_look_the_same(
        self, client, maryland, barbara_account
    ) -> None:
        wrong = client.post(
            url("accounts:log_in", maryland),
            {"user_id": "barbara.sample", "password": "nope"},
        )
        unknown = client.post(
            url("accounts:log_in", maryland),
            {"user_id": "nobody.here", "password": "nope"},
        )
        assert wrong.status_code == unknown.status_code == 400
        message = "The User ID or password is not right."
        assert message in wrong.content.decode()
        assert message in unknown.content.decode()

    def test_account_of_another_group_cannot_log_in_here(
        self, client, maryland, california, barbara_account
    ) -> None:
        response = client.post(
            url("accounts:log_in", california),
            {"user_id": "barbara.sample", "password": PASSWORD},
        )
        assert response.status_code == 400

    def test_log_in_is_throttled_per_user(self, maryland, barbara_account) -> None:
        for number in range(5):
            Client().post(
                url("accounts:log_in", maryland),
                {"user_id": "barbara.sample", "password": "wrong"},
                REMOTE_ADDR=f"192.0.2.{number}",
            )
        response = Client().post(
            url("accounts:log_in", maryland),
            {"user_id": "barbara.sample", "password": PASSWORD},
            REMOTE_ADDR="192.0.2.200",
        )
        assert response.status_code == 429

    def test_session_id_changes_on_log_in(
        self, client, maryland, barbara_account
    ) -> None:
        client.get(url("accounts:log_in", maryland))
        session = client.session
        session["planted"] = True
        session.save()
        before = session.session_key
        client.post(
            url("accounts:log_in", maryland),
            {"user_id": "barbara.sample", "password": PASSWORD},
        )
        assert client.session.session_key != before

    def test_account_sees_exams_of_every_visit_newest_first(
        self, client, maryland, barbara_account
    ) -> None:
        client.post(
            url("accounts:log_in", maryland),
            {"user_id": "barbara.sample", "password": PASSWORD},
        )
        page = client.get(reverse("viewer:exam_list")).content.decode()
        assert page.index("MG SCREENING") < page.index("US ECHOCARDIOGRAM")
        assert "CT HEAD" not in page

    def test_account_cannot_reach_another_patients_exam(
        self, client, maryland, barbara_account
    ) -> None:
        from viewbox.records.models import Exam

        others = Exam.objects.get(accession_number="ACC9")
        client.post(
            url("accounts:log_in", maryland),
            {"user_id": "barbara.sample", "password": PASSWORD},
        )
        for name in ("viewer:exam_summary", "viewer:exam_report", "viewer:exam_images"):
            assert client.get(reverse(name, args=[others.public_id])).status_code == 404

    def test_log_out_ends_the_account_session(
        self, client, maryland, barbara_account
    ) -> None:
        client.post(
            url("accounts:log_in", maryland),
            {"user_id": "barbara.sample", "password": PASSWORD},
        )
        client.post(reverse("viewer:sign_out"))
        assert client.get(reverse("viewer:exam_list")).status_code == 302

    def test_icode_holder_account_sees_all_visits(
        self, client, maryland, barbara, mail_catcher
    ) -> None:
        from viewbox.records.models import Exam

        visit = Exam.objects.get(accession_number="ACC2").visit
        _, code = issue_icode(visit)
        client.post(
            reverse("viewer:icode_sign_in", args=[maryland.group.slug, maryland.slug]),
            {
                "code": code,
                "birth_date_month": 9,
                "birth_date_day": 30,
                "birth_date_year": 1975,
            },
        )
        page = client.get(reverse("viewer:exam_list"), follow=True).content.decode()
        assert "US ECHOCARDIOGRAM" not in page
        assert url("accounts:about_you", maryland) in page

        sign_up_until_code(client, maryland)
        client.post(
            url("accounts:email", maryland), {"code": emailed_code(mail_catcher)}
        )
        client.post(
            url("accounts:log_in", maryland),
            {"user_id": "barbara.sample", "password": PASSWORD},
        )
        page = client.get(reverse("viewer:exam_list")).content.decode()
        assert "US ECHOCARDIOGRAM" in page
        assert "MG SCREENING" in page


@pytest.mark.django_db
class TestPasswordReset:
    @pytest.fixture(autouse=True)
    def run_tasks_at_once(self, settings) -> None:
        settings.TASKS = {
            "default": {"BACKEND": "django.tasks.backends.immediate.ImmediateBackend"}
        }

    def test_unknown_and_known_identifiers_get_the_same_answer(
        self, client, maryland, barbara_account, mail_catcher
    ) -> None:
        known = client.post(
            url("accounts:forgot_password", maryland), {"identifier": "barbara.sample"}
        )
        unknown = client.post(
            url("accounts:forgot_password", maryland),
            {"identifier": "nobody@example.com"},
        )
        assert known.status_code == unknown.status_code == 200
        token = re.compile(rb'name="csrfmiddlewaretoken" value="[^"]+"')
        assert token.sub(b"", known.content) == token.sub(b"", unknown.content)
        mail_catcher.wait_for_count(1)
        assert len(mail_catcher.messages) == 1

    def test_reset_emails_are_limited_per_account(
        self, client, maryland, barbara_account, mail_catcher
    ) -> None:
        for _ in range(5):
            response = client.post(
                url("accounts:forgot_password", maryland),
                {"identifier": "barbara.sample"},
            )
            assert response.status_code == 200
        mail_catcher.wait_for_count(3)
        time.sleep(0.5)
        assert len(mail_catcher.messages) == 3

    def test_reset_link_works_once(
        self, client, maryland, barbara_account, mail_catcher
    ) -> None:
        client.post(
            url("accounts:forgot_password", maryland),
            {"identifier": "barbara@example.com"},
        )
        mail_catcher.wait_for_count(1)
        text = mail_catcher.messages[0].get_body(("plain",)).get_content()
        link = re.search(r"http://\S+/reset/\S+/", text).group(0)
        for secret in ("Barbara", "Sample", "1975", "ECHOCARDIOGRAM"):
            assert secret not in text

        form = client.get(link, follow=True)
        assert "Choose a new password" in form.content.decode()
        mismatch = client.post(
            form.redirect_chain[-1][0],
            {"new_password1": "one long passphrase", "new_password2": "another one"},
        )
        assert "The two passwords are not the same." in mismatch.content.decode()
        new = "a brand new passphrase 42"
        done = client.post(
            form.redirect_chain[-1][0], {"new_password1": new, "new_password2": new}
        )
        assert done.status_code == 302
        again = Client().get(link, follow=True).content.decode()
        assert "This link does not work." in again
        login = Client().post(
            url("accounts:log_in", maryland),
            {"user_id": "barbara.sample", "password": new},
        )
        assert login.status_code == 302

    def test_reset_link_expires_after_an_hour(
        self, client, maryland, barbara_account, mail_catcher
    ) -> None:
        client.post(
            url("accounts:forgot_password", maryland), {"identifier": "barbara.sample"}
        )
        mail_catcher.wait_for_count(1)
        text = mail_catcher.messages[0].get_body(("plain",)).get_content()
        link = re.search(r"http://\S+/reset/\S+/", text).group(0)
        with time_machine.travel(datetime.now(UTC) + timedelta(hours=1, minutes=1)):
            page = client.get(link, follow=True).content.decode()
        assert "This link does not work." in page
