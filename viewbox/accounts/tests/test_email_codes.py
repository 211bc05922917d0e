import logging
import re
import threading
from datetime import UTC, date, datetime, timedelta

import pytest
import time_machine
from django.db import connection

from viewbox.access import codes
from viewbox.accounts.email_codes import (
    RESEND_LIMIT,
    CodeCheck,
    ResendLimitReached,
    can_resend,
    check_email_code,
    issue_email_code,
    new_sign_up_id,
    send_password_reset,
    send_sign_up_code,
)
from viewbox.accounts.identity import AboutYou, find_patient
from viewbox.accounts.models import EmailCode
from viewbox.conftest import make_exam, make_patient

SIGN_UP = "a" * 32
OTHER_SIGN_UP = "b" * 32
EMAIL = "fiona.fakename@example.test"
PORTAL = "RadNet Los Angeles Patient Portal"


def wrong_code(code: str) -> str:
    return f"{(int(code) + 1) % 1_000_000:06d}"


@pytest.fixture
def next_codes(monkeypatch):
    """Make the next issued codes the given ones, in order."""

    def use(*planned: str) -> None:
        digits = iter("".join(planned))
        monkeypatch.setattr("secrets.choice", lambda alphabet: next(digits))

    return use


@pytest.mark.django_db
class TestRejectedCodes:
    def test_code_replayed_after_use_is_rejected(self) -> None:
        code = issue_email_code(SIGN_UP, EMAIL)
        assert check_email_code(SIGN_UP, code) is CodeCheck.VALID
        assert check_email_code(SIGN_UP, code) is CodeCheck.NOT_FOUND

    def test_code_after_ten_minutes_is_expired(self) -> None:
        code = issue_email_code(SIGN_UP, EMAIL)
        with time_machine.travel(datetime.now(UTC) + timedelta(minutes=10)):
            assert check_email_code(SIGN_UP, code) is CodeCheck.EXPIRED

    def test_code_works_until_its_last_second(self) -> None:
        code = issue_email_code(SIGN_UP, EMAIL)
        with time_machine.travel(datetime.now(UTC) + timedelta(minutes=9, seconds=58)):
            assert check_email_code(SIGN_UP, code) is CodeCheck.VALID

    def test_sixth_try_with_right_code_is_rejected(self) -> None:
        code = issue_email_code(SIGN_UP, EMAIL)
        for _ in range(5):
            assert check_email_code(SIGN_UP, wrong_code(code)) is CodeCheck.WRONG
        assert check_email_code(SIGN_UP, code) is CodeCheck.TOO_MANY_ATTEMPTS
        assert EmailCode.objects.get().used_at is None

    def test_fifth_try_with_right_code_works(self) -> None:
        code = issue_email_code(SIGN_UP, EMAIL)
        for _ in range(4):
            check_email_code(SIGN_UP, wrong_code(code))
        assert check_email_code(SIGN_UP, code) is CodeCheck.VALID

    def test_code_of_another_sign_up_is_rejected(self, next_codes) -> None:
        next_codes("111111", "222222")
        issue_email_code(SIGN_UP, EMAIL)
        issue_email_code(OTHER_SIGN_UP, EMAIL)
        assert check_email_code(OTHER_SIGN_UP, "111111") is CodeCheck.WRONG
        assert check_email_code("c" * 32, "111111") is CodeCheck.NOT_FOUND

    def test_same_digits_hash_differently_per_sign_up(self, next_codes) -> None:
        next_codes("777777", "777777")
        issue_email_code(SIGN_UP, EMAIL)
        issue_email_code(OTHER_SIGN_UP, EMAIL)
        hashes = set(EmailCode.objects.values_list("code_hash", flat=True))
        assert len(hashes) == 2

    def test_superseded_code_is_rejected_after_resend(self, next_codes) -> None:
        next_codes("111111", "222222")
        issue_email_code(SIGN_UP, EMAIL)
        issue_email_code(SIGN_UP, EMAIL)
        assert check_email_code(SIGN_UP, "111111") is CodeCheck.WRONG
        assert check_email_code(SIGN_UP, "222222") is CodeCheck.VALID
        first = EmailCode.objects.order_by("pk").first()
        assert first is not None
        assert first.superseded_at is not None
        assert first.used_at is None

    def test_old_code_tries_count_against_the_new_code(self, next_codes) -> None:
        next_codes("111111", "222222")
        issue_email_code(SIGN_UP, EMAIL)
        issue_email_code(SIGN_UP, EMAIL)
        check_email_code(SIGN_UP, "111111")
        attempts = EmailCode.objects.order_by("pk").values_list("attempts", flat=True)
        assert list(attempts) == [0, 1]

    def test_unknown_sign_up_is_not_found(self) -> None:
        assert check_email_code(SIGN_UP, "123456") is CodeCheck.NOT_FOUND

    def test_expired_code_counts_no_tries(self) -> None:
        code = issue_email_code(SIGN_UP, EMAIL)
        with time_machine.travel(datetime.now(UTC) + timedelta(minutes=11)):
            check_email_code(SIGN_UP, wrong_code(code))
        assert EmailCode.objects.get().attempts == 0

    @pytest.mark.parametrize("typed", ["", "12345", "1234567", "abcdef", "12 34 5x"])
    def test_malformed_code_is_wrong_and_not_counted(self, typed: str) -> None:
        issue_email_code(SIGN_UP, EMAIL)
        assert check_email_code(SIGN_UP, typed) is CodeCheck.WRONG
        assert EmailCode.objects.get().attempts == 0

    @pytest.mark.parametrize("sign_up_id", ["", "c" * 33])
    def test_bad_sign_up_id_raises(self, sign_up_id: str) -> None:
        with pytest.raises(ValueError, match="A sign-up id has 1 to 32 characters"):
            issue_email_code(sign_up_id, EMAIL)


