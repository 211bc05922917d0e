import itertools
import json
import logging
import random
from dataclasses import replace
from datetime import date, timedelta

import pytest
from django.utils import timezone

from viewbox.access.models import ThrottleEvent
from viewbox.accounts import identity
from viewbox.accounts.identity import (
    EXAM,
    LOCATION,
    NONE_OF_THESE,
    REFERRER,
    AboutYou,
    Question,
    build_questions,
    check_answers,
    find_patient,
    is_minor,
    record_failed_verification,
    verification_locked,
)
from viewbox.audit.models import AuditEvent
from viewbox.conftest import make_exam, make_patient
from viewbox.directory.models import Location
from viewbox.records.models import Exam, Patient, Visit

FIONA = AboutYou(
    given_name="Fiona",
    family_name="Fakename",
    birth_date=date(1975, 6, 15),
    sex="F",
    postal_code="90401",
    phone="(310) 555-0142",
)
KNEE_DAY = date(2026, 3, 10)
THYROID_DAY = date(2025, 11, 2)


def add_patient(location: Location, mrn: str, about: AboutYou) -> Patient:
    patient = make_patient(
        location, mrn, about.given_name, about.family_name, about.birth_date
    )
    patient.sex = about.sex
    patient.postal_code = about.postal_code
    patient.phone = about.phone
    patient.save()
    return patient


def add_exam(
    patient: Patient,
    location: Location,
    accession: str,
    day: date,
    description: str,
    referrer: str,
    status: str = Exam.Status.COMPLETED,
) -> Exam:
    exam = make_exam(
        patient, location, accession, day=day, description=description, status=status
    )
    exam.referring_physician = referrer
    exam.save()
    return exam


@pytest.fixture
def culver_city(california: Location) -> Location:
    return Location.objects.create(
        group=california.group,
        state=california.state,
        slug="culver-city",
        name="Culver City Imaging",
        city="Culver City",
        ris_code="RLA-CULVER",
    )


@pytest.fixture
def fiona(california: Location, culver_city: Location) -> Patient:
    """Fiona and two other patients of the same group, with their exams."""
    patient = add_patient(california, "FAKE-1001", FIONA)
    add_exam(
        patient,
        california,
        "ACC1001",
        KNEE_DAY,
        "MR KNEE WITHOUT CONTRAST",
        "Dr. Pat Example",
    )
    add_exam(
        patient, culver_city, "ACC1002", THYROID_DAY, "US THYROID", "Dr. Lee Sample"
    )

    gary = AboutYou("Gary", "Placeholder", date(1960, 1, 2), "M", "90230", "")
    other = add_patient(california, "FAKE-2001", gary)
    add_exam(
        other,
        california,
        "ACC2001",
        date(2026, 1, 5),
        "CT HEAD WITHOUT CONTRAST",
        "Dr. Ann Other",
    )
    add_exam(
        other,
        culver_city,
        "ACC2002",
        date(2026, 2, 6),
        "MR PROSTATE WITH AND WITHOUT CONTRAST",
        "Dr. Ben Other",
    )
    helen = AboutYou("Helen", "Testcase", date(1988, 8, 8), "F", "90066", "")
    third = add_patient(california, "FAKE-3001", helen)
    add_exam(
        third,
        california,
        "ACC3001",
        date(2026, 4, 7),
        "MAMMOGRAM SCREENING BILATERAL",
        "Dr. Cy Other",
    )
    return patient


def right_choice(question: Question, patient: Patient) -> str:
    """Work out the right choice id from the stored records, independently."""
    visits = Visit.objects.filter(
        patient=patient, date_of_service=question.date_of_service
    )
    exams = Exam.objects.filter(visit__in=visits).exclude(status=Exam.Status.CANCELLED)
    if question.kind == LOCATION:
        right = {visit.location.name.upper() for visit in visits}
    elif question.kind == EXAM:
        right = {exam.description.upper() for exam in exams}
    else:
        right = {exam.referring_physician.upper() for exam in exams}
    for choice_id, label in question.choices:
        if label.upper() in right:
            return choice_id
    return NONE_OF_THESE


