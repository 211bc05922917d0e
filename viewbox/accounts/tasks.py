import logging

from django.contrib.auth.tokens import default_token_generator
from django.tasks import task
from django.urls import reverse
from django.utils import translation
from django.utils.encoding import force_bytes
from django.utils.http import urlsafe_base64_encode

from viewbox.accounts import email_codes
from viewbox.accounts.queries import users_for_identifier
from viewbox.directory.models import Location

logger = logging.getLogger(__name__)


@task()
def send_password_reset_emails(
    identifier: str, location_id: int, base_url: str, language: str = "en"
) -> None:
    """Email a reset link to each patient account named by User ID or email.

    The email is written in ``language``, the one the request was made in.
    """
    with translation.override(language):
        _send_password_reset_emails(identifier, location_id, base_url)


def _send_password_reset_emails(
    identifier: str, location_id: int, base_url: str
) -> None:
    location = Location.objects.select_related("group").get(pk=location_id)
    users = users_for_identifier(identifier, location)
    for user in users:
        path = reverse(
            "accounts:reset_password",
            args=[
                location.group.slug,
                location.slug,
                urlsafe_base64_encode(force_bytes(user.pk)),
                default_token_generator.make_token(user),
            ],
        )
        email_codes.send_password_reset(
            user.email, base_url + path, str(email_codes.PORTAL_NAME)
        )
        logger.info("Sent a password reset link for user %d", user.pk)
    if not users:
        logger.info("Password reset asked for no matching account")
