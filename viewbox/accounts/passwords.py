"""Password rules worded for patients, and the form that sets a new password."""

from typing import Any

from django import forms
from django.contrib.auth.forms import SetPasswordForm
from django.contrib.auth.password_validation import UserAttributeSimilarityValidator
from django.utils.translation import gettext_lazy as _


class PersonalDetailsSimilarityValidator(UserAttributeSimilarityValidator):
    """Django's check against the user's own details, in the portal's words.

    Django names the field ("username"); the portal calls it the User ID, so
    the message names no field at all.
    """

    def get_error_message(self) -> str:
        return str(
            _("The password is too much like your name, User ID or email address.")
        )


class NewPasswordForm(SetPasswordForm):
    """Choose a new password from a reset link, with the sign-up's wording."""

    error_messages = {
        "password_mismatch": _("The two passwords are not the same."),
    }

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        first = self.fields["new_password1"]
        first.label = _("New password")
        first.help_text = _(
            "At least 8 characters. Long passphrases are welcome; "
            "common or leaked passwords are not accepted."
        )
        self.fields["new_password2"].label = _("New password again")
        for field in self.fields.values():
            field.widget.attrs["autocomplete"] = "new-password"


def new_password_field(label: Any, required_message: Any, help_text: Any = "") -> Any:
    """Return a field for choosing a new password, never echoed back."""
    return forms.CharField(
        label=label,
        strip=False,
        help_text=help_text,
        error_messages={"required": required_message},
        widget=forms.PasswordInput(
            attrs={"autocomplete": "new-password"}, render_value=False
        ),
    )
