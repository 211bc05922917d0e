from datetime import date
from typing import Any

from django import forms
from django.utils.translation import gettext_lazy as _


def _date_part(low: int, high: int, message: Any) -> forms.IntegerField:
    """Return one of the month, day and year fields, with one plain message."""
    errors = {"invalid": message, "min_value": message, "max_value": message}
    return forms.IntegerField(min_value=low, max_value=high, error_messages=errors)


class BirthDateField(forms.MultiValueField):
    """A date of birth typed as month, day and year, the way US forms ask."""

    def __init__(self, **kwargs: Any) -> None:
        fields = (
            _date_part(1, 12, _("Enter the month as a number from 1 to 12.")),
            _date_part(1, 31, _("Enter the day as a number from 1 to 31.")),
            _date_part(
                1900, 2100, _("Enter the year with 4 digits, for example 1980.")
            ),
        )
        super().__init__(
            fields=fields,
            require_all_fields=True,
            error_messages={
                "required": _("Enter your date of birth."),
                "incomplete": _("Enter your date of birth as month, day and year."),
                "invalid": _("Enter a real date of birth, for example 4 12 1980."),
            },
            **kwargs,
        )

    def compress(self, data_list: list[int]) -> date | None:
        if not data_list:
            return None
        month, day, year = data_list
        try:
            birth_date = date(year, month, day)
        except ValueError as error:
            raise forms.ValidationError(
                self.error_messages["invalid"], code="invalid"
            ) from error
        if birth_date > date.today():
            raise forms.ValidationError(self.error_messages["invalid"], code="invalid")
        return birth_date


class BirthDateWidget(forms.MultiWidget):
    template_name = "viewer/widgets/birth_date.html"

    def __init__(self) -> None:
        numeric = {"inputmode": "numeric", "pattern": "[0-9]*"}
        widgets: dict[str, forms.Widget | type[forms.Widget]] = {
            "month": forms.TextInput(
                attrs={
                    **numeric,
                    "size": 2,
                    "maxlength": 2,
                    "autocomplete": "bday-month",
                }
            ),
            "day": forms.TextInput(
                attrs={**numeric, "size": 2, "maxlength": 2, "autocomplete": "bday-day"}
            ),
            "year": forms.TextInput(
                attrs={
                    **numeric,
                    "size": 4,
                    "maxlength": 4,
                    "autocomplete": "bday-year",
                }
            ),
        }
        super().__init__(widgets)

    def decompress(self, value: date | None) -> list[int | None]:
        if value is None:
            return [None, None, None]
        return [value.month, value.day, value.year]


def icode_field() -> forms.CharField:
    """Return the field where a patient types the I-Code of a Portal Pass."""
    return forms.CharField(
        label=_("I-Code"),
        max_length=40,
        help_text=_("Printed on your Portal Pass, for example 7KQ4-M2XD-9RTB-HW3F."),
        error_messages={"required": _("Enter the I-Code from your Portal Pass.")},
        widget=forms.TextInput(
            attrs={
                "autocomplete": "off",
                "autocapitalize": "characters",
                "spellcheck": "false",
            }
        ),
    )


class ICodeForm(forms.Form):
    code = icode_field()
    birth_date = BirthDateField(label=_("Date of birth"), widget=BirthDateWidget())
