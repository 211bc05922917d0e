"""Sign-up steps 1 and 2: find the patient's record, then check who is asking.

Step 1 takes the details a person types (``AboutYou``) and looks for exactly
one matching record in the imaging group. Step 2 shows multiple-choice
questions built from that record's visits. When nothing matches, step 2 shows
decoy questions of the same shape that no answer can pass, so the page does
not reveal whether the person is a patient of the group.

Failed checks count against the client address and against the record (or,
without a record, against the typed details), so that repeated guesses lock
a real record and a made-up person alike.
"""

import hashlib
import hmac
import logging
import random
import re
import unicodedata
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Literal

from django.conf import settings
from django.db.models import Count, QuerySet
from django.utils import timezone
from django.utils.formats import date_format
from django.utils.translation import gettext, gettext_lazy

from viewbox.access import throttle
from viewbox.audit.actions import record_event
from viewbox.audit.models import AuditEvent
from viewbox.directory.models import ImagingGroup, Location
from viewbox.records.models import Exam, Patient, Visit

logger = logging.getLogger(__name__)

ADULT_AGE = 18


@dataclass(frozen=True)
class AboutYou:
    """The details typed in sign-up step 1."""

    given_name: str
    family_name: str
    birth_date: date
    sex: str
    postal_code: str
    phone: str


def is_minor(birth_date: date, today: date) -> bool:
    """Return whether a person born on ``birth_date`` is under 18 on ``today``.

    Someone born on 29 February turns 18 on 1 March in a year without
    29 February, so the portal never lets them in a day early.
    """
    try:
        adult_from = birth_date.replace(year=birth_date.year + ADULT_AGE)
    except ValueError:
        adult_from = date(birth_date.year + ADULT_AGE, 3, 1)
    return today < adult_from


# Finding the record


def find_patient(group: ImagingGroup, about: AboutYou) -> Patient | None:
    """Return the one patient of ``group`` that matches ``about``, else None.

    Names match ignoring case, accents, spaces and punctuation, and birth
    dates must be equal. Sex, ZIP code (first 5 digits) and phone (last 10
    digits) must be equal too, except where the record leaves them blank or
    the sex unknown ("U"). The RIS does not always send them, and the
    questions of step 2 are what keeps strangers out. Several matching
    records (a duplicate in the RIS) give None, like no match.
    """
    candidates = Patient.objects.filter(group=group, birth_date=about.birth_date)
    matches = [patient for patient in candidates if _matches(patient, about)]
    if len(matches) > 1:
        logger.info(
            "Sign-up details match %d patient records of group %d, so none is used",
            len(matches),
            group.pk,
        )
    return matches[0] if len(matches) == 1 else None


def _matches(patient: Patient, about: AboutYou) -> bool:
    if _name_key(patient.given_name) != _name_key(about.given_name):
        return False
    if _name_key(patient.family_name) != _name_key(about.family_name):
        return False
    recorded_sex = patient.sex.strip().upper()
    if recorded_sex not in ("", "U") and recorded_sex != about.sex.strip().upper():
        return False
    if patient.postal_code and _zip5(patient.postal_code) != _zip5(about.postal_code):
        return False
    return not patient.phone or _phone10(patient.phone) == _phone10(about.phone)


def _name_key(name: str) -> str:
    """Return a name folded to lower-case letters and digits without accents."""
    decomposed = unicodedata.normalize("NFKD", name)
    bare = "".join(char for char in decomposed if not unicodedata.combining(char))
    return "".join(char for char in bare.casefold() if char.isalnum())


def _zip5(postal_code: str) -> str:
    return re.sub(r"\D", "", postal_code)[:5]


def _phone10(phone: str) -> str:
    return re.sub(r"\D", "", phone)[-10:]


def _details_key(about: AboutYou) -> str:
    """Return the typed details folded the way ``find_patient`` compares them."""
    parts = (
        _name_key(about.given_name),
        _name_key(about.family_name),
        about.birth_date.isoformat(),
        about.sex.strip().upper(),
        _zip5(about.postal_code),
        _phone10(about.phone),
    )
    return "|".join(parts)


# Questions

LOCATION = "location"
EXAM = "exam"
REFERRER = "referrer"
QUESTION_KINDS = (LOCATION, EXAM, REFERRER)