def right_answers(questions: list[Question], patient: Patient) -> dict[str, str]:
    return {question.key: right_choice(question, patient) for question in questions}


class TestIsMinor:
    @pytest.mark.parametrize(
        ("birth_date", "today", "expected"),
        [
            pytest.param(date(2008, 12, 5), date(2026, 12, 4), True, id="day-before"),
            pytest.param(date(2008, 12, 4), date(2026, 12, 4), False, id="birthday"),
            pytest.param(date(1975, 6, 15), date(2026, 12, 4), False, id="adult"),
            pytest.param(date(2020, 1, 1), date(2026, 12, 4), True, id="child"),
            # 18 is not a multiple of 4, so an 18th birthday never falls on
            # a 29 February: the person turns 18 on 1 March.
            pytest.param(date(2008, 2, 29), date(2026, 2, 28), True, id="feb-28"),
            pytest.param(date(2008, 2, 29), date(2026, 3, 1), False, id="mar-1"),
        ],
    )
    def test_minor_is_under_18_on_the_day(
        self, birth_date: date, today: date, expected: bool
    ) -> None:
        assert is_minor(birth_date, today) is expected


@pytest.mark.django_db
class TestFindPatientRefused:
    def test_wrong_birth_date_finds_nothing(self, california, fiona) -> None:
        about = replace(FIONA, birth_date=date(1975, 6, 16))
        assert find_patient(california.group, about) is None

    def test_other_group_finds_nothing(self, maryland, fiona) -> None:
        assert find_patient(maryland.group, FIONA) is None

    def test_wrong_zip_finds_nothing(self, california, fiona) -> None:
        assert (
            find_patient(california.group, replace(FIONA, postal_code="90402")) is None
        )

    def test_short_zip_finds_nothing(self, california, fiona) -> None:
        assert (
            find_patient(california.group, replace(FIONA, postal_code="9040")) is None
        )

    def test_wrong_phone_finds_nothing(self, california, fiona) -> None:
        assert (
            find_patient(california.group, replace(FIONA, phone="310 555 0143")) is None
        )

    def test_wrong_sex_finds_nothing(self, california, fiona) -> None:
        assert find_patient(california.group, replace(FIONA, sex="M")) is None

    def test_wrong_given_name_finds_nothing(self, california, fiona) -> None:
        assert find_patient(california.group, replace(FIONA, given_name="Fion")) is None

    def test_two_matching_records_find_nothing(self, california, fiona, caplog) -> None:
        add_patient(california, "FAKE-1001-DUP", FIONA)
        with caplog.at_level(logging.INFO, logger="viewbox.accounts"):
            assert find_patient(california.group, FIONA) is None
        assert "match 2 patient records of group" in caplog.text
        assert "Fiona" not in caplog.text
        assert "Fakename" not in caplog.text
        assert "1975" not in caplog.text


@pytest.mark.django_db
class TestFindPatientMatches:
    def test_exact_details_find_the_record(self, california, fiona) -> None:
        assert find_patient(california.group, FIONA) == fiona

    def test_case_and_spaces_are_ignored(self, california, fiona) -> None:
        about = replace(FIONA, given_name="  fiona ", family_name="FAKENAME ", sex="f")
        assert find_patient(california.group, about) == fiona

    def test_accents_and_punctuation_are_ignored(self, california) -> None:
        zoe = AboutYou("Zoë", "O'Brien-Núñez", date(1970, 1, 1), "F", "90401", "")
        patient = add_patient(california, "FAKE-4001", zoe)
        typed = replace(zoe, given_name="ZOE", family_name="OBRIEN NUNEZ")
        assert find_patient(california.group, typed) == patient

    def test_zip_plus_four_matches_on_five_digits(self, california, fiona) -> None:
        about = replace(FIONA, postal_code="90401-1234")
        assert find_patient(california.group, about) == fiona

    def test_phone_matches_on_digits_only(self, california, fiona) -> None:
        about = replace(FIONA, phone="+1 310.555.0142")
        assert find_patient(california.group, about) == fiona

    def test_blank_details_on_the_record_are_not_compared(self, california) -> None:
        patient = make_patient(
            california, "FAKE-5001", "Ivy", "Blankfields", date(1990, 3, 3)
        )
        typed = AboutYou("Ivy", "Blankfields", date(1990, 3, 3), "F", "90001", "5")
        assert find_patient(california.group, typed) == patient

    def test_unknown_sex_on_the_record_is_not_compared(self, california, fiona) -> None:
        Patient.objects.filter(pk=fiona.pk).update(sex="U")
        assert find_patient(california.group, replace(FIONA, sex="M")) == fiona


