import os
import signal
import smtplib
import socket
import subprocess
import sys
import threading
from datetime import UTC, datetime
from email.message import EmailMessage
from pathlib import Path

import pytest
from django.conf import settings
from django.core.mail import send_mail

from viewbox.accounts.mail_catcher import MailCatcher, read_mailbox


def make_message(number: int, to: str = "fiona@example.test") -> EmailMessage:
    message = EmailMessage()
    message["From"] = "portal@example.test"
    message["To"] = to
    message["Subject"] = f"Test message {number}"
    message.set_content(f"Body of test message {number}.")
    message.add_alternative(f"<p>HTML of test message {number}.</p>", subtype="html")
    return message


def deliver(catcher: MailCatcher, message: EmailMessage) -> None:
    with smtplib.SMTP(catcher.host, catcher.port, timeout=5) as client:
        client.send_message(message)


def port_is_open(port: int) -> bool:
    with socket.socket() as probe:
        probe.settimeout(1)
        return probe.connect_ex(("127.0.0.1", port)) == 0


class TestRejectedSetup:
    def test_non_loopback_address_is_rejected(self) -> None:
        with pytest.raises(ValueError, match="loopback addresses only"):
            MailCatcher(host="192.0.2.1")

    def test_host_name_is_rejected(self) -> None:
        with pytest.raises(ValueError, match="loopback IP address"):
            MailCatcher(host="localhost")

    def test_port_in_use_raises_os_error(self) -> None:
        with MailCatcher() as first:
            with pytest.raises(OSError):
                MailCatcher(port=first.port).start()

    def test_starting_twice_is_rejected(self) -> None:
        with MailCatcher() as catcher:
            with pytest.raises(RuntimeError, match="already running"):
                catcher.start()


class TestReceiving:
    def test_port_zero_listens_on_a_real_port(self) -> None:
        with MailCatcher() as catcher:
            assert catcher.port > 0
            assert port_is_open(catcher.port)

    def test_message_is_kept_in_memory(self) -> None:
        with MailCatcher() as catcher:
            deliver(catcher, make_message(1))
            [message] = catcher.wait_for_count(1)
        assert message["Subject"] == "Test message 1"
        assert message["To"] == "fiona@example.test"
        body = message.get_body(preferencelist=("plain",))
        assert body is not None
        assert body.get_content().strip() == "Body of test message 1."

    def test_django_send_mail_arrives(self, mail_catcher) -> None:
        send_mail("Hello", "Plain body", None, ["fiona@example.test"])
        [message] = mail_catcher.wait_for_count(1)
        assert message["Subject"] == "Hello"
        assert message["From"] == settings.DEFAULT_FROM_EMAIL

    def test_wait_for_returns_the_matching_message(self) -> None:
        with MailCatcher() as catcher:
            deliver(catcher, make_message(1, to="first@example.test"))
            deliver(catcher, make_message(2, to="second@example.test"))
            found = catcher.wait_for(lambda m: m["To"] == "second@example.test")
        assert found["Subject"] == "Test message 2"

    def test_wait_for_times_out(self) -> None:
        with MailCatcher() as catcher:
            with pytest.raises(TimeoutError, match="No matching message arrived"):
                catcher.wait_for(lambda m: True, timeout=0.2)

    def test_wait_for_count_times_out(self) -> None:
        with MailCatcher() as catcher:
            deliver(catcher, make_message(1))
            with pytest.raises(TimeoutError, match="Expected 2 messages"):
                catcher.wait_for_count(2, timeout=0.2)

    def test_wait_for_sees_a_message_sent_while_waiting(self) -> None:
        with MailCatcher() as catcher:
            timer = threading.Timer(0.2, deliver, (catcher, make_message(1)))
            timer.start()
            message = catcher.wait_for(lambda m: True, timeout=5)
            timer.join()
        assert message["Subject"] == "Test message 1"

    def test_messages_from_many_threads_are_all_kept(self) -> None:
        with MailCatcher() as catcher:
            threads = [
                threading.Thread(target=deliver, args=(catcher, make_message(n)))
                for n in range(20)
            ]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            messages = catcher.wait_for_count(20)
        subjects = {message["Subject"] for message in messages}
        assert subjects == {f"Test message {n}" for n in range(20)}

    def test_clear_forgets_kept_messages(self) -> None:
        with MailCatcher() as catcher:
            deliver(catcher, make_message(1))
            catcher.wait_for_count(1)
            catcher.clear()
            assert catcher.messages == []

    def test_stop_closes_the_port(self) -> None:
        with MailCatcher() as catcher:
            port = catcher.port
        assert not port_is_open(port)

    def test_stop_twice_is_harmless(self) -> None:
        catcher = MailCatcher()
        catcher.start()
        catcher.stop()
        catcher.stop()


