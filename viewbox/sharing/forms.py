from datetime import date
from typing import Any

from django import forms
from django.contrib.auth import get_user_model
from django.contrib.auth.password_validation import validate_password
from django.utils.formats import date_format
from django.utils.translation import gettext_lazy as _

from viewbox.accounts.passwords import new_password_field
from viewbox.downloads.forms import PHI_ACKNOWLEDGEMENT
from viewbox.records.models import Exam


class ExamChoiceField(forms.ModelMultipleChoiceField):
    def label_from_instance(self, obj: Exam) -> str:  # type: ignore[override]
        day = date_format(obj.visit.date_of_service, "DATE_FORMAT")
        return f"{obj.description}, {day}, {obj.visit.location.name}"


class ExpiryField(forms.DateField):
    """A date the link works through: today or later, with no upper limit."""

    widget = forms.DateInput(attrs={"type": "date"}, format="%Y-%m-%d")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("label", _("Expiration date"))
        kwargs.setdefault("help_text", _("The link works through the end of this day."))
        kwargs.setdefault(
            "error_messages",
            {
                "required": _("Enter the last day the link should work."),
                "invalid": _("Enter a date like 2027-03-31."),
            },
        )
        super().__init__(*args, **kwargs)


def check_expiry(expires_on: date, today: date) -> None:
    if expires_on < today:
        raise forms.ValidationError(
            _("The date has passed. Choose today or a later date.")
        )


class ShareForm(forms.Form):
    exams = ExamChoiceField(
        label=_("Exams to share"),
        queryset=Exam.objects.none(),
        to_field_name="public_id",
        widget=forms.CheckboxSelectMultiple,
        error_messages={
            "required": _("Choose at least one exam to share."),
            "invalid_choice": _("Choose exams from the list."),
            "invalid_pk_value": _("Choose exams from the list."),
        },
    )
    nickname = forms.CharField(
        label=_("Nickname"),
        max_length=80,
        help_text=_(
            "A name that helps you recognize this link later, such as "
            "“For Dr. Lee”. Only you see it."
        ),
        error_messages={
            "required": _("Enter a nickname for the link."),
            "max_length": _("Use at most 80 characters."),
        },
    )
    password = new_password_field(
        _("Password"),
        _("Choose a password for the link."),
        help_text=_(
            "The person you share with needs it to open the link. At least 8 "
            "characters; common or leaked passwords are not accepted."
        ),
    )
    password_again = new_password_field(
        _("Password again"), _("Type the password again.")
    )
    expires_on = ExpiryField()
    permission = forms.ChoiceField(
        label=_("What may the recipient do?"),
        choices=[
            ("view", _("View images and reports only")),
            ("download", _("Also download images")),
        ],
        initial="view",
        widget=forms.RadioSelect,
        error_messages={"required": _("Choose view only or download.")},
    )
    notify_email = forms.EmailField(
        label=_("Email me when the link is first opened (optional)"),
        required=False,
        max_length=254,
        help_text=_("The email says only that a link was opened."),
        error_messages={"invalid": _("Enter an email address like name@example.com.")},
        widget=forms.EmailInput(attrs={"autocomplete": "email"}),
    )
    acknowledge_phi = forms.BooleanField(
        label=PHI_ACKNOWLEDGEMENT,
        error_messages={"required": _("Check the box to confirm that you understand.")},
    )

    def __init__(
        self,
        *args: Any,
        exams: Any,
        today: date,
        names: tuple[str, str] = ("", ""),
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        field = self.fields["exams"]
        assert isinstance(field, forms.ModelMultipleChoiceField)
        field.queryset = exams
        self.today = today
        self.names = names

    def clean_acknowledge_phi(self) -> bool:
        # Only a real tick counts; see DownloadForm.
        if self.data.get("acknowledge_phi") != "on":
            raise forms.ValidationError(
                self.fields["acknowledge_phi"].error_messages["required"]
            )
        return True

    def clean_expires_on(self) -> date:
        expires_on: date = self.cleaned_data["expires_on"]
        check_expiry(expires_on, self.today)
        return expires_on

    def clean_nickname(self) -> str:
        nickname: str = self.cleaned_data["nickname"].strip()
        if not nickname:
            raise forms.ValidationError(_("Enter a nickname for the link."))
        return nickname

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean() or {}
        password = cleaned.get("password")
        again = cleaned.get("password_again")
        if password and again and password != again:
            self.add_error("password_again", _("The two passwords are not the same."))
        return cleaned

    def clean_password(self) -> str:
        password: str = self.cleaned_data["password"]
        # The same rules as account passwords, checked against the
        # patient's own names.
        candidate = get_user_model()(first_name=self.names[0], last_name=self.names[1])
        validate_password(password, user=candidate)
        return password


class ExpiryForm(forms.Form):
    expires_on = ExpiryField(label=_("New expiration date"))

    def __init__(self, *args: Any, today: date, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.today = today

    def clean_expires_on(self) -> date:
        expires_on: date = self.cleaned_data["expires_on"]
        check_expiry(expires_on, self.today)
        return expires_on


class LinkPasswordForm(forms.Form):
    password = forms.CharField(
        label=_("Password"),
        strip=False,
        max_length=4096,
        help_text=_("The person who shared the link gives you its password."),
        error_messages={"required": _("Enter the link's password.")},
        widget=forms.PasswordInput(attrs={"autocomplete": "off"}),
    )
