"""Shared test fixtures: a directory, fake patients and real DICOM files."""

import importlib.util
from collections.abc import Iterator
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from django.utils import timezone

from viewbox.accounts.mail_catcher import MailCatcher
from viewbox.browser_fixtures import browser, demo_site  # noqa: F401 (fixtures)
from viewbox.directory.models import ImagingGroup, Location, State
from viewbox.records.models import Exam, Patient, ReportVersion, Visit


def package_path(package: str, relative: str) -> Path:
    """Return a file shipped inside an installed package, without the network."""
    spec = importlib.util.find_spec(package)
    assert spec is not None and spec.origin is not None, package
    return Path(spec.origin).parent / relative


@pytest.fixture(autouse=True)
def isolated_files(settings: Any, tmp_path: Path) -> Path:
    """Give each test its own storage and quarantine, and no task worker."""
    settings.STORAGES = {
        **settings.STORAGES,
        "default": {
            "BACKEND": "django.core.files.storage.FileSystemStorage",
            "OPTIONS": {"location": str(tmp_path / "media")},
        },
        "staticfiles": {
            "BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"
        },
    }
    settings.QUARANTINE_DIR = tmp_path / "quarantine"
    settings.TASKS = {
        "default": {"BACKEND": "django.tasks.backends.dummy.DummyBackend"}
    }
    return tmp_path


@pytest.fixture
def california(db: None) -> Location:
    state = State.objects.create(
        code="CA", name="California", time_zone="America/Los_Angeles"
    )
    group = ImagingGroup.objects.create(
        state=state,
        slug="radnet-los-angeles",
        name="RadNet Los Angeles",
        ris_facility="RLA",
    )
    return Location.objects.create(
        group=group,
        state=state,
        slug="santa-monica",
        name="Santa Monica Imaging Center",
        city="Santa Monica",
        ris_code="RLA-SANTAM",
    )


@pytest.fixture
def maryland(db: None) -> Location:
    state = State.objects.create(
        code="MD", name="Maryland", time_zone="America/New_York"
    )
    group = ImagingGroup.objects.create(
        state=state,
        slug="advanced-radiology",
        name="Advanced Radiology",
        ris_facility="AR",
    )
    return Location.objects.create(
        group=group,
        state=state,
        slug="towson",
        name="Towson Imaging Center",
        city="Towson",
        ris_code="AR-TOWSON",
    )


def make_patient(
    location: Location, mrn: str, given: str, family: str, birth: date
) -> Patient:
    return Patient.objects.create(
        group=location.group,
        mrn=mrn,
        given_name=given,
        family_name=family,
        birth_date=birth,
    )


def make_exam(
    patient: Patient,
    location: Location,
    accession: str,
    *,
    day: date = date(2026, 11, 20),
    status: str = Exam.Status.COMPLETED,
    description: str = "CT CHEST WITHOUT CONTRAST",
) -> Exam:
    visit, _ = Visit.objects.get_or_create(
        patient=patient, location=location, date_of_service=day
    )
    return Exam.objects.create(
        group=location.group,
        visit=visit,
        accession_number=accession,
        description=description,
        modality="CT",
        reason="Persistent cough",
        referring_physician="Dr. Pat Example",
        performed_at=timezone.make_aware(datetime.combine(day, datetime.min.time()))
        + timedelta(hours=17),
        status=status,
        completed_at=timezone.now() if status == Exam.Status.COMPLETED else None,
    )


def add_report(
    exam: Exam,
    status: str,
    text: str,
    signed_at: datetime | None,
    sent_at: datetime | None = None,
    control_id: str | None = None,
) -> ReportVersion:
    return ReportVersion.objects.create(
        exam=exam,
        status=status,
        text=text,
        radiologist="Dr. Ima Reader",
        signed_at=signed_at,
        sent_to_referrer_at=sent_at if sent_at is not None else signed_at,
        message_control_id=control_id or f"TEST-{ReportVersion.objects.count() + 1}",
    )


@pytest.fixture
def mail_catcher(settings: Any) -> Iterator[MailCatcher]:
    """Start a MailCatcher on a free loopback port and send the portal's mail to it.

    pytest-django makes every mailer use the in-memory email backend. This
    fixture puts the SMTP backend back as the default mailer, so that
    messages travel through a real SMTP session.
    """
    with MailCatcher() as catcher:
        settings.MAILERS = {
            **settings.MAILERS,
            "default": {
                "BACKEND": "django.core.mail.backends.smtp.EmailBackend",
                "OPTIONS": {"host": catcher.host, "port": catcher.port, "timeout": 10},
            },
        }
        yield catcher
