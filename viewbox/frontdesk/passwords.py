from typing import Any

from django.core.exceptions import ValidationError
from django.utils.translation import ngettext


class StaffMinimumLengthValidator:
    """Require longer passwords of staff, who can see every patient's records.

    Patients keep the general minimum; this validator checks only users whose
    ``is_staff`` is set.
    """

    def __init__(self, min_length: int = 12) -> None:
        self.min_length = min_length

    def validate(self, password: str, user: Any = None) -> None:
        if user is None or not getattr(user, "is_staff", False):
            return
        if len(password) < self.min_length:
            raise ValidationError(
                ngettext(
                    "A staff password needs at least %(min_length)d character.",
                    "A staff password needs at least %(min_length)d characters.",
                    self.min_length,
                ),
                code="password_too_short",
                params={"min_length": self.min_length},
            )

    def get_help_text(self) -> str:
        return ngettext(
            "A staff password needs at least %(min_length)d character.",
            "A staff password needs at least %(min_length)d characters.",
            self.min_length,
        ) % {"min_length": self.min_length}
