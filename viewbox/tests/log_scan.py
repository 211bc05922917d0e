"""A scan of every log line the test session writes, for patient data and secrets.

``SessionLog.start`` adds a handler to the root logger of the pytest
process and sets ``VIEWBOX_LOG_FILE`` so that every Viewbox process a test
starts (gunicorn, db_worker, manage.py commands) appends its log to the same
file. At the end of the session ``find_leaks`` reads that file, and any
``*.log`` file the tests left under pytest's temporary folder, for:

- the names, birth dates, street addresses and phone numbers of the demo
  patients (``demo/hl7``) and of the fake patients the tests create
  (``make_patient(...)`` calls and ``given_name=``/``family_name=`` pairs);
- passwords written in the tests;
- anything shaped like an I-Code, valid or guessed;
- password reset tokens in URLs, and the portal's secret keys.

Only records at INFO and above are kept, as in production: DEBUG records
include SQL parameters, which Django logs only when ``DEBUG`` is on.
"""

import logging
import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import date
from pathlib import Path

from viewbox.access.codes import ALPHABET

REPO = Path(__file__).resolve().parents[2]
# The same layout as the "plain" formatter in viewbox/settings.py, so that
# lines from the pytest process and from subprocesses read alike.
LINE_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"
_HEADER = re.compile(
    r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} [A-Z]+ (?P<logger>\S+) ", re.ASCII
)
# Birth dates are distinguished from exam dates by year, because the tests'
# patients were all born before this one.
_LAST_BIRTH_YEAR = 2010
_MIN_PASSWORD_LENGTH = 8


@dataclass(frozen=True)
class Needle:
    kind: str
    pattern: re.Pattern[str]


@dataclass(frozen=True)
class Leak:
    source: str
    line_number: int
    logger: str
    masked_line: str