class TestFolder:
    def test_each_message_becomes_an_eml_file(self, tmp_path: Path) -> None:
        with MailCatcher(folder=tmp_path / "mailbox") as catcher:
            deliver(catcher, make_message(1))
            deliver(catcher, make_message(2))
            catcher.wait_for_count(2)
        names = sorted(path.name for path in (tmp_path / "mailbox").iterdir())
        assert len(names) == 2
        assert names[0].endswith("-1.eml")
        assert names[1].endswith("-2.eml")

    def test_no_temporary_file_is_left(self, tmp_path: Path) -> None:
        with MailCatcher(folder=tmp_path) as catcher:
            deliver(catcher, make_message(1))
            catcher.wait_for_count(1)
        assert [path.suffix for path in tmp_path.iterdir()] == [".eml"]

    def test_read_mailbox_lists_newest_first(self, tmp_path: Path) -> None:
        with MailCatcher(folder=tmp_path) as catcher:
            for number in range(1, 4):
                deliver(catcher, make_message(number, to=f"p{number}@example.test"))
                catcher.wait_for_count(number)
        items = read_mailbox(tmp_path)
        assert [item.subject for item in items] == [
            "Test message 3",
            "Test message 2",
            "Test message 1",
        ]
        assert items[0].to == "p3@example.test"
        assert items[0].text.strip() == "Body of test message 3."
        assert items[0].received_at.tzinfo is UTC
        assert items[0].received_at <= datetime.now(UTC)

    def test_read_mailbox_honours_the_limit(self, tmp_path: Path) -> None:
        with MailCatcher(folder=tmp_path) as catcher:
            for number in range(1, 4):
                deliver(catcher, make_message(number))
            catcher.wait_for_count(3)
        assert len(read_mailbox(tmp_path, limit=2)) == 2

    def test_read_mailbox_of_missing_folder_is_empty(self, tmp_path: Path) -> None:
        assert read_mailbox(tmp_path / "missing") == []

    def test_read_mailbox_skips_temporary_files(self, tmp_path: Path) -> None:
        (tmp_path / ".half-written.tmp").write_bytes(b"Subject: partial")
        assert read_mailbox(tmp_path) == []


class TestCommand:
    def test_command_saves_mail_until_sigterm(self, tmp_path: Path) -> None:
        folder = tmp_path / "mailbox"
        process = subprocess.Popen(
            [
                sys.executable,
                "manage.py",
                "run_mail_catcher",
                "--port",
                "0",
                "--folder",
                str(folder),
            ],
            cwd=settings.BASE_DIR,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        try:
            assert process.stdout is not None
            banner = process.stdout.readline()
            assert banner.startswith("Mail catcher listening on 127.0.0.1:"), banner
            port = int(banner.split(":")[1].split(",")[0])
            with smtplib.SMTP("127.0.0.1", port, timeout=5) as client:
                client.send_message(make_message(1))
            process.send_signal(signal.SIGTERM)
            stdout, stderr = process.communicate(timeout=10)
        finally:
            if process.poll() is None:
                process.kill()
                process.communicate()
        assert process.returncode == 0, stderr
        assert "Mail catcher stopped" in stdout
        [item] = read_mailbox(folder)
        assert item.subject == "Test message 1"
