"""Sign-up step 4: the 6-digit code that proves the patient reads the email.

A code is stored only as a keyed hash bound to its sign-up. It works once,
for ``EMAIL_CODE_VALID_MINUTES`` and ``EMAIL_CODE_MAX_ATTEMPTS`` tries, and
only while it is the sign-up's newest code: asking for another one retires
the old. A sign-up gets at most ``RESEND_LIMIT`` codes within
``EMAIL_CODE_VALID_MINUTES``.

The emails of this module hold the code or link, how long it works and what
to do if the reader did not ask for it, and no health information.
"""

import enum
import hashlib
import hmac
import logging
import re
import secrets
import unicodedata
from datetime import timedelta

from django.conf import settings
from django.core.mail import send_mail
from django.db import transaction
from django.template.loader import render_to_string
from django.utils import timezone
from django.utils.translation import gettext_lazy, ngettext

from viewbox.accounts.models import EmailCode

logger = logging.getLogger(__name__)

# Emails name the portal only in general words: a group's name, such as
# "MammogramNow", can tell a reader of the inbox which care someone had.
PORTAL_NAME = gettext_lazy("Patient Portal")

CODE_DIGITS = 6
# Codes sent to one sign-up, the first included, within
# EMAIL_CODE_VALID_MINUTES. Three leave room for a lost or late email and a
# typo in the address, and stop the form from being used to flood a mailbox.
RESEND_LIMIT = 3
SIGN_UP_ID_LENGTH = 32
_SEPARATORS = re.compile(r"[\s\-.]")


class CodeCheck(enum.Enum):
    VALID = "valid"
    WRONG = "wrong"
    EXPIRED = "expired"
    TOO_MANY_ATTEMPTS = "too_many_attempts"
    NOT_FOUND = "not_found"


class ResendLimitReached(Exception):
    """Raised when a sign-up requests more codes than ``RESEND_LIMIT`` allows."""


