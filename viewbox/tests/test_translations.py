"""The Spanish catalogue: complete, so that no message falls back to English."""

import re
from pathlib import Path

from django.conf import settings

CATALOGUE = Path(settings.BASE_DIR) / "locale" / "es" / "LC_MESSAGES" / "django.po"


def entries() -> list[list[str]]:
    """Return the catalogue's entries, each as its lines."""
    return [
        block.splitlines() for block in CATALOGUE.read_text().split("\n\n") if block
    ]


def declared_plural_forms() -> int:
    match = re.search(r"nplurals=(\d+);", CATALOGUE.read_text())
    assert match is not None
    return int(match.group(1))


def test_plural_messages_have_every_form() -> None:
    forms = declared_plural_forms()
    for lines in entries():
        if not any(line.startswith("msgid_plural ") for line in lines):
            continue
        numbered = [line.split("]")[0] for line in lines if line.startswith("msgstr[")]
        assert numbered == [f"msgstr[{n}" for n in range(forms)], lines[:4]


def test_no_message_is_fuzzy_or_empty() -> None:
    for lines in entries()[1:]:  # The first entry is the header.
        if any(line.startswith("#~") for line in lines):
            continue  # An obsolete entry, which gettext ignores.
        assert not any(line.startswith("#,") and "fuzzy" in line for line in lines)
        translations = "".join(
            line for line in lines if line.startswith(("msgstr", '"'))
        )
        assert re.sub(r'msgstr(\[\d\])? ""', "", translations).strip('"'), lines[:4]
