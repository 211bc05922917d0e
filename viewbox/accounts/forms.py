import re
from typing import Any

from django import forms
from django.contrib.auth import get_user_model
from django.contrib.auth.password_validation import validate_password
from django.utils.translation import gettext_lazy as _

from viewbox.accounts.identity import Question
from viewbox.accounts.passwords import new_password_field
from viewbox.viewer.forms import BirthDateField, BirthDateWidget

SEX_CHOICES = [
    ("", _("Choose one")),
    ("F", _("Female")),
    ("M", _("Male")),
    ("O", _("Other")),
]
USER_ID_PATTERN = re.compile(r"^[A-Za-z0-9._-]{4,30}$")


class AboutYouForm(forms.Form):
    given_name = forms.CharField(
        label=_("Legal first name"),
        max_length=128,
        error_messages={"required": _("Enter your legal first name.")},
        widget=forms.TextInput(attrs={"autocomplete": "given-name"}),
    )
    family_name = forms.CharField(
        label=_("Legal last name"),
        max_length=128,
        error_messages={"required": _("Enter your legal last name.")},
        widget=forms.TextInput(attrs={"autocomplete": "family-name"}),
    )
    birth_date = BirthDateField(label=_("Date of birth"), widget=BirthDateWidget())
    sex = forms.ChoiceField(
        label=_("Sex"),
        choices=SEX_CHOICES,
        help_text=_("As on your records at the imaging center."),
        error_messages={"required": _("Choose your sex as on your records.")},
    )
    postal_code = forms.RegexField(
        label=_("ZIP code"),
        regex=r"^\s*\d{5}(-?\d{4})?\s*$",
        error_messages={
            "required": _("Enter your ZIP code."),
            "invalid": _("Enter a 5-digit ZIP code, for example 21204."),
        },
        widget=forms.TextInput(
            attrs={"autocomplete": "postal-code", "inputmode": "numeric"}
        ),
    )
    phone = forms.CharField(
        label=_("Phone number"),
        max_length=32,
        error_messages={"required": _("Enter your phone number.")},
        widget=forms.TextInput(attrs={"autocomplete": "tel", "inputmode": "tel"}),
    )

    def clean_phone(self) -> str:
        digits = re.sub(r"\D", "", self.cleaned_data["phone"])
        if len(digits) == 11 and digits.startswith("1"):
            digits = digits[1:]
        if len(digits) != 10:
            raise forms.ValidationError(
                _("Enter a 10-digit phone number, for example 410 555 0123.")
            )
        return digits

    def clean_postal_code(self) -> str:
        return str(self.cleaned_data["postal_code"]).strip()[:5]


class IdentityQuestionsForm(forms.Form):
    """One required radio group per identity question."""

    def __init__(self, *args: Any, questions: list[Question], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        for question in questions:
            self.fields[question.key] = forms.ChoiceField(
                label=question.prompt,
                choices=question.choices,
                widget=forms.RadioSelect,
                error_messages={"required": _("Choose an answer to this question.")},
            )


class CredentialsForm(forms.Form):
    user_id = forms.CharField(
        label=_("User ID"),
        help_text=_("4 to 30 letters, digits, dots, dashes or underscores."),
        max_length=30,
        error_messages={"required": _("Choose a User ID.")},
        widget=forms.TextInput(
            attrs={
                "autocomplete": "username",
                "autocapitalize": "none",
                "spellcheck": "false",
            }
        ),
    )
    email = forms.EmailField(
        label=_("Email address"),
        help_text=_("We send a code to this address to check it."),
        error_messages={
            "required": _("Enter your email address."),
            "invalid": _("Enter an email address like name@example.com."),
        },
        widget=forms.EmailInput(attrs={"autocomplete": "email"}),
    )
    password = new_password_field(
        _("Password"),
        _("Choose a password."),
        help_text=_(
            "At least 8 characters. Long passphrases are welcome; "
            "common or leaked passwords are not accepted."
        ),
    )
    password_again = new_password_field(
        _("Password again"), _("Type your password again.")
    )

    def __init__(
        self, *args: Any, given_name: str = "", family_name: str = "", **kwargs: Any
    ):
        super().__init__(*args, **kwargs)
        self.given_name = given_name
        self.family_name = family_name

    def clean_user_id(self) -> str:
        user_id = self.cleaned_data["user_id"].strip()
        if not USER_ID_PATTERN.match(user_id):
            raise forms.ValidationError(
                _("Use 4 to 30 letters, digits, dots, dashes or underscores.")
            )
        if get_user_model().objects.filter(username__iexact=user_id).exists():
            raise forms.ValidationError(
                _("This User ID is not available. Choose another.")
            )
        return user_id

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean() or {}
        password = cleaned.get("password")
        again = cleaned.get("password_again")
        if password and again and password != again:
            self.add_error("password_again", _("The two passwords are not the same."))
        if password:
            candidate = get_user_model()(
                username=cleaned.get("user_id", ""),
                email=cleaned.get("email", ""),
                first_name=self.given_name,
                last_name=self.family_name,
            )
            try:
                validate_password(password, user=candidate)
            except forms.ValidationError as error:
                self.add_error("password", error)
        return cleaned


class EmailCodeForm(forms.Form):
    code = forms.CharField(
        label=_("Verification code"),
        max_length=12,
        help_text=_("The 6-digit code in the email we sent you."),
        error_messages={"required": _("Enter the 6-digit code from the email.")},
        widget=forms.TextInput(
            attrs={"autocomplete": "one-time-code", "inputmode": "numeric"}
        ),
    )


class LogInForm(forms.Form):
    user_id = forms.CharField(
        label=_("User ID"),
        max_length=150,
        error_messages={"required": _("Enter your User ID.")},
        widget=forms.TextInput(
            attrs={
                "autocomplete": "username",
                "autocapitalize": "none",
                "spellcheck": "false",
            }
        ),
    )
    password = forms.CharField(
        label=_("Password"),
        strip=False,
        error_messages={"required": _("Enter your password.")},
        widget=forms.PasswordInput(attrs={"autocomplete": "current-password"}),
    )


class ForgotPasswordForm(forms.Form):
    identifier = forms.CharField(
        label=_("User ID or email address"),
        max_length=254,
        error_messages={"required": _("Enter your User ID or email address.")},
        widget=forms.TextInput(
            attrs={"autocomplete": "username", "autocapitalize": "none"}
        ),
    )
