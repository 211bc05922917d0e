import enum
import logging

from django.conf import settings
from django.contrib.auth import authenticate, get_user_model, login
from django.db import IntegrityError, transaction
from django.http import HttpRequest
from django.utils import timezone

from viewbox.access import throttle
from viewbox.access.scope import SESSION_ICODE_ID, SESSION_SIGNED_IN_AT, client_address
from viewbox.accounts.models import Account
from viewbox.audit.actions import record_event
from viewbox.audit.models import AuditEvent
from viewbox.directory.models import ImagingGroup
from viewbox.records.models import Patient

logger = logging.getLogger(__name__)


class LogInResult(enum.Enum):
    SUCCESS = "success"
    INVALID = "invalid"
    THROTTLED = "throttled"


def create_account(
    patient: Patient,
    user_id: str,
    email: str,
    password_hash: str,
    client_address: str | None = None,
) -> Account | None:
    """Create the user and the account; return None if the patient has one.

    The password arrives already hashed, so the plain password never sat in
    the sign-up's session.
    """
    try:
        with transaction.atomic():
            user = get_user_model().objects.create(
                username=user_id,
                email=email,
                password=password_hash,
                first_name=patient.given_name,
                last_name=patient.family_name,
            )
            account = Account.objects.create(user=user, patient=patient)
    except IntegrityError:
        logger.info("Sign-up rejected: patient %d already has an account", patient.pk)
        return None
    record_event(
        "account.create",
        actor_kind="account",
        actor_id=account.pk,
        patient_id=patient.pk,
        client_address=client_address,
    )
    logger.info("Created account %d", account.pk)
    return account


def _log_in_keys(request: HttpRequest, user_id: str) -> dict[str, str]:
    return {
        "login-client": throttle.bucket_key(client_address(request) or "unknown"),
        "login-user": throttle.bucket_key("user:" + user_id.strip().lower()),
    }


def log_in(
    request: HttpRequest, group: ImagingGroup, user_id: str, password: str
) -> LogInResult:
    """Log a patient in with User ID and password.

    Every failure looks the same and costs the same time: Django's backend
    hashes the password even for a User ID that does not exist.
    """
    limits = settings.LOG_IN_THROTTLE
    keys = _log_in_keys(request, user_id)
    address = client_address(request)
    if throttle.locked_buckets(limits, keys):
        record_event(
            "account.log_in_throttled",
            outcome=AuditEvent.Outcome.FAILURE,
            actor_kind="anonymous",
            client_address=address,
        )
        return LogInResult.THROTTLED

    user = authenticate(request, username=user_id.strip(), password=password)
    account = (
        Account.objects.filter(user=user, patient__group=group).first()
        if user
        else None
    )
    if account is None:
        for bucket in throttle.record_failure(limits, keys):
            logger.warning("Log-in limit reached for bucket %s", bucket)
        record_event(
            "account.log_in",
            outcome=AuditEvent.Outcome.FAILURE,
            actor_kind="anonymous",
            client_address=address,
        )
        return LogInResult.INVALID

    # login() gives the session a new id; an I-Code session in the same
    # browser becomes an account session.
    login(request, user)
    request.session.pop(SESSION_ICODE_ID, None)
    request.session[SESSION_SIGNED_IN_AT] = timezone.now().timestamp()
    record_event(
        "account.log_in",
        actor_kind="account",
        actor_id=account.pk,
        patient_id=account.patient_id,
        client_address=address,
    )
    return LogInResult.SUCCESS
