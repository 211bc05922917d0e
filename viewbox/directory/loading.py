"""Loading the directory of states, imaging groups and locations from JSON.

The file lists states, each with its groups, each with its locations::

    {"states": [{"code": "MD", "name": "Maryland",
                 "time_zone": "America/New_York",
                 "groups": [{"name": "Advanced Radiology",
                             "slug": "advanced-radiology",
                             "ris_facility": "AR",
                             "locations": [{"name": "Towson Imaging Center",
                                            "slug": "towson", "city": "Towson",
                                            "ris_code": "AR-TOWSON"}]}]}]}

Loading updates rows in place by their keys (state code, group slug,
location RIS code) and never deletes, so records that point at a location
survive a file that no longer lists it.
"""

import zoneinfo
from dataclasses import dataclass
from typing import Any

from django.db import transaction

from viewbox.directory.models import ImagingGroup, Location, State


class DirectoryFileError(ValueError):
    pass


@dataclass
class LoadCounts:
    states: int = 0
    groups: int = 0
    locations: int = 0


def _require(item: dict[str, Any], key: str, where: str) -> str:
    value = item.get(key)
    if not isinstance(value, str) or not value.strip():
        raise DirectoryFileError(f"{where}: missing or empty {key!r}")
    return value.strip()


@transaction.atomic
def load_directory(data: dict[str, Any]) -> LoadCounts:
    counts = LoadCounts()
    for state_item in data.get("states", []):
        code = _require(state_item, "code", "state")
        time_zone = _require(state_item, "time_zone", f"state {code}")
        if time_zone not in zoneinfo.available_timezones():
            raise DirectoryFileError(f"state {code}: unknown time zone {time_zone!r}")
        state, _ = State.objects.update_or_create(
            code=code,
            defaults={
                "name": _require(state_item, "name", f"state {code}"),
                "time_zone": time_zone,
            },
        )
        counts.states += 1
        for group_item in state_item.get("groups", []):
            slug = _require(group_item, "slug", f"group in {code}")
            group, _ = ImagingGroup.objects.update_or_create(
                slug=slug,
                defaults={
                    "state": state,
                    "name": _require(group_item, "name", f"group {slug}"),
                    "ris_facility": _require(
                        group_item, "ris_facility", f"group {slug}"
                    ),
                },
            )
            counts.groups += 1
            for location_item in group_item.get("locations", []):
                ris_code = _require(location_item, "ris_code", f"location of {slug}")
                Location.objects.update_or_create(
                    ris_code=ris_code,
                    defaults={
                        "group": group,
                        "state": state,
                        "slug": _require(location_item, "slug", f"location {ris_code}"),
                        "name": _require(location_item, "name", f"location {ris_code}"),
                        "city": _require(location_item, "city", f"location {ris_code}"),
                    },
                )
                counts.locations += 1
    return counts