PROMPTS = {
    LOCATION: gettext_lazy("Which location did you visit on %(date)s?"),
    EXAM: gettext_lazy("Which exam did you have on %(date)s?"),
    REFERRER: gettext_lazy("Which doctor referred you for an exam on %(date)s?"),
}

# Each question lists this many labels, then "None of these".
LISTED_CHOICES = 4
NONE_OF_THESE = "none"
# How often the right label is left out, so that "None of these" is right.
# At 1 in 5 it is right as often as each of the four listed labels, so
# always picking it is no better a guess than any other choice.
NONE_OF_THESE_SHARE = 0.2
# Decoy dates, when the group has no visits yet, fall within this many days
# before today.
DECOY_DATE_SPAN_DAYS = 730

# Wrong choices top up from these lists when the group's own data has too
# few. Exams leave out anything only one sex would have, which would be
# easy to rule out.
COMMON_EXAMS = (
    "XR CHEST 2 VIEWS",
    "XR KNEE 3 VIEWS",
    "XR LUMBAR SPINE 3 VIEWS",
    "XR SHOULDER 2 VIEWS",
    "XR HAND 3 VIEWS",
    "XR FOOT 3 VIEWS",
    "CT HEAD WITHOUT CONTRAST",
    "CT ABDOMEN AND PELVIS WITH CONTRAST",
    "CT SINUSES WITHOUT CONTRAST",
    "CT CHEST WITH CONTRAST",
    "MR BRAIN WITH AND WITHOUT CONTRAST",
    "MR LUMBAR SPINE WITHOUT CONTRAST",
    "MR CERVICAL SPINE WITHOUT CONTRAST",
    "MR KNEE WITHOUT CONTRAST",
    "MR SHOULDER WITHOUT CONTRAST",
    "US ABDOMEN COMPLETE",
    "US THYROID",
    "US CAROTID DUPLEX BILATERAL",
    "US RENAL COMPLETE",
    "DXA BONE DENSITY",
    "NM BONE SCAN WHOLE BODY",
)
COMMON_PHYSICIANS = (
    "Dr. Maria Alvarez",
    "Dr. James Whitfield",
    "Dr. Priya Raman",
    "Dr. Daniel Okafor",
    "Dr. Susan Feldman",
    "Dr. Kevin Tran",
    "Dr. Laura Bennett",
    "Dr. Michael Romero",
    "Dr. Angela Brooks",
    "Dr. Steven Nakamura",
    "Dr. Rachel Goldberg",
    "Dr. Omar Haddad",
    "Dr. Karen Lindqvist",
    "Dr. Thomas Reyes",
    "Dr. Helen Park",
    "Dr. Robert Castillo",
)
COMMON_LOCATIONS = (
    "Downtown Imaging Center",
    "Westside Medical Imaging",
    "Northgate Diagnostic Imaging",
    "Lakeview Imaging Center",
    "Park Avenue Radiology",
    "Riverside Open MRI",
    "Hillcrest Imaging",
    "Eastside Diagnostic Center",
    "Harbor Imaging Center",
    "Meadowbrook Radiology",
)


@dataclass(frozen=True)
class Question:
    """One multiple-choice question of step 2, as kept in the session.

    ``options`` are the listed labels in display order, without "None of
    these". ``answer`` is the id of the right choice, or None on a decoy
    question, which no answer passes.
    """

    key: str
    kind: str
    date_of_service: date
    options: tuple[str, ...]
    answer: str | None

    @property
    def prompt(self) -> str:
        """Return the question in the active language."""
        when = date_format(self.date_of_service, "DATE_FORMAT")
        return str(PROMPTS[self.kind]) % {"date": when}

    @property
    def choices(self) -> list[tuple[str, str]]:
        """Return (id, label) pairs in display order, "None of these" last."""
        listed = [(str(number), label) for number, label in enumerate(self.options, 1)]
        return [*listed, (NONE_OF_THESE, gettext("None of these"))]

    def to_session(self) -> dict[str, object]:
        """Return the question as plain JSON types for the session."""
        return {
            "key": self.key,
            "kind": self.kind,
            "date_of_service": self.date_of_service.isoformat(),
            "options": list(self.options),
            "answer": self.answer,
        }

    @classmethod
    def from_session(cls, data: Mapping[str, object]) -> "Question":
        """Rebuild a question from ``to_session`` output; raise ValueError if bad."""
        key = data.get("key")
        kind = data.get("kind")
        day = data.get("date_of_service")
        options = data.get("options")
        answer = data.get("answer")
        malformed = ValueError("A sign-up question stored in the session is malformed.")
        if not isinstance(key, str) or not isinstance(day, str):
            raise malformed
        if not isinstance(kind, str) or kind not in PROMPTS:
            raise malformed
        if not isinstance(options, list) or not all(
            isinstance(option, str) for option in options
        ):
            raise malformed
        if answer is not None and not isinstance(answer, str):
            raise malformed
        return cls(key, kind, date.fromisoformat(day), tuple(options), answer)


