from collections.abc import Iterator
from typing import Any

import pytest

from viewbox.accounts.mail_catcher import MailCatcher


@pytest.fixture
def mail_catcher(settings: Any) -> Iterator[MailCatcher]:
    """Start a MailCatcher on a free loopback port and send the portal's mail to it.

    pytest-django makes every mailer use the in-memory email backend. This
    fixture puts the SMTP backend back as the default mailer, so that
    messages travel through a real SMTP session.
    """
    with MailCatcher() as catcher:
        settings.MAILERS = {
            **settings.MAILERS,
            "default": {
                "BACKEND": "django.core.mail.backends.smtp.EmailBackend",
                "OPTIONS": {"host": catcher.host, "port": catcher.port, "timeout": 10},
            },
        }
        yield catcher
