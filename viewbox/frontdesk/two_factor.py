"""The second step of the staff log-in: enrolment and checking of TOTP codes.

Between the password step and the code step the session contains only the id
of the staff member who typed the right password. Django logs the user in
after the code, so nothing in the admin or the front desk opens before it.
"""

import logging
import time

import segno
from django.contrib.auth import get_user_model
from django.contrib.auth.models import User
from django.db import transaction
from django.http import HttpRequest
from django.utils import timezone

from viewbox.frontdesk import totp
from viewbox.frontdesk.models import StaffDevice

logger = logging.getLogger(__name__)

SESSION_PENDING_USER = "staff_pending_user"
SESSION_PENDING_AT = "staff_pending_at"
SESSION_PENDING_BACKEND = "staff_pending_backend"
SESSION_PENDING_NEXT = "staff_pending_next"
SESSION_VERIFIED = "staff_verified_user"
# Maximum time between the password step and the code step, in seconds.
PENDING_SECONDS = 5 * 60
ISSUER = "Viewbox staff"


def is_verified_staff(request: HttpRequest) -> bool:
    """Return whether an active staff member finished both log-in steps."""
    user = request.user
    return (
        user.is_authenticated
        and user.is_active
        and user.is_staff
        and request.session.get(SESSION_VERIFIED) == user.pk
    )


def start_pending(request: HttpRequest, user: User, next_url: str) -> None:
    """Remember, for a few minutes, who passed the password step."""
    # A fresh session id, so that an id planted before log-in is worthless.
    request.session.cycle_key()
    request.session[SESSION_PENDING_USER] = user.pk
    request.session[SESSION_PENDING_AT] = time.time()
    request.session[SESSION_PENDING_BACKEND] = getattr(user, "backend", "")
    request.session[SESSION_PENDING_NEXT] = next_url


def pending_user(request: HttpRequest) -> User | None:
    """Return the staff member between the two steps, or None."""
    user_id = request.session.get(SESSION_PENDING_USER)
    started = request.session.get(SESSION_PENDING_AT, 0)
    if user_id is None or time.time() - started > PENDING_SECONDS:
        return None
    return (
        get_user_model()
        .objects.filter(pk=user_id, is_active=True, is_staff=True)
        .first()
    )


def clear_pending(request: HttpRequest) -> tuple[str, str]:
    """Forget the password step. Return its backend and the page to go to."""
    backend = request.session.get(SESSION_PENDING_BACKEND, "")
    next_url = request.session.get(SESSION_PENDING_NEXT, "")
    for key in (
        SESSION_PENDING_USER,
        SESSION_PENDING_AT,
        SESSION_PENDING_BACKEND,
        SESSION_PENDING_NEXT,
    ):
        request.session.pop(key, None)
    return backend, next_url


def confirmed_device(user: User) -> StaffDevice | None:
    return StaffDevice.objects.filter(user=user, confirmed_at__isnull=False).first()


def enrolment_device(user: User) -> StaffDevice:
    """Return the user's device, creating an unconfirmed one with a new secret."""
    device, _ = StaffDevice.objects.get_or_create(
        user=user,
        defaults={"secret": totp.generate_secret(), "created_at": timezone.now()},
    )
    return device


def use_code(device: StaffDevice, typed: str) -> bool:
    """Accept a code once: mark its time step used, and confirm the device.

    The row lock makes two requests with the same code use it once: the
    second waits, then finds the step used.
    """
    with transaction.atomic():
        locked = StaffDevice.objects.select_for_update().get(pk=device.pk)
        step = totp.matching_step(locked.secret, typed, timezone.now().timestamp())
        if step is None:
            return False
        if step <= locked.last_used_step:
            logger.warning("TOTP code of device %d used again", locked.pk)
            return False
        locked.last_used_step = step
        if locked.confirmed_at is None:
            locked.confirmed_at = timezone.now()
        locked.save(update_fields=["last_used_step", "confirmed_at"])
    return True


def qr_data_uri(device: StaffDevice, account: str) -> str:
    """Return the enrolment QR code as an SVG ``data:`` URI for an <img>."""
    uri = totp.provisioning_uri(device.secret, account, ISSUER)
    # An SVG read as an image needs its namespace, which segno's inline SVG
    # leaves out, so this is segno's data URI form.
    return segno.make(uri, error="m").svg_data_uri(scale=5, border=4)


def grouped_secret(secret: str) -> str:
    """Return the secret in groups of four, easier to type into an app."""
    return " ".join(secret[i : i + 4] for i in range(0, len(secret), 4))