def check_answers(questions: Sequence[Question], answers: Mapping[str, str]) -> bool:
    """Return True only if every question is real and answered right.

    ``answers`` maps question keys to the chosen choice ids. Every question
    is checked, so a wrong first answer takes as long as a right one.
    """
    results = [
        question.answer is not None and answers.get(question.key) == question.answer
        for question in questions
    ]
    return bool(results) and all(results)


def build_questions(
    group: ImagingGroup,
    patient: Patient | None,
    rng: random.Random,
    *,
    sex: str = "",
) -> list[Question]:
    """Build one question of each kind, in random order.

    Questions ask about the patient's own visits that took place by today
    and hold at least one exam that was not cancelled. Without a patient or
    such a visit, the questions are decoys, which no answer passes. Decoys
    have the same kinds and number of choices, draw wrong choices the same
    way, and ask about the visit dates of a random patient of the group.

    ``sex`` is the sex typed in step 1. When given, wrong exam choices come
    only from exams of patients of that sex, so that none is easy to rule
    out. Pass the typed value for real and decoy questions alike.
    """
    facts = _patient_facts(patient) if patient is not None else {}
    is_real = bool(facts)
    if not is_real:
        # A patient with one visit gets three questions about one date. Dates
        # of a stand-in patient make decoys ask about as many dates, as far
        # apart, as real questions do.
        facts = _stand_in_facts(group, rng)
    pools = _group_pools(group, sex)
    used_dates: set[date] = set()
    kinds = list(QUESTION_KINDS)
    rng.shuffle(kinds)

    questions = []
    for number, kind in enumerate(kinds, 1):
        day = _pick_date(kind, facts, used_dates, rng) if facts else _recent_date(rng)
        used_dates.add(day)
        if is_real:
            options, answer = _real_choices(kind, facts, day, pools[kind], rng)
        else:
            options, answer = _choose_options(kind, "", set(), pools[kind], rng), None
        questions.append(Question(f"q{number}", kind, day, tuple(options), answer))
    return questions


# The patient's visits by date of service, each with the labels that are
# right for each kind of question on that date.
_Facts = dict[date, dict[str, set[str]]]


def _patient_facts(patient: Patient) -> _Facts:
    visits = (
        Visit.objects.filter(patient=patient, date_of_service__lte=timezone.localdate())
        .select_related("location")
        .prefetch_related("exams")
    )
    facts: _Facts = {}
    for visit in visits:
        exams = [e for e in visit.exams.all() if e.status != Exam.Status.CANCELLED]
        if not exams:
            continue
        labels = facts.setdefault(
            visit.date_of_service, {kind: set() for kind in QUESTION_KINDS}
        )
        labels[LOCATION].add(_display(LOCATION, visit.location.name))
        labels[EXAM].update(_display(EXAM, exam.description) for exam in exams)
        labels[REFERRER].update(
            _display(REFERRER, exam.referring_physician)
            for exam in exams
            if exam.referring_physician.strip()
        )
    return facts


def _stand_in_facts(group: ImagingGroup, rng: random.Random) -> _Facts:
    """Return the facts of a random patient of the group who had a visit."""
    patients = (
        Patient.objects.filter(
            group=group, visits__date_of_service__lte=timezone.localdate()
        )
        .distinct()
        .order_by("pk")
    )
    total = patients.count()
    if total == 0:
        return {}
    return _patient_facts(patients[rng.randrange(total)])