@pytest.mark.django_db
class TestIssuedCodes:
    def test_code_is_six_digits(self) -> None:
        assert re.fullmatch(r"[0-9]{6}", issue_email_code(SIGN_UP, EMAIL))

    def test_only_a_keyed_hash_is_stored(self) -> None:
        code = issue_email_code(SIGN_UP, EMAIL)
        stored = EmailCode.objects.get()
        assert re.fullmatch(r"[0-9a-f]{64}", stored.code_hash)
        assert code not in stored.code_hash

    def test_hash_depends_on_the_key(self, settings) -> None:
        code = issue_email_code(SIGN_UP, EMAIL)
        settings.ICODE_HASH_KEY = "another key"
        assert check_email_code(SIGN_UP, code) is CodeCheck.WRONG

    def test_hash_differs_from_the_icode_hash(self, next_codes) -> None:
        next_codes("222222")
        issue_email_code(SIGN_UP, EMAIL)
        assert EmailCode.objects.get().code_hash != codes.hash_code("222222")

    def test_code_expires_ten_minutes_after_issue(self) -> None:
        issue_email_code(SIGN_UP, EMAIL)
        stored = EmailCode.objects.get()
        assert stored.expires_at - stored.created_at == timedelta(minutes=10)
        assert stored.email == EMAIL
        assert stored.sign_up_id == SIGN_UP

    def test_codes_differ(self) -> None:
        issued = {issue_email_code(new_sign_up_id(), EMAIL) for _ in range(50)}
        assert len(issued) > 40

    def test_new_sign_up_id_fits_the_column(self) -> None:
        sign_up_id = new_sign_up_id()
        assert len(sign_up_id) == 32
        assert sign_up_id != new_sign_up_id()

    @pytest.mark.parametrize(
        "typed",
        [
            "123456",
            " 123456 ",
            "123 456",
            "123-456",
            "123.456",
            pytest.param("\uff11\uff12\uff13\uff14\uff15\uff16", id="full-width"),
        ],
    )
    def test_code_typed_with_separators_works(self, next_codes, typed: str) -> None:
        next_codes("123456")
        issue_email_code(SIGN_UP, EMAIL)
        assert check_email_code(SIGN_UP, typed) is CodeCheck.VALID


@pytest.mark.django_db
class TestResendLimit:
    def test_fourth_code_in_ten_minutes_is_rejected(self) -> None:
        assert RESEND_LIMIT == 3
        for _ in range(RESEND_LIMIT):
            assert can_resend(SIGN_UP) is True
            issue_email_code(SIGN_UP, EMAIL)
        assert can_resend(SIGN_UP) is False
        with pytest.raises(ResendLimitReached):
            issue_email_code(SIGN_UP, EMAIL)
        assert EmailCode.objects.count() == RESEND_LIMIT

    def test_limit_is_per_sign_up(self) -> None:
        for _ in range(RESEND_LIMIT):
            issue_email_code(SIGN_UP, EMAIL)
        assert can_resend(OTHER_SIGN_UP) is True

    def test_limit_lifts_after_ten_minutes(self) -> None:
        for _ in range(RESEND_LIMIT):
            issue_email_code(SIGN_UP, EMAIL)
        with time_machine.travel(datetime.now(UTC) + timedelta(minutes=10, seconds=1)):
            assert can_resend(SIGN_UP) is True
            code = issue_email_code(SIGN_UP, EMAIL)
            assert check_email_code(SIGN_UP, code) is CodeCheck.VALID


