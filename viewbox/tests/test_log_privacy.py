import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from viewbox.tests import log_scan

REPO = Path(__file__).resolve().parents[2]
# Set only in the pytest process that TestSessionScan starts, so that the
# leaking test below runs there and nowhere else.
LEAK_ON_PURPOSE = "VIEWBOX_TEST_LEAK_ON_PURPOSE"


@pytest.fixture(scope="module")
def needles() -> list[log_scan.Needle]:
    return log_scan.build_needles(["not-a-real-secret-key-0123456789"])


class TestNeedles:
    @pytest.mark.parametrize(
        ("line", "kind"),
        [
            ("Imported TESTPATIENT^ALICE^Q", "patient name"),
            ("Patient Alice Testpatient signed in", "patient name"),
            ("for Sample, Barbara", "patient name"),
            ("born 1980-04-12", "birth date"),
            ("PID-7 19750930", "birth date"),
            ("birth 4/12/1980", "birth date"),
            ("code 7KQ4-M2XD-9RTB-HW3F refused", "I-Code"),
            ("code 7KQ4M2XD9RTBHW3F refused", "I-Code"),
            ("password sunflower.garden1", "password"),
            ("GET /g/x/y/reset/MQ/cz4-abc/ 200", "reset token"),
            ("key not-a-real-secret-key-0123456789", "secret key"),
            ("address 100 Example Way", "patient address"),
        ],
    )
    def test_leak_is_found_and_masked(self, needles, line, kind) -> None:
        masked = log_scan.mask(line, needles)
        assert f"[{kind}]" in masked

    @pytest.mark.parametrize(
        "line",
        [
            "Processed HL7 message MSG-1 (ORU^R01) as HL7 message 4",
            "Storing instances in unmatched study 3, the first as instance 12",
            "UID 1.2.826.0.1.3680043.8.498.23456789234567892345",
            "GET /g/x/y/reset/[redacted]/ 200",
            "Forbidden (CSRF cookie not set.): /g/x/y/reset/MQ/set-password/",
            "Rejected DICOM file, quarantined as 7: PatientID is missing",
        ],
    )
    def test_ordinary_line_is_kept(self, needles, line) -> None:
        assert log_scan.mask(line, needles) == line


class TestFindLeaks:
    def test_leak_names_file_line_and_logger(self, tmp_path) -> None:
        # Not named *.log: this session's own scan reads those.
        log = tmp_path / "session.txt"
        log.write_text(
            "2026-12-04 18:00:00,000 INFO viewbox.ingest ok\n"
            "2026-12-04 18:00:01,000 WARNING viewbox.leaky Rejected ALICE TESTPATIENT\n"
            "Traceback (most recent call last):\n"
            "ValueError: born 1980-04-12\n"
        )
        leaks = log_scan.find_leaks([log], log_scan.build_needles())
        assert [(leak.line_number, leak.logger) for leak in leaks] == [
            (2, "viewbox.leaky"),
            (4, "viewbox.leaky"),
        ]
        assert leaks[0].masked_line.endswith("Rejected [patient name]")
        assert leaks[1].masked_line == "ValueError: born [birth date]"

    def test_session_log_takes_records_and_subprocess_lines(self, tmp_path) -> None:
        # A logger that does not propagate keeps these records out of this
        # session's own log, which was set up before the logger existed.
        leaky = logging.getLogger("viewbox.leaky.isolated")
        leaky.propagate = False
        leaky.setLevel(logging.DEBUG)
        outer = os.environ.get("VIEWBOX_LOG_FILE")
        session_log = log_scan.SessionLog(tmp_path / "session.txt")
        session_log.start()
        try:
            leaky.warning("Fiona Fakename")
            leaky.debug("Ivy Blankfields")
            subprocess.run(
                [
                    sys.executable,
                    "-c",
                    "import logging, os;"
                    "logging.basicConfig(filename=os.environ['VIEWBOX_LOG_FILE'],"
                    "format='%(asctime)s %(levelname)s %(name)s %(message)s');"
                    "logging.getLogger('child').warning('Olive Other')",
                ],
                check=True,
            )
        finally:
            session_log.stop()
        leaks = log_scan.find_leaks([session_log.path], log_scan.build_needles())
        assert [leak.logger for leak in leaks] == ["viewbox.leaky.isolated", "child"]
        assert os.environ.get("VIEWBOX_LOG_FILE") == outer


@pytest.mark.skipif(
    os.environ.get(LEAK_ON_PURPOSE) != "1", reason="runs only inside TestSessionScan"
)
def test_leaks_on_purpose() -> None:
    logging.getLogger("viewbox.leaky").warning("Signed in Alice Testpatient")
    subprocess.run(
        [
            sys.executable,
            "-c",
            "import django, logging, os;"
            "os.environ['DJANGO_SETTINGS_MODULE'] = 'viewbox.settings';"
            "django.setup();"
            "logging.getLogger('viewbox.child').warning('born 1975-09-30')",
        ],
        check=True,
        cwd=REPO,
    )


class TestSessionScan:
    def test_leaking_session_fails_with_masked_lines(self, tmp_path) -> None:
        env = {**os.environ, LEAK_ON_PURPOSE: "1", "VIEWBOX_DATA_DIR": str(tmp_path)}
        # The inner session must write to its own log, not to this session's.
        env.pop("VIEWBOX_LOG_FILE", None)
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "pytest",
                "-q",
                "-p",
                "no:cacheprovider",
                f"{Path(__file__).relative_to(REPO)}::test_leaks_on_purpose",
            ],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        output = result.stdout + result.stderr
        assert result.returncode == pytest.ExitCode.TESTS_FAILED, output
        assert "1 passed" in output
        assert "logger viewbox.leaky: " in output
        assert "Signed in [patient name]" in output
        assert "logger viewbox.child: " in output
        assert "born [birth date]" in output
        assert "Testpatient" not in output
        assert "1975-09-30" not in output