def new_sign_up_id() -> str:
    """Return a random id for one sign-up, to keep in its session."""
    return secrets.token_hex(SIGN_UP_ID_LENGTH // 2)


def issue_email_code(sign_up_id: str, email: str) -> str:
    """Store a new code for the sign-up, retire its older ones, return the code.

    The code is returned this once, for the caller to email. Raise
    ResendLimitReached when ``can_resend`` returns False, and ValueError when
    ``sign_up_id`` is empty or too long for the column.
    """
    _check_sign_up_id(sign_up_id)
    code = "".join(secrets.choice("0123456789") for _ in range(CODE_DIGITS))
    now = timezone.now()

    with transaction.atomic():
        # Lock the sign-up's codes so that two requests at once cannot both
        # pass the limit. The very first code has no row to lock, so a race
        # there can leave two live codes, and check_email_code only ever
        # reads the newest. PostgreSQL rejects FOR UPDATE with COUNT, so the
        # rows are counted here.
        sent_at = EmailCode.objects.select_for_update().filter(sign_up_id=sign_up_id)
        since = now - _valid_for()
        recent = [
            at for at in sent_at.values_list("created_at", flat=True) if at > since
        ]
        if not _may_send(len(recent)):
            raise ResendLimitReached(sign_up_id)
        EmailCode.objects.filter(
            sign_up_id=sign_up_id, used_at__isnull=True, superseded_at__isnull=True
        ).update(superseded_at=now)
        email_code = EmailCode.objects.create(
            sign_up_id=sign_up_id,
            email=email,
            code_hash=_hash_code(sign_up_id, code),
            created_at=now,
            expires_at=now + _valid_for(),
        )
    logger.info("Issued email code %d", email_code.pk)
    return code


def can_resend(sign_up_id: str) -> bool:
    """Return whether the sign-up may get another code now."""
    since = timezone.now() - _valid_for()
    sent = EmailCode.objects.filter(sign_up_id=sign_up_id, created_at__gt=since)
    return _may_send(sent.count())


def check_email_code(sign_up_id: str, typed: str) -> CodeCheck:
    """Check a typed code against the sign-up's newest code, and use it if right.

    Spaces, dashes and dots in ``typed`` are ignored. Every wrong try counts
    against the newest code, including an older code typed after a resend.
    A try that is not 6 digits cannot be right and is not counted. Once
    ``EMAIL_CODE_MAX_ATTEMPTS`` tries are spent, even the right code is
    rejected. A used, superseded or missing code gives NOT_FOUND.
    """
    digits = _normalize(typed)
    now = timezone.now()

    with transaction.atomic():
        # The row lock makes two simultaneous right tries use the code once:
        # the second waits, then finds it used.
        email_code = (
            EmailCode.objects.select_for_update()
            .filter(
                sign_up_id=sign_up_id, used_at__isnull=True, superseded_at__isnull=True
            )
            .order_by("-created_at", "-pk")
            .first()
        )
        if email_code is None:
            return CodeCheck.NOT_FOUND
        if email_code.expires_at <= now:
            return CodeCheck.EXPIRED
        if email_code.attempts >= settings.EMAIL_CODE_MAX_ATTEMPTS:
            return CodeCheck.TOO_MANY_ATTEMPTS
        if digits is None:
            return CodeCheck.WRONG

        expected = _hash_code(sign_up_id, digits)
        if hmac.compare_digest(expected, email_code.code_hash):
            email_code.used_at = now
            email_code.save(update_fields=["used_at"])
            logger.info("Email code %d used", email_code.pk)
            return CodeCheck.VALID

        email_code.attempts += 1
        email_code.save(update_fields=["attempts"])
    if email_code.attempts >= settings.EMAIL_CODE_MAX_ATTEMPTS:
        logger.warning(
            "Email code %d locked after %d wrong tries",
            email_code.pk,
            email_code.attempts,
        )
    return CodeCheck.WRONG


def send_sign_up_code(email: str, code: str, portal_name: str) -> None:
    """Email the sign-up code through the configured SMTP server.

    ``portal_name`` is shown in the subject and text, so pass a name that
    says nothing about the patient's care. SMTP errors propagate.
    """
    context = {
        "code": code,
        "portal_name": portal_name,
        "valid_for": describe_minutes(settings.EMAIL_CODE_VALID_MINUTES),
    }
    _send_templated("accounts/email/sign_up_code", email, context)
    logger.info("Sent a sign-up code email")


def send_password_reset(email: str, reset_url: str, portal_name: str) -> None:
    """Email a password reset link that works for PASSWORD_RESET_TIMEOUT."""
    context = {
        "reset_url": reset_url,
        "portal_name": portal_name,
        "valid_for": describe_minutes(settings.PASSWORD_RESET_TIMEOUT // 60),
    }
    _send_templated("accounts/email/password_reset", email, context)
    logger.info("Sent a password reset email")


def describe_minutes(minutes: int) -> str:
    """Return a duration in words, such as "10 minutes" or "1 hour"."""
    if minutes % 60 == 0:
        hours = minutes // 60
        return ngettext("%(count)d hour", "%(count)d hours", hours) % {"count": hours}
    return ngettext("%(count)d minute", "%(count)d minutes", minutes) % {
        "count": minutes
    }


def _send_templated(template: str, email: str, context: dict[str, str]) -> None:
    # A line break in a header would end it early.
    subject = " ".join(render_to_string(f"{template}_subject.txt", context).split())
    text = render_to_string(f"{template}.txt", context)
    html = render_to_string(f"{template}.html", context)
    send_mail(subject, text, None, [email], html_message=html)


def _may_send(codes_in_window: int) -> bool:
    return codes_in_window < RESEND_LIMIT


def _valid_for() -> timedelta:
    return timedelta(minutes=settings.EMAIL_CODE_VALID_MINUTES)


def _check_sign_up_id(sign_up_id: str) -> None:
    if not sign_up_id or len(sign_up_id) > SIGN_UP_ID_LENGTH:
        raise ValueError(
            f"A sign-up id has 1 to {SIGN_UP_ID_LENGTH} characters, "
            f"not {len(sign_up_id)}; make one with new_sign_up_id()."
        )


def _normalize(typed: str) -> str | None:
    """Return the 6 ASCII digits of a typed code, or None if it is not one.

    NFKC turns the full-width digits of some phone keyboards into ASCII.
    """
    digits = _SEPARATORS.sub("", unicodedata.normalize("NFKC", typed))
    if len(digits) != CODE_DIGITS or not (digits.isascii() and digits.isdigit()):
        return None
    return digits


def _hash_code(sign_up_id: str, digits: str) -> str:
    """Return the keyed hash stored in place of a code.

    The hashed message starts with "email-code:" and the sign-up id. I-Codes
    are hashed with the same key, but over normalized I-Code symbols, which
    never contain a colon, so no email code message equals an I-Code one.
    The sign-up id in the message keeps a code from matching another
    sign-up's hash.
    """
    key = settings.ICODE_HASH_KEY.encode()
    message = f"email-code:{sign_up_id}:{digits}".encode()
    return hmac.new(key, message, hashlib.sha256).hexdigest()
