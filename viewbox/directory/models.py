from django.db import models
from django.utils.translation import gettext_lazy as _


class State(models.Model):
    """A US state where the organization runs imaging groups."""

    code = models.CharField(_("code"), max_length=2, unique=True)
    name = models.CharField(_("name"), max_length=64)
    # Times in HL7 messages without an offset are read in this zone.
    time_zone = models.CharField(
        _("time zone"), max_length=64, default="America/New_York"
    )

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class ImagingGroup(models.Model):
    """A radiology practice with its own regional portal."""

    state = models.ForeignKey(State, on_delete=models.PROTECT, related_name="groups")
    slug = models.SlugField(_("slug"), max_length=80, unique=True)
    name = models.CharField(_("name"), max_length=128)
    portal_url = models.URLField(_("regional portal address"), blank=True)
    # MSH-4, the sending facility, of HL7 messages from this group's RIS.
    ris_facility = models.CharField(_("RIS facility"), max_length=32, unique=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class Location(models.Model):
    """An imaging center of a group, where visits take place."""

    group = models.ForeignKey(
        ImagingGroup, on_delete=models.PROTECT, related_name="locations"
    )
    slug = models.SlugField(_("slug"), max_length=80)
    name = models.CharField(_("name"), max_length=128)
    city = models.CharField(_("city"), max_length=64)
    state = models.ForeignKey(State, on_delete=models.PROTECT, related_name="locations")
    # The code the RIS uses for this location (HL7 PV1-3 point of care).
    ris_code = models.CharField(_("RIS location code"), max_length=32, unique=True)

    class Meta:
        ordering = ["name"]
        constraints = [
            models.UniqueConstraint(
                fields=["group", "slug"], name="location_slug_unique_in_group"
            )
        ]

    def __str__(self) -> str:
        return self.name
