from django import forms
from django.utils.translation import gettext_lazy as _

from viewbox.downloads.models import Package

PHI_ACKNOWLEDGEMENT = _(
    "Yes, I understand that I am downloading Protected Health Information (PHI)."
)


class DownloadForm(forms.Form):
    format = forms.ChoiceField(
        label=_("File type"),
        choices=Package.Format.choices,
        widget=forms.RadioSelect,
        error_messages={"required": _("Choose .zip or .iso.")},
    )
    acknowledge_phi = forms.BooleanField(
        label=PHI_ACKNOWLEDGEMENT,
        error_messages={"required": _("Check the box to confirm that you understand.")},
    )
    email = forms.EmailField(
        label=_("Email me when it is ready (optional)"),
        max_length=254,
        required=False,
        help_text=_("The email holds only a link to the portal, never your images."),
        error_messages={"invalid": _("Enter an email address like name@example.com.")},
        widget=forms.EmailInput(attrs={"autocomplete": "email"}),
    )

    def clean_acknowledge_phi(self) -> bool:
        # A checkbox posts "on"; Django would also take values such as "0"
        # as ticked, and this acknowledgement must be given in earnest.
        if self.data.get("acknowledge_phi") != "on":
            raise forms.ValidationError(
                self.fields["acknowledge_phi"].error_messages["required"]
            )
        return True
