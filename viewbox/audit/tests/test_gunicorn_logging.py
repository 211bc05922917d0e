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

    def test_share_token_is_removed_from_the_request_line_and_the_path(self) -> None:
        assert redact("GET /s/Zq3-x_9aB/ HTTP/1.1") == "GET /s/[redacted]/ HTTP/1.1"
        assert redact("/s/Zq3-x_9aB/") == "/s/[redacted]/"

    def test_paths_that_merely_contain_s_are_kept(self) -> None:
        line = "GET /exams/s/abc/ HTTP/1.1"
        assert redact(line) == line
