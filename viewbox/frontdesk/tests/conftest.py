from datetime import date

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group, User
from django.test import Client

from viewbox.conftest import log_in_verified_staff, make_exam, make_patient
from viewbox.directory.models import Location
from viewbox.records.models import Exam

STAFF_PASSWORD = "correct horse battery staple"


@pytest.fixture
def staff_member(db: None) -> User:
    user = get_user_model().objects.create_user(
        "rita.reception", password=STAFF_PASSWORD, is_staff=True
    )
    user.groups.add(Group.objects.get(name="Front desk"))
    return user


@pytest.fixture
def staff_client(staff_member: User) -> Client:
    """A client of a staff member who passed the password and the TOTP code."""
    client = Client()
    log_in_verified_staff(client, staff_member)
    return client


@pytest.fixture
def exam(california: Location) -> Exam:
    patient = make_patient(
        california, "MRN-FD-1", "Fiona", "Testpatient", date(1980, 4, 12)
    )
    return make_exam(patient, california, "ACC-FD-1")