class SessionLog:
    """The file every log record of the session goes to."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.handler = logging.FileHandler(path, encoding="utf-8")
        self.handler.setLevel(logging.INFO)
        self.handler.setFormatter(logging.Formatter(LINE_FORMAT))
        self._previous_env: str | None = None

    def start(self) -> None:
        logging.getLogger().addHandler(self.handler)
        # Loggers that do not propagate would bypass the root handler.
        for logger in _loggers_not_propagating():
            logger.addHandler(self.handler)
        self._previous_env = os.environ.get("VIEWBOX_LOG_FILE")
        os.environ["VIEWBOX_LOG_FILE"] = str(self.path)

    def stop(self) -> None:
        logging.getLogger().removeHandler(self.handler)
        for logger in _loggers_not_propagating():
            logger.removeHandler(self.handler)
        self.handler.close()
        if self._previous_env is None:
            os.environ.pop("VIEWBOX_LOG_FILE", None)
        else:
            os.environ["VIEWBOX_LOG_FILE"] = self._previous_env


def _loggers_not_propagating() -> Iterator[logging.Logger]:
    for logger in list(logging.Logger.manager.loggerDict.values()):
        if isinstance(logger, logging.Logger) and not logger.propagate:
            yield logger


def find_leaks(
    paths: Iterable[Path], needles: list[Needle], root: Path = REPO
) -> list[Leak]:
    """Return every log line that contains a needle, with the needles masked."""
    leaks = []
    for path in paths:
        logger = "?"
        text = path.read_text(encoding="utf-8", errors="replace")
        for number, line in enumerate(text.splitlines(), start=1):
            if header := _HEADER.match(line):
                logger = header.group("logger")
            masked = mask(line, needles)
            if masked != line:
                source = path.relative_to(root) if path.is_relative_to(root) else path
                leaks.append(Leak(str(source), number, logger, masked))
    return leaks


def mask(line: str, needles: list[Needle]) -> str:
    for needle in needles:
        line = needle.pattern.sub(f"[{needle.kind}]", line)
    return line


def build_needles(secrets: Iterable[str] = ()) -> list[Needle]:
    """Return the patterns of everything that must never be logged."""
    needles = []
    names, births, extras = _demo_patients()
    test_names, test_births = _test_patients()
    for given, family in sorted(names | test_names):
        given, family = given.strip(), family.strip()
        for first, second in ((given, family), (family, given)):
            # "Alice Testpatient", "TESTPATIENT^ALICE^Q", "Testpatient, Alice".
            between = r"\W{1,3}(?:\w\W{1,3})?"
            pattern = rf"(?<!\w){re.escape(first)}{between}{re.escape(second)}(?!\w)"
            needles.append(Needle("patient name", re.compile(pattern, re.IGNORECASE)))
    for birth in sorted(births | test_births):
        needles.append(Needle("birth date", _date_pattern(birth)))

    for extra in sorted(extras):
        needles.append(Needle("patient address", re.compile(re.escape(extra), re.I)))
    for password in sorted(_test_passwords()):
        needles.append(Needle("password", re.compile(re.escape(password))))
    for secret in secrets:
        if secret:
            needles.append(Needle("secret key", re.compile(re.escape(secret))))

    symbol = f"[{ALPHABET}]"
    needles.append(
        Needle("I-Code", re.compile(rf"\b{symbol}{{4}}(?:-{symbol}{{4}}){{3}}\b"))
    )
    # The bare form, with at least one letter so that UIDs' digits never match.
    needles.append(Needle("I-Code", re.compile(rf"\b(?=[2-9]*[A-Z]){symbol}{{16}}\b")))

    needles.append(
        Needle(
            "reset token",
            # Django's reset view swaps the token for "set-password" in the
            # URL it redirects to, and that form is no secret.
            re.compile(
                r"(?<=/reset/)(?!\[redacted\])[^/\s]+/(?!set-password/)[^/\s]+(?=/)"
            ),
        )
    )
    return needles


def _date_pattern(day: date) -> re.Pattern[str]:
    forms = [
        day.strftime("%Y-%m-%d"),
        day.strftime("%Y%m%d"),
        day.strftime("%m/%d/%Y"),
        f"{day.month}/{day.day}/{day.year}",
    ]
    return re.compile(r"\b(?:" + "|".join(re.escape(f) for f in forms) + r")\b")


def _demo_patients() -> tuple[set[tuple[str, str]], set[date], set[str]]:
    """Return names, birth dates and addresses from the PID segments of the demo."""
    names: set[tuple[str, str]] = set()
    births: set[date] = set()
    extras: set[str] = set()
    for path in sorted((REPO / "demo" / "hl7").glob("*.hl7")):
        for line in path.read_text(encoding="utf-8").splitlines():
            if not line.startswith("PID|"):
                continue
            fields = line.split("|")
            name = fields[5].split("^") if len(fields) > 5 else []
            if len(name) >= 2:
                names.add((name[1], name[0]))
            if len(fields) > 7 and re.fullmatch(r"\d{8}", fields[7]):
                birth = fields[7]
                births.add(date(int(birth[:4]), int(birth[4:6]), int(birth[6:])))
            if len(fields) > 11 and fields[11]:
                extras.add(fields[11].split("^")[0])
            if len(fields) > 13 and fields[13]:
                extras.add(fields[13])
    return names, births, extras


def _test_sources() -> Iterator[str]:
    for path in sorted((REPO / "viewbox").rglob("*.py")):
        if "tests" in path.parts or path.name == "conftest.py":
            yield path.read_text(encoding="utf-8")


_MAKE_PATIENT = re.compile(
    r'make_patient\(\s*\w+,\s*"[^"]*",\s*"([^"]+)",\s*"([^"]+)"', re.MULTILINE
)
_GIVEN = re.compile(r'given_name\s*=\s*"([^"]+)"')
_FAMILY = re.compile(r'family_name\s*=\s*"([^"]+)"')
_DATE = re.compile(r"\bdate\((\d{4}),\s*(\d{1,2}),\s*(\d{1,2})\)")
_PASSWORD = re.compile(
    r"""password\w*["']?\s*[:=]\s*["']([^"'\n]+)["']""", re.IGNORECASE
)


def _test_patients() -> tuple[set[tuple[str, str]], set[date]]:
    names: set[tuple[str, str]] = set()
    births: set[date] = set()
    for source in _test_sources():
        names.update(_MAKE_PATIENT.findall(source))
        names.update(zip(_GIVEN.findall(source), _FAMILY.findall(source), strict=False))
        for year, month, day in _DATE.findall(source):
            if int(year) < _LAST_BIRTH_YEAR:
                births.add(date(int(year), int(month), int(day)))
    return names, births


def _test_passwords() -> set[str]:
    found: set[str] = set()
    for source in _test_sources():
        found.update(
            value
            for value in _PASSWORD.findall(source)
            if len(value) >= _MIN_PASSWORD_LENGTH
        )
    return found
