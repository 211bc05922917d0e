"""The state of one sign-up, kept in the server-side session between steps.

A sign-up moves through four steps. Each step's view checks that the steps
before it were passed in this session, so a browser cannot skip ahead by
typing a later step's address.
"""

import secrets
from dataclasses import asdict, dataclass, field
from datetime import date
from typing import Any

from django.http import HttpRequest

from viewbox.accounts.identity import AboutYou

SESSION_KEY = "viewbox_sign_up"

ABOUT_YOU = 1
VERIFY = 2
CREDENTIALS = 3
EMAIL = 4


@dataclass
class SignUpState:
    group_slug: str
    sign_up_id: str = field(default_factory=lambda: secrets.token_hex(16))
    step: int = ABOUT_YOU
    # What the person typed at step 1, to show again after Back.
    about: dict[str, Any] = field(default_factory=dict)
    patient_id: int | None = None
    questions: list[dict[str, Any]] = field(default_factory=list)
    user_id: str = ""
    email: str = ""
    password_hash: str = ""


def load(request: HttpRequest, group_slug: str) -> SignUpState | None:
    data = request.session.get(SESSION_KEY)
    if not data or data.get("group_slug") != group_slug:
        return None
    return SignUpState(**data)


def save(request: HttpRequest, state: SignUpState) -> None:
    request.session[SESSION_KEY] = asdict(state)


def clear(request: HttpRequest) -> None:
    request.session.pop(SESSION_KEY, None)


def about_initial(state: SignUpState) -> dict[str, Any]:
    """Return the step 1 details in the shape the form takes as initial data."""
    initial = dict(state.about)
    if "birth_date" in initial:
        initial["birth_date"] = date.fromisoformat(initial["birth_date"])
    return initial


def about_you(state: SignUpState) -> AboutYou:
    """Return the step 1 details as the identity checks take them."""
    about = dict(state.about)
    about["birth_date"] = date.fromisoformat(about["birth_date"])
    return AboutYou(**about)