@pytest.mark.django_db(transaction=True)
class TestConcurrentTries:
    def test_two_simultaneous_right_tries_use_the_code_once(self) -> None:
        if connection.vendor == "sqlite" and connection.is_in_memory_db():
            # Threads share an in-memory database through SQLite's shared
            # cache, which raises "table is locked" at once instead of waiting.
            pytest.skip("needs PostgreSQL or a file-based SQLite test database")
        code = issue_email_code(SIGN_UP, EMAIL)
        barrier = threading.Barrier(2)
        results: list[CodeCheck] = []

        def try_code() -> None:
            barrier.wait()
            try:
                results.append(check_email_code(SIGN_UP, code))
            finally:
                connection.close()

        threads = [threading.Thread(target=try_code) for _ in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert sorted(result.value for result in results) == ["not_found", "valid"]


@pytest.mark.django_db
class TestEmails:
    def test_sign_up_email_holds_the_code(self, mail_catcher) -> None:
        send_sign_up_code(EMAIL, "482913", PORTAL)
        [message] = mail_catcher.wait_for_count(1)
        text = message.get_body(preferencelist=("plain",)).get_content()
        html = message.get_body(preferencelist=("html",)).get_content()
        assert message["To"] == EMAIL
        assert message["Subject"] == (
            "Your RadNet Los Angeles Patient Portal verification code"
        )
        assert "482913" in text
        assert "482913" in html
        assert "The code works once, for 10 minutes." in text
        assert "If you did not ask for this code, you can ignore this email" in text
        assert "The code works once, for 10 minutes." in html

    def test_sign_up_email_holds_no_health_information(
        self, california, mail_catcher
    ) -> None:
        fiona = make_patient(
            california, "FAKE-1001", "Fiona", "Fakename", date(1975, 6, 15)
        )
        make_exam(fiona, california, "ACC1001", description="MR KNEE WITHOUT CONTRAST")
        about = AboutYou("Fiona", "Fakename", date(1975, 6, 15), "F", "90401", "")
        assert find_patient(california.group, about) == fiona

        code = issue_email_code(SIGN_UP, EMAIL)
        send_sign_up_code(EMAIL, code, PORTAL)
        [message] = mail_catcher.wait_for_count(1)
        # The decoded parts: the raw message has random MIME boundaries, in
        # which "1975" can appear by chance.
        raw = " ".join(
            [
                str(message["Subject"]),
                message.get_body(("plain",)).get_content(),
                message.get_body(("html",)).get_content(),
            ]
        )
        assert code in raw
        for private in (
            "Fiona",
            "Fakename",
            "1975",
            "June",
            "KNEE",
            "FAKE-1001",
            "ACC1001",
            "Santa Monica",
        ):
            assert private not in raw

    def test_ampersand_unescaped_in_plain_text(self, mail_catcher) -> None:
        send_sign_up_code(EMAIL, "482913", "Smith & Jones Imaging")
        [message] = mail_catcher.wait_for_count(1)
        text = message.get_body(preferencelist=("plain",)).get_content()
        html = message.get_body(preferencelist=("html",)).get_content()
        assert message["Subject"] == "Your Smith & Jones Imaging verification code"
        assert "Smith & Jones Imaging is:" in text
        assert "Smith &amp; Jones Imaging is:" in html

    def test_password_reset_email_holds_the_link(self, mail_catcher) -> None:
        url = "http://127.0.0.1:8000/accounts/reset/MQ/abc-123/?next=a&b=c"
        send_password_reset(EMAIL, url, PORTAL)
        [message] = mail_catcher.wait_for_count(1)
        text = message.get_body(preferencelist=("plain",)).get_content()
        html = message.get_body(preferencelist=("html",)).get_content()
        assert (
            message["Subject"]
            == "Reset your RadNet Los Angeles Patient Portal password"
        )
        assert url in text
        assert url.replace("&", "&amp;") in html
        assert "The link works for 1 hour." in text
        assert "your password stays as it is" in text

    def test_reset_link_lifetime_follows_the_setting(
        self, settings, mail_catcher
    ) -> None:
        settings.PASSWORD_RESET_TIMEOUT = 30 * 60
        send_password_reset(EMAIL, "http://127.0.0.1:8000/reset/", PORTAL)
        [message] = mail_catcher.wait_for_count(1)
        text = message.get_body(preferencelist=("plain",)).get_content()
        assert "The link works for 30 minutes." in text


@pytest.mark.django_db
class TestLogs:
    def test_logs_hold_no_code_email_or_name(
        self, california, mail_catcher, caplog
    ) -> None:
        with caplog.at_level(logging.DEBUG):
            about = AboutYou("Fiona", "Fakename", date(1975, 6, 15), "F", "90401", "")
            find_patient(california.group, about)
            code = issue_email_code(SIGN_UP, EMAIL)
            send_sign_up_code(EMAIL, code, PORTAL)
            mail_catcher.wait_for_count(1)
            for _ in range(5):
                check_email_code(SIGN_UP, wrong_code(code))
            check_email_code(SIGN_UP, code)
            send_password_reset(EMAIL, "http://127.0.0.1:8000/reset/tok/", PORTAL)
            mail_catcher.wait_for_count(2)
        assert "Issued email code" in caplog.text
        assert "locked after 5 wrong tries" in caplog.text
        for private in (code, EMAIL, "fiona", "Fiona", "Fakename", "1975", "reset/tok"):
            assert private not in caplog.text
