from datetime import timedelta
from types import SimpleNamespace

from gunicorn.config import Config

from viewbox.gunicorn_logging import RedactingLogger, redact, redact_target


class TestRedact:
    def test_reset_token_is_removed_from_the_request_line(self) -> None:
        line = "GET /g/advanced-radiology/towson/reset/MQ/d2mjr-3f1a9c/ HTTP/1.1"
        assert (
            redact(line)
            == "GET /g/advanced-radiology/towson/reset/[redacted]/ HTTP/1.1"
        )

    def test_other_paths_are_kept(self) -> None:
        line = "GET /g/advanced-radiology/towson/reset/done/ HTTP/1.1"
        assert redact(line) == line

    def test_share_token_is_removed_from_the_request_line_and_the_path(self) -> None:
        assert redact("GET /s/Zq3-x_9aB/ HTTP/1.1") == "GET /s/[redacted]/ HTTP/1.1"
        assert redact("/s/Zq3-x_9aB/") == "/s/[redacted]/"

    def test_paths_that_merely_contain_s_are_kept(self) -> None:
        line = "GET /exams/s/abc/ HTTP/1.1"
        assert redact(line) == line

    def test_share_token_is_removed_however_the_target_is_written(self) -> None:
        for target in (
            "/%73/Zq3-x_9aB/",
            "/./s/Zq3-x_9aB/",
            "http://127.0.0.1:8000/s/Zq3-x_9aB/",
            "/s/Zq3-x_9aB",
            "//s/Zq3-x_9aB/",
        ):
            cleaned = redact_target(target)
            assert "Zq3-x_9aB" not in cleaned, target
            assert cleaned.startswith("/s/[redacted]"), target

    def test_targets_without_secrets_are_kept_as_sent(self) -> None:
        for target in ("/exams/%41/", "/shared/?x=1", "http://host/exams/"):
            assert redact_target(target) == target

    def test_request_line_atom_is_redacted(self) -> None:
        logger = RedactingLogger(Config())
        environ = {
            "REQUEST_METHOD": "GET",
            "RAW_URI": "/%73/Zq3-x_9aB/",
            "SERVER_PROTOCOL": "HTTP/1.1",
            "PATH_INFO": "/s/Zq3-x_9aB/",
            "QUERY_STRING": "",
        }
        response = SimpleNamespace(status="302 Found", sent=0, headers=[])
        request = SimpleNamespace(headers=[])
        atoms = logger.atoms(response, request, environ, timedelta(seconds=0.01))
        assert "Zq3-x_9aB" not in atoms["r"]
        assert "Zq3-x_9aB" not in atoms["U"]
