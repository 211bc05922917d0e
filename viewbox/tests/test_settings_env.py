"""Whole-number settings from the environment, and --port, through manage.py."""

import subprocess
from pathlib import Path

import pytest

from viewbox.tests.test_hardening import run_manage as run_manage_with

# Every whole-number variable and the range that the settings allow.
NUMBER_VARIABLES = {
    "VIEWBOX_EMAIL_PORT": "from 1 to 65535",
    "VIEWBOX_PACKAGE_STALL_SECONDS": "of 1 or more",
    "VIEWBOX_PROXY_COUNT": "of 0 or more",
    "VIEWBOX_HL7_PORT": "from 0 to 65535",
    "VIEWBOX_HL7_MAX_MESSAGE_BYTES": "of 1 or more",
    "VIEWBOX_HL7_IDLE_TIMEOUT_SECONDS": "of 1 or more",
    "VIEWBOX_HL7_MAX_CONNECTIONS": "of 1 or more",
    "VIEWBOX_DICOM_PORT": "from 0 to 65535",
    "VIEWBOX_DICOM_MAX_ASSOCIATIONS": "of 1 or more",
    "VIEWBOX_DICOM_RECEIVER_PROCESSES": "of 1 or more",
    "VIEWBOX_STOW_MAX_REQUEST_BYTES": "of 1 or more",
    "VIEWBOX_DICOM_MAX_FILE_BYTES": "of 1 or more",
    "VIEWBOX_HL7_MAX_MESSAGE_LENGTH": "of 1 or more",
    "VIEWBOX_HL7_MAX_FILE_BYTES": "of 1 or more",
}


def run_manage(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    """Run manage.py with the development settings and only the given keys set."""
    return run_manage_with(tmp_path, *args, settings_module="viewbox.settings", **env)


def assert_rejected(result: subprocess.CompletedProcess, line: str) -> None:
    """Check that manage.py stopped with line as its only output."""
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert result.stdout == ""
    assert result.stderr == f"Cannot load the settings: {line}\n"


class TestNumberSettings:
    @pytest.mark.parametrize("name", NUMBER_VARIABLES)
    def test_non_number_is_rejected(self, tmp_path, name) -> None:
        result = run_manage(tmp_path, "check", **{name: "abc"})
        assert_rejected(
            result,
            f"Invalid {name}='abc': not a whole number. "
            f"Set it to a whole number {NUMBER_VARIABLES[name]}.",
        )

    @pytest.mark.parametrize("value", ["1.5", "0x50", "11112 11113"])
    def test_dicom_port_non_number_is_rejected(self, tmp_path, value) -> None:
        result = run_manage(tmp_path, "check", VIEWBOX_DICOM_PORT=value)
        assert_rejected(
            result,
            f"Invalid VIEWBOX_DICOM_PORT={value!r}: not a whole number. "
            "Set it to a whole number from 0 to 65535.",
        )

    @pytest.mark.parametrize("value", ["70000", "65536", "-1"])
    def test_dicom_port_out_of_range_is_rejected(self, tmp_path, value) -> None:
        result = run_manage(tmp_path, "check", VIEWBOX_DICOM_PORT=value)
        assert_rejected(
            result,
            f"Invalid VIEWBOX_DICOM_PORT={value!r}: out of range. "
            "Set it to a whole number from 0 to 65535.",
        )

    def test_receiver_rejects_port_out_of_range(self, tmp_path) -> None:
        result = run_manage(
            tmp_path,
            "run_dicom_receiver",
            VIEWBOX_DICOM_PORT="70000",
            VIEWBOX_DICOM_CALLING_AE_TITLES="MODALITY",
        )
        assert_rejected(
            result,
            "Invalid VIEWBOX_DICOM_PORT='70000': out of range. "
            "Set it to a whole number from 0 to 65535.",
        )

    def test_mail_port_zero_is_rejected(self, tmp_path) -> None:
        # Outgoing mail connects to the port, so "any free port" means nothing.
        result = run_manage(tmp_path, "check", VIEWBOX_EMAIL_PORT="0")
        assert_rejected(
            result,
            "Invalid VIEWBOX_EMAIL_PORT='0': out of range. "
            "Set it to a whole number from 1 to 65535.",
        )

    @pytest.mark.parametrize(
        ("name", "value", "allowed"),
        [
            ("VIEWBOX_PROXY_COUNT", "-1", "of 0 or more"),
            ("VIEWBOX_DICOM_RECEIVER_PROCESSES", "0", "of 1 or more"),
            ("VIEWBOX_DICOM_MAX_ASSOCIATIONS", "0", "of 1 or more"),
            ("VIEWBOX_HL7_PORT", "65536", "from 0 to 65535"),
        ],
    )
    def test_number_out_of_range_is_rejected(
        self, tmp_path, name, value, allowed
    ) -> None:
        result = run_manage(tmp_path, "check", **{name: value})
        assert_rejected(
            result,
            f"Invalid {name}={value!r}: out of range. "
            f"Set it to a whole number {allowed}.",
        )

    def test_settings_option_is_still_read(self, tmp_path) -> None:
        # manage.py catches the settings' error without loading them early,
        # which would ignore --settings.
        result = run_manage(
            tmp_path, "check", "--settings", "viewbox.settings_production"
        )
        assert result.returncode == 1
        assert "Traceback" not in result.stderr
        assert result.stderr.startswith(
            "Cannot load the settings: VIEWBOX_SECRET_KEY must be set"
        )

    def test_in_range_and_empty_are_accepted(self, tmp_path) -> None:
        # Port 0 lets the DICOM receiver bind any free port, as --port 0 does.
        result = run_manage(
            tmp_path,
            "check",
            VIEWBOX_DICOM_PORT="0",
            VIEWBOX_HL7_PORT="65535",
            VIEWBOX_EMAIL_PORT="1",
            VIEWBOX_PROXY_COUNT="0",
            VIEWBOX_DICOM_RECEIVER_PROCESSES="",
            VIEWBOX_DICOM_MAX_ASSOCIATIONS="",
        )
        assert result.returncode == 0, result.stderr
        assert "System check identified no issues" in result.stdout


class TestPortArguments:
    @pytest.mark.parametrize("command", ["run_dicom_receiver", "run_hl7_listener"])
    @pytest.mark.parametrize(
        ("value", "problem"),
        [
            ("70000", "out of range"),
            ("-1", "out of range"),
            ("abc", "not a whole number"),
        ],
    )
    def test_invalid_port_is_rejected(self, tmp_path, command, value, problem) -> None:
        result = run_manage(
            tmp_path,
            command,
            "--port",
            value,
            VIEWBOX_DICOM_CALLING_AE_TITLES="MODALITY",
        )
        assert result.returncode == 2
        assert "Traceback" not in result.stderr
        assert result.stderr.endswith(
            f"manage.py {command}: error: argument --port: invalid port "
            f"{value!r}: {problem}; use 0 to 65535\n"
        )