@pytest.mark.django_db
class TestRejectedAnswers:
    def test_one_wrong_answer_fails(self, california, fiona) -> None:
        questions = build_questions(california.group, fiona, random.Random(1))
        for wrong_one in questions:
            answers = right_answers(questions, fiona)
            right = answers[wrong_one.key]
            answers[wrong_one.key] = next(
                choice_id for choice_id, _ in wrong_one.choices if choice_id != right
            )
            assert check_answers(questions, answers) is False

    def test_missing_answer_fails(self, california, fiona) -> None:
        questions = build_questions(california.group, fiona, random.Random(2))
        answers = right_answers(questions, fiona)
        del answers[questions[0].key]
        assert check_answers(questions, answers) is False

    def test_no_questions_fail(self) -> None:
        assert check_answers([], {}) is False

    def test_decoys_never_pass(self, california, fiona) -> None:
        for seed in range(5):
            questions = build_questions(california.group, None, random.Random(seed))
            ids = [[choice_id for choice_id, _ in q.choices] for q in questions]
            for combination in itertools.product(*ids):
                answers = {
                    q.key: a for q, a in zip(questions, combination, strict=True)
                }
                assert check_answers(questions, answers) is False

    def test_patient_with_only_cancelled_exams_gets_decoys(self, california) -> None:
        patient = add_patient(california, "FAKE-6001", FIONA)
        add_exam(
            patient,
            california,
            "ACC6001",
            KNEE_DAY,
            "MR KNEE WITHOUT CONTRAST",
            "Dr. Pat Example",
            status=Exam.Status.CANCELLED,
        )
        questions = build_questions(california.group, patient, random.Random(3))
        assert [q.answer for q in questions] == [None, None, None]

    def test_future_visit_is_never_asked_about(self, california) -> None:
        patient = add_patient(california, "FAKE-7001", FIONA)
        tomorrow = timezone.localdate() + timedelta(days=1)
        add_exam(
            patient,
            california,
            "ACC7001",
            tomorrow,
            "CT HEAD WITHOUT CONTRAST",
            "Dr. Pat Example",
            status=Exam.Status.SCHEDULED,
        )
        for seed in range(10):
            questions = build_questions(california.group, patient, random.Random(seed))
            assert all(q.answer is None for q in questions)
            assert all(q.date_of_service != tomorrow for q in questions)


@pytest.mark.django_db
class TestRightAnswers:
    def test_right_answers_pass(self, california, fiona) -> None:
        for seed in range(40):
            questions = build_questions(california.group, fiona, random.Random(seed))
            assert check_answers(questions, right_answers(questions, fiona)) is True

    def test_none_of_these_is_sometimes_right(self, california, fiona) -> None:
        answers = [
            question.answer
            for seed in range(200)
            for question in build_questions(
                california.group, fiona, random.Random(seed)
            )
        ]
        share = answers.count(NONE_OF_THESE) / len(answers)
        assert 0.12 < share < 0.28

    def test_missing_referrer_makes_none_of_these_right(self, california) -> None:
        patient = add_patient(california, "FAKE-8001", FIONA)
        add_exam(patient, california, "ACC8001", KNEE_DAY, "XR KNEE 3 VIEWS", "")
        for seed in range(10):
            questions = build_questions(california.group, patient, random.Random(seed))
            [referrer] = [q for q in questions if q.kind == REFERRER]
            assert referrer.answer == NONE_OF_THESE
            assert check_answers(questions, right_answers(questions, patient))


