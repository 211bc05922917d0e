"""Shared test fixtures: a directory, fake patients and real DICOM files."""

import importlib.util
import os
import struct
import tempfile
from collections.abc import Iterator
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from viewbox.access.actions import issue_icode
from viewbox.accounts.mail_catcher import MailCatcher
from viewbox.browser_fixtures import browser, demo_site  # noqa: F401 (fixtures)
from viewbox.directory.models import ImagingGroup, Location, State
from viewbox.frontdesk.two_factor import SESSION_VERIFIED
from viewbox.records.models import Exam, Patient, ReportVersion, Visit
from viewbox.tests import log_scan


def package_path(package: str, relative: str) -> Path:
    """Return a file shipped inside an installed package, without the network."""
    spec = importlib.util.find_spec(package)
    assert spec is not None and spec.origin is not None, package
    return Path(spec.origin).parent / relative


def replace_is_value(path: Path, tag: int, old: str, new: str) -> None:
    """Replace an Explicit VR IS value in a file's bytes.

    pydicom does not write values such as "inf". ``old`` must be the
    element's whole value, of even length.
    """
    new_value = new.encode() + b" " * (len(new) % 2)
    element = struct.pack("<HH", tag >> 16, tag & 0xFFFF) + b"IS"
    before = element + len(old).to_bytes(2, "little") + old.encode()
    data = path.read_bytes()
    assert data.count(before) == 1
    after = element + len(new_value).to_bytes(2, "little") + new_value
    path.write_bytes(data.replace(before, after))


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


def make_location(
    state: tuple[str, str, str], group: tuple[str, str, str], location: tuple[str, str]
) -> Location:
    """Create a location with its group and state.

    ``state`` is (code, name, time zone), ``group`` (slug, name, RIS facility)
    and ``location`` (city, RIS code); the location's slug comes from its city.
    """
    code, state_name, time_zone = state
    group_slug, group_name, facility = group
    city, ris_code = location
    state_row, _ = State.objects.get_or_create(
        code=code, defaults={"name": state_name, "time_zone": time_zone}
    )
    group_row = ImagingGroup.objects.create(
        state=state_row, slug=group_slug, name=group_name, ris_facility=facility
    )
    return Location.objects.create(
        group=group_row,
        state=state_row,
        slug=city.lower().replace(" ", "-"),
        name=f"{city} Imaging Center",
        city=city,
        ris_code=ris_code,
    )


@pytest.fixture
def california(db: None) -> Location:
    return make_location(
        ("CA", "California", "America/Los_Angeles"),
        ("radnet-los-angeles", "RadNet Los Angeles", "RLA"),
        ("Santa Monica", "RLA-SANTAM"),
    )


@pytest.fixture
def maryland(db: None) -> Location:
    return make_location(
        ("MD", "Maryland", "America/New_York"),
        ("advanced-radiology", "Advanced Radiology", "AR"),
        ("Towson", "AR-TOWSON"),
    )


def sign_in_with_icode(client: Client, exam: Exam) -> None:
    """Issue an I-Code for the exam's visit and sign the client in with it."""
    _, code = issue_icode(exam.visit)
    birth = exam.visit.patient.birth_date
    location = exam.visit.location
    response = client.post(
        reverse("viewer:icode_sign_in", args=[location.group.slug, location.slug]),
        {
            "code": code,
            "birth_date_month": birth.month,
            "birth_date_day": birth.day,
            "birth_date_year": birth.year,
        },
    )
    assert response.status_code == 302


def log_in_verified_staff(client: Client, user: Any) -> None:
    """Log a staff user in as if they had typed the password and a TOTP code."""
    client.force_login(user)
    session = client.session
    session[SESSION_VERIFIED] = user.pk
    session.save()


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


# Every log record of the session, from this process and from the processes
# the tests start, is checked at the end for patient data and secrets. Any
# find fails the run (see viewbox/tests/log_scan.py).
_SESSION_LOG = pytest.StashKey[log_scan.SessionLog]()
_LEAKS = pytest.StashKey[list[log_scan.Leak]]()


def pytest_sessionstart(session: pytest.Session) -> None:
    handle, name = tempfile.mkstemp(prefix="viewbox-test-", suffix=".log")
    os.close(handle)
    session_log = log_scan.SessionLog(Path(name))
    session_log.start()
    session.config.stash[_SESSION_LOG] = session_log


@pytest.hookimpl(tryfirst=True)
def pytest_sessionfinish(session: pytest.Session) -> None:
    session_log = session.config.stash.get(_SESSION_LOG, None)
    if session_log is None:
        return
    session_log.stop()
    paths = [session_log.path]
    keys = [settings.SECRET_KEY, settings.ICODE_HASH_KEY]
    factory = getattr(session.config, "_tmp_path_factory", None)
    if factory is not None and factory._basetemp is not None:
        temp = factory.getbasetemp()
        paths += sorted(temp.rglob("*.log"))
        keys += [p.read_text().strip() for p in temp.rglob("*_key") if p.is_file()]
    leaks = log_scan.find_leaks(paths, log_scan.build_needles(keys))
    session_log.path.unlink()
    session.config.stash[_LEAKS] = leaks
    if leaks and session.exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter: Any) -> None:
    leaks = terminalreporter.config.stash.get(_LEAKS, [])
    if not leaks:
        return
    terminalreporter.section("patient data or secrets in the log", red=True)
    for leak in leaks:
        terminalreporter.line(
            f"{leak.source}:{leak.line_number}: logger {leak.logger}: "
            f"{leak.masked_line}"
        )
    terminalreporter.line(f"{len(leaks)} log lines leak; the run fails.", red=True)