def _pick_date(
    kind: str, facts: _Facts, used_dates: set[date], rng: random.Random
) -> date:
    """Pick a visit date with a right label of ``kind``, preferring new dates.

    When no visit has one, which happens when no exam names a referring
    physician, any visit date is picked.
    """
    dates = sorted(day for day, labels in facts.items() if labels[kind])
    if not dates:
        dates = sorted(facts)
    fresh = [day for day in dates if day not in used_dates]
    return rng.choice(fresh or dates)


def _real_choices(
    kind: str, facts: _Facts, day: date, pool: Counter[str], rng: random.Random
) -> tuple[list[str], str]:
    """Return the listed labels and the right choice id of a real question.

    Labels the patient has on any date never appear as wrong choices, so
    that a patient who had the same exam twice is not misled. Without a
    right label on ``day`` (no referring physician), "None of these" is
    right.
    """
    right_labels = sorted(facts[day][kind])
    own_labels = set().union(*(labels[kind] for labels in facts.values()))
    leave_out = rng.random() < NONE_OF_THESE_SHARE or not right_labels
    right = "" if leave_out else rng.choice(right_labels)
    options = _choose_options(kind, right, own_labels, pool, rng)
    answer = str(options.index(right) + 1) if right else NONE_OF_THESE
    return options, answer


def _choose_options(
    kind: str,
    right: str,
    excluded: set[str],
    pool: Counter[str],
    rng: random.Random,
) -> list[str]:
    """Return ``right`` (unless empty) and wrong labels, shuffled.

    Wrong labels are drawn weighted by how often the group uses them, as the
    right answer of a random patient would be, so that neither a common
    right answer nor a decoy question is easy to spot. Labels in
    ``excluded`` are never listed.
    """
    taken = {label.casefold() for label in excluded}
    chosen = [right] if right else []
    taken.update(label.casefold() for label in chosen)

    available = Counter(
        {label: n for label, n in pool.items() if label.casefold() not in taken}
    )
    for label in _weighted_sample(available, LISTED_CHOICES - len(chosen), rng):
        chosen.append(label)
        taken.add(label.casefold())

    fallback = [
        _display(kind, label)
        for label in _FALLBACKS[kind]
        if _display(kind, label).casefold() not in taken
    ]
    rng.shuffle(fallback)
    chosen += fallback[: LISTED_CHOICES - len(chosen)]
    rng.shuffle(chosen)
    return chosen


def _weighted_sample(
    counts: Mapping[str, int], k: int, rng: random.Random
) -> list[str]:
    """Draw ``k`` distinct labels, each as likely as its count makes it.

    Sorting by ``u ** (1 / weight)`` for uniform ``u`` is the Efraimidis and
    Spirakis method for weighted sampling without replacement.
    """
    if k <= 0:
        return []
    ranked = sorted(counts, key=lambda label: rng.random() ** (1 / counts[label]))
    return ranked[-k:]


_FALLBACKS: dict[str, Sequence[str]] = {
    LOCATION: COMMON_LOCATIONS,
    EXAM: COMMON_EXAMS,
    REFERRER: COMMON_PHYSICIANS,
}


def _display(kind: str, label: str) -> str:
    """Return a label as the questions show it.

    Exams and physicians come in mixed styles from different RIS feeds and
    from the built-in lists, so they are shown in capitals throughout, where
    a different style would single out the right answer.
    """
    text = " ".join(label.split())
    return text if kind == LOCATION else text.upper()


def _group_pools(group: ImagingGroup, sex: str) -> dict[str, Counter[str]]:
    """Return, per kind, the group's labels and how often each occurs."""
    exams = Exam.objects.filter(group=group).exclude(status=Exam.Status.CANCELLED)
    same_sex_exams = exams.filter(visit__patient__sex__iexact=sex) if sex else exams
    referred_exams = exams.exclude(referring_physician="")
    return {
        LOCATION: _location_pool(group),
        EXAM: _count_labels(EXAM, same_sex_exams, "description"),
        REFERRER: _count_labels(REFERRER, referred_exams, "referring_physician"),
    }