@pytest.mark.django_db
class TestQuestionShape:
    def test_one_question_of_each_kind(self, california, fiona) -> None:
        questions = build_questions(california.group, fiona, random.Random(4))
        assert sorted(q.kind for q in questions) == [EXAM, LOCATION, REFERRER]
        assert [q.key for q in questions] == ["q1", "q2", "q3"]

    def test_five_distinct_choices_with_none_of_these_last(
        self, california, fiona
    ) -> None:
        for seed in range(20):
            for question in build_questions(
                california.group, fiona, random.Random(seed)
            ):
                ids = [choice_id for choice_id, _ in question.choices]
                labels = [label.casefold() for _, label in question.choices]
                assert ids == ["1", "2", "3", "4", NONE_OF_THESE]
                assert question.choices[-1][1] == "None of these"
                assert len(set(labels)) == 5

    def test_prompt_names_the_date(self, california, fiona) -> None:
        question = Question("q1", EXAM, KNEE_DAY, ("A", "B", "C", "D"), "1")
        assert question.prompt == "Which exam did you have on March 10, 2026?"

    def test_prompts_of_each_kind(self) -> None:
        day = date(2025, 11, 2)
        prompts = {
            kind: Question("q1", kind, day, (), None).prompt
            for kind in (LOCATION, EXAM, REFERRER)
        }
        assert prompts == {
            LOCATION: "Which location did you visit on November 2, 2025?",
            EXAM: "Which exam did you have on November 2, 2025?",
            REFERRER: "Which doctor referred you for an exam on November 2, 2025?",
        }

    def test_prompt_never_holds_a_choice(self, california, fiona) -> None:
        for seed in range(20):
            for question in build_questions(
                california.group, fiona, random.Random(seed)
            ):
                for _, label in question.choices:
                    assert label.casefold() not in question.prompt.casefold()

    def test_questions_ask_about_the_patients_dates(self, california, fiona) -> None:
        for seed in range(20):
            questions = build_questions(california.group, fiona, random.Random(seed))
            assert {q.date_of_service for q in questions} <= {KNEE_DAY, THYROID_DAY}

    def test_patients_other_exams_are_never_wrong_choices(
        self, california, fiona
    ) -> None:
        for seed in range(30):
            for question in build_questions(
                california.group, fiona, random.Random(seed)
            ):
                if question.kind != EXAM:
                    continue
                labels = [label for _, label in question.choices]
                if question.date_of_service == KNEE_DAY:
                    assert "US THYROID" not in labels
                else:
                    assert "MR KNEE WITHOUT CONTRAST" not in labels

    def test_exams_and_doctors_are_shown_in_capitals(self, california, fiona) -> None:
        questions = build_questions(california.group, fiona, random.Random(5))
        for question in questions:
            if question.kind in (EXAM, REFERRER):
                assert all(label.isupper() for label in question.options)

    def test_wrong_exams_come_from_the_typed_sex(self, california, fiona) -> None:
        seen_with_sex: set[str] = set()
        seen_without: set[str] = set()
        for seed in range(40):
            for question in build_questions(
                california.group, fiona, random.Random(seed), sex="F"
            ):
                if question.kind == EXAM:
                    seen_with_sex.update(question.options)
            for question in build_questions(
                california.group, fiona, random.Random(seed)
            ):
                if question.kind == EXAM:
                    seen_without.update(question.options)
        assert "MR PROSTATE WITH AND WITHOUT CONTRAST" not in seen_with_sex
        assert "MAMMOGRAM SCREENING BILATERAL" in seen_with_sex
        assert "MR PROSTATE WITH AND WITHOUT CONTRAST" in seen_without

    def test_built_in_lists_top_up_a_small_group(self, maryland) -> None:
        patient = add_patient(maryland, "FAKE-9001", FIONA)
        add_exam(patient, maryland, "ACC9001", KNEE_DAY, "XR KNEE 3 VIEWS", "Dr. X")
        questions = build_questions(maryland.group, patient, random.Random(6))
        for question in questions:
            assert len(question.options) == 4
        [location] = [q for q in questions if q.kind == LOCATION]
        built_in = set(identity.COMMON_LOCATIONS)
        assert len(built_in & set(location.options)) >= 3

    def test_small_group_borrows_locations_of_its_state(
        self, california, fiona
    ) -> None:
        seen: set[str] = set()
        for seed in range(30):
            for question in build_questions(
                california.group, None, random.Random(seed)
            ):
                if question.kind == LOCATION:
                    seen.update(question.options)
        assert {"Santa Monica Imaging Center", "Culver City Imaging"} <= seen

    def test_decoys_look_like_real_questions(self, california, fiona) -> None:
        visit_dates = set(Visit.objects.values_list("date_of_service", flat=True))
        for seed in range(20):
            decoys = build_questions(california.group, None, random.Random(seed))
            assert sorted(q.kind for q in decoys) == [EXAM, LOCATION, REFERRER]
            for question in decoys:
                assert len(question.choices) == 5
                assert question.date_of_service in visit_dates

    def test_decoys_ask_about_one_patients_dates(self, california, fiona) -> None:
        dates_by_patient = [
            set(patient.visits.values_list("date_of_service", flat=True))
            for patient in Patient.objects.filter(group=california.group)
        ]
        for seed in range(20):
            decoys = build_questions(california.group, None, random.Random(seed))
            asked = {question.date_of_service for question in decoys}
            assert any(asked <= dates for dates in dates_by_patient)

    def test_decoys_repeat_a_single_visit_date(self, maryland) -> None:
        patient = add_patient(maryland, "FAKE-9101", FIONA)
        add_exam(patient, maryland, "ACC9101", KNEE_DAY, "XR KNEE 3 VIEWS", "Dr. X")
        decoys = build_questions(maryland.group, None, random.Random(10))
        assert [q.date_of_service for q in decoys] == [KNEE_DAY] * 3
        assert [q.answer for q in decoys] == [None] * 3

    def test_decoys_of_an_empty_group_use_recent_dates(self, maryland) -> None:
        today = timezone.localdate()
        for question in build_questions(maryland.group, None, random.Random(7)):
            assert today - timedelta(days=730) < question.date_of_service < today
            assert len(question.options) == 4


