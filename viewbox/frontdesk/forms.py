from typing import Any

from django import forms
from django.db.models import QuerySet
from django.utils.translation import gettext_lazy as _

from viewbox.records.models import Exam
from viewbox.viewer.forms import BirthDateField, BirthDateWidget, icode_field


class GetHelpForm(forms.Form):
    name = forms.CharField(
        label=_("Patient's full name"),
        max_length=256,
        help_text=_("As on the Portal Pass."),
        error_messages={"required": _("Enter the patient's full name.")},
        widget=forms.TextInput(attrs={"autocomplete": "name"}),
    )
    birth_date = BirthDateField(label=_("Date of birth"), widget=BirthDateWidget())
    code = icode_field()
    email = forms.EmailField(
        label=_("Your email address"),
        help_text=_("We email you the answer. The email holds no health information."),
        error_messages={
            "required": _("Enter your email address."),
            "invalid": _("Enter an email address such as name@example.com."),
        },
        widget=forms.EmailInput(attrs={"autocomplete": "email"}),
    )


class VisitSearchForm(forms.Form):
    name = forms.CharField(label=_("Patient name"), max_length=128, required=False)
    birth_date = forms.DateField(
        label=_("Date of birth"),
        required=False,
        help_text=_("As YYYY-MM-DD or MM/DD/YYYY."),
        input_formats=["%Y-%m-%d", "%m/%d/%Y"],
    )
    accession_number = forms.CharField(
        label=_("Accession number"), max_length=16, required=False
    )

    def clean(self) -> dict[str, object]:
        cleaned = super().clean() or {}
        if not any(
            cleaned.get(name) for name in ("name", "birth_date", "accession_number")
        ):
            raise forms.ValidationError(
                _("Enter a name, a date of birth or an accession number.")
            )
        return cleaned


class ExamChoiceField(forms.ModelMultipleChoiceField):
    def label_from_instance(self, obj: Exam) -> str:
        return f"{obj.accession_number}: {obj.description}"


class PrintPassForm(forms.Form):
    exams = ExamChoiceField(
        label=_("Exams on the pass"),
        queryset=Exam.objects.none(),
        widget=forms.CheckboxSelectMultiple,
        error_messages={"required": _("Choose at least one exam.")},
    )
    per_exam = forms.BooleanField(
        label=_("One I-Code per exam"),
        required=False,
        help_text=_("Otherwise one I-Code opens all the chosen exams."),
    )
    revoke_older = forms.BooleanField(
        label=_("Revoke earlier I-Codes for these exams"),
        required=False,
        help_text=_(
            "Tick when an earlier pass was lost or given to the wrong person. "
            "Leave it empty for a second copy: earlier passes then keep working."
        ),
    )

    def __init__(self, *args: Any, exams: QuerySet[Exam], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        field = self.fields["exams"]
        assert isinstance(field, ExamChoiceField)
        field.queryset = exams