def _location_pool(group: ImagingGroup) -> Counter[str]:
    """Count the visits at each location of the group, plus one.

    Groups with few locations borrow the names of other groups' locations in
    the same state, counted once each, which look real to a patient.
    """
    pool: Counter[str] = Counter()
    rows = Location.objects.filter(group=group).values("name")
    for row in rows.annotate(n=Count("visits")).order_by():
        pool[_display(LOCATION, row["name"])] += 1 + row["n"]
    if len(pool) <= LISTED_CHOICES:
        others = Location.objects.filter(state=group.state).exclude(group=group)
        for location in others:
            pool.setdefault(_display(LOCATION, location.name), 1)
    return pool


def _count_labels(
    kind: str,
    exams: QuerySet[Exam],
    field: Literal["description", "referring_physician"],
) -> Counter[str]:
    pool: Counter[str] = Counter()
    for row in exams.values(field).annotate(n=Count("pk")).order_by():
        label = row[field]
        if label.strip():
            pool[_display(kind, label)] += row["n"]
    return pool


def _recent_date(rng: random.Random) -> date:
    """Return a random date before today, for decoys of a group without visits."""
    days_ago = rng.randrange(1, DECOY_DATE_SPAN_DAYS)
    return timezone.localdate() - timedelta(days=days_ago)


# Throttling failed checks


def verification_locked(
    client_address: str | None,
    patient: Patient | None,
    about: AboutYou | None = None,
) -> bool:
    """Return whether the client, or the record, has too many failed checks.

    Without a patient, pass the typed details as ``about``: they are counted
    as a record of their own, so that a made-up person locks after as many
    failures as a real one, and a lock reveals nothing.
    """
    keys = _throttle_keys(client_address, patient, about)
    locked = throttle.locked_buckets(settings.SIGN_UP_THROTTLE, keys)
    if patient is None and about is None:
        # Every call without details shares one key, which would lock for
        # everyone; it is counted only so that the work looks alike.
        locked = [bucket for bucket in locked if bucket != "signup-record"]
    if locked:
        logger.info("Sign-up identity check rejected: locked by %s", ", ".join(locked))
    return bool(locked)


def record_failed_verification(
    client_address: str | None,
    patient: Patient | None,
    about: AboutYou | None = None,
) -> None:
    """Count one failed identity check, and log and audit any lock it causes.

    A failure is a wrong answer, or step 1 details that match no record (the
    person is then shown decoy questions and fails there).
    """
    keys = _throttle_keys(client_address, patient, about)
    newly_locked = throttle.record_failure(settings.SIGN_UP_THROTTLE, keys)
    if patient is None and about is None:
        newly_locked = [bucket for bucket in newly_locked if bucket != "signup-record"]
    for bucket in newly_locked:
        logger.warning(
            "Sign-up identity checks locked for bucket %s (patient %s)",
            bucket,
            patient.pk if patient is not None else "-",
        )
        record_event(
            "account.sign_up_locked",
            outcome=AuditEvent.Outcome.FAILURE,
            actor_kind="anonymous",
            patient_id=patient.pk if patient is not None else None,
            client_address=client_address,
        )


def _throttle_keys(
    client_address: str | None, patient: Patient | None, about: AboutYou | None
) -> dict[str, str]:
    if patient is not None:
        record = f"patient:{patient.pk}"
    elif about is not None:
        record = f"details:{_details_key(about)}"
    else:
        record = "none"
    return {
        "signup-client": throttle.bucket_key(client_address or "unknown"),
        "signup-record": throttle.bucket_key(record),
    }


def question_rng(
    group: ImagingGroup, patient: Patient | None, about: AboutYou, day: date
) -> random.Random:
    """Return the random source for one person's questions on one day.

    Seeding it from the record (or, without a match, the typed details) and
    the day gives the same questions however often step 1 is sent again.
    Fresh questions on every try would let someone collect many samples and
    pick the choice that always comes back, and tell a real record from a
    decoy by how the choices spread.
    """
    subject = f"patient:{patient.pk}" if patient else f"details:{_details_key(about)}"
    message = f"sign-up-questions:{group.pk}:{subject}:{day.isoformat()}".encode()
    digest = hmac.new(settings.SECRET_KEY.encode(), message, hashlib.sha256).digest()
    # The seed is a keyed digest that changes daily, and each sign-up shows
    # only a few choices from it, so a plain PRNG is enough here.
    return random.Random(int.from_bytes(digest, "big"))  # noqa: S311