@pytest.mark.django_db
class TestSessionForm:
    def test_questions_survive_json(self, california, fiona) -> None:
        questions = build_questions(california.group, fiona, random.Random(8))
        stored = json.loads(json.dumps([q.to_session() for q in questions]))
        assert [Question.from_session(data) for data in stored] == questions

    def test_decoy_survives_json(self, california) -> None:
        [question, *_] = build_questions(california.group, None, random.Random(9))
        stored = json.loads(json.dumps(question.to_session()))
        assert Question.from_session(stored).answer is None

    @pytest.mark.parametrize(
        "broken",
        [
            {"kind": "shoe size"},
            {"key": 3},
            {"options": "ABCD"},
            {"options": [1, 2, 3, 4]},
            {"answer": 1},
            {"date_of_service": "not a date"},
        ],
    )
    def test_malformed_session_data_raises(self, broken) -> None:
        data = Question("q1", EXAM, KNEE_DAY, ("A", "B", "C", "D"), "1").to_session()
        with pytest.raises(ValueError):
            Question.from_session({**data, **broken})


@pytest.mark.django_db
class TestVerificationThrottle:
    def test_record_locks_after_its_limit_from_any_address(
        self, settings, california, fiona
    ) -> None:
        limit = settings.SIGN_UP_THROTTLE["signup-record"]["limit"]
        for attempt in range(limit):
            address = f"198.51.100.{attempt + 1}"
            assert verification_locked(address, fiona) is False
            record_failed_verification(address, fiona)
        assert verification_locked("198.51.100.200", fiona) is True

    def test_other_record_is_not_locked(self, settings, california, fiona) -> None:
        for attempt in range(settings.SIGN_UP_THROTTLE["signup-record"]["limit"]):
            record_failed_verification(f"198.51.100.{attempt + 1}", fiona)
        other = Patient.objects.get(mrn="FAKE-2001")
        assert verification_locked("198.51.100.200", other) is False

    def test_client_locks_after_its_limit(self, settings, california) -> None:
        limit = settings.SIGN_UP_THROTTLE["signup-client"]["limit"]
        for attempt in range(limit):
            about = replace(FIONA, phone=f"310555{attempt:04d}")
            record_failed_verification("203.0.113.9", None, about)
        assert verification_locked("203.0.113.9", None, FIONA) is True
        assert verification_locked("203.0.113.10", None, FIONA) is False

    def test_made_up_person_locks_like_a_real_record(
        self, settings, california
    ) -> None:
        nobody = replace(FIONA, given_name="Nobody")
        for attempt in range(settings.SIGN_UP_THROTTLE["signup-record"]["limit"]):
            record_failed_verification(f"198.51.100.{attempt + 1}", None, nobody)
        assert verification_locked("198.51.100.200", None, nobody) is True
        assert verification_locked("198.51.100.200", None, FIONA) is False

    def test_typing_variants_count_as_the_same_person(
        self, settings, california
    ) -> None:
        nobody = replace(FIONA, given_name="Nobody")
        variant = replace(nobody, given_name=" NOBODY ", phone="+1 310 555 0142")
        for attempt in range(settings.SIGN_UP_THROTTLE["signup-record"]["limit"]):
            record_failed_verification(f"198.51.100.{attempt + 1}", None, nobody)
        assert verification_locked("198.51.100.200", None, variant) is True

    def test_calls_without_details_never_lock_everyone(
        self, settings, california
    ) -> None:
        for attempt in range(settings.SIGN_UP_THROTTLE["signup-record"]["limit"] + 2):
            record_failed_verification(f"198.51.100.{attempt + 1}", None)
        assert verification_locked("198.51.100.200", None) is False
        assert ThrottleEvent.objects.filter(bucket="signup-record").count() == 5

    def test_stored_keys_reveal_no_address(self, california, fiona) -> None:
        record_failed_verification("198.51.100.7", fiona)
        keys = list(ThrottleEvent.objects.values_list("key", flat=True))
        assert len(keys) == 2
        assert all("198.51.100.7" not in key for key in keys)

    def test_lock_is_logged_without_personal_data(
        self, settings, california, fiona, caplog
    ) -> None:
        with caplog.at_level(logging.INFO, logger="viewbox"):
            for attempt in range(settings.SIGN_UP_THROTTLE["signup-record"]["limit"]):
                record_failed_verification(f"198.51.100.{attempt + 1}", fiona)
            verification_locked("198.51.100.200", fiona)
        assert (
            f"Sign-up identity checks locked for bucket signup-record "
            f"(patient {fiona.pk})"
        ) in caplog.text
        assert "Sign-up identity check rejected: locked by signup-record" in caplog.text
        for personal in ("Fiona", "Fakename", "1975", "90401", "555", "198.51.100"):
            assert personal not in caplog.text

    def test_lock_writes_one_audit_row(self, settings, california, fiona) -> None:
        limit = settings.SIGN_UP_THROTTLE["signup-record"]["limit"]
        for attempt in range(limit + 1):
            record_failed_verification(f"198.51.100.{attempt + 1}", fiona)
        [event] = AuditEvent.objects.filter(action="account.sign_up_locked")
        assert event.outcome == AuditEvent.Outcome.FAILURE
        assert event.patient_id == fiona.pk
        assert event.client_address == f"198.51.100.{limit}"
