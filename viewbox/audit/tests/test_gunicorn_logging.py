from viewbox.gunicorn_logging import redact


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
