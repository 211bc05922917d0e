"""manage.py check_dicom_receiver, which the demo runs before it prints that
the receiver listens."""

import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from io import StringIO

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from pynetdicom import AE, evt

from viewbox.ingest.dicom_network import VERIFICATION_SOP_CLASS, StorageServer
from viewbox.ingest.dicom_receiver import start_receiver

pytestmark = pytest.mark.django_db(transaction=True)


def free_port() -> int:
    with socket.create_server(("127.0.0.1", 0)) as probe:
        return int(probe.getsockname()[1])


def check(*arguments: str) -> str:
    output = StringIO()
    call_command("check_dicom_receiver", *arguments, stdout=output)
    return output.getvalue()


@pytest.fixture
def receiver_settings(settings):
    settings.DICOM_AE_TITLE = "VIEWBOX"
    settings.DICOM_HOST = "127.0.0.1"
    settings.DICOM_CALLING_AE_TITLES = ["STORESCU", "DCMSEND"]
    return settings


@contextmanager
def running_receiver(settings) -> Iterator[StorageServer]:
    """Start the receiver in this process on the port that settings name."""
    settings.DICOM_PORT = free_port()
    server = start_receiver("127.0.0.1", settings.DICOM_PORT)
    try:
        yield server
    finally:
        server.shutdown()


@contextmanager
def other_echo_server(settings, **options) -> Iterator[None]:
    """Serve C-ECHO on the port that settings name, with pynetdicom."""
    settings.DICOM_PORT = free_port()
    ae = AE(ae_title="OTHERPACS")
    ae.add_supported_context(VERIFICATION_SOP_CLASS)
    for name, value in options.pop("ae", {}).items():
        setattr(ae, name, value)
    server = ae.start_server(("127.0.0.1", settings.DICOM_PORT), block=False, **options)
    try:
        yield
    finally:
        server.shutdown()


class TestFailedChecks:
    def test_empty_calling_ae_titles_fail(self, receiver_settings) -> None:
        receiver_settings.DICOM_CALLING_AE_TITLES = []
        with pytest.raises(CommandError) as raised:
            check("--timeout", "1")
        assert str(raised.value) == (
            "VIEWBOX_DICOM_CALLING_AE_TITLES is empty, so the receiver accepts no "
            "association; list the AE titles allowed to send"
        )

    def test_closed_port_fails_after_timeout(self, receiver_settings) -> None:
        receiver_settings.DICOM_PORT = free_port()
        started = time.monotonic()
        with pytest.raises(CommandError) as raised:
            check("--timeout", "1")
        assert time.monotonic() - started >= 1
        assert str(raised.value) == (
            f"The DICOM receiver VIEWBOX at 127.0.0.1:{receiver_settings.DICOM_PORT} "
            "did not respond to a C-ECHO within 1 s: the port accepts no "
            "connection"
        )

    def test_ended_process_fails_at_once(self, receiver_settings) -> None:
        receiver_settings.DICOM_PORT = free_port()
        # Not waited for, so that it stays a zombie, as the demo's receiver
        # does until the shell collects it.
        ended = subprocess.Popen([sys.executable, "-c", "pass"])
        try:
            while not _is_zombie(ended.pid):
                time.sleep(0.05)
            started = time.monotonic()
            with pytest.raises(CommandError) as raised:
                check("--timeout", "30", "--pid", str(ended.pid))
            assert time.monotonic() - started < 5
        finally:
            ended.wait()
        assert str(raised.value) == (
            f"The DICOM receiver (process {ended.pid}) ended before it responded to "
            "a C-ECHO"
        )

    def test_collected_process_fails_at_once(self, receiver_settings) -> None:
        receiver_settings.DICOM_PORT = free_port()
        ended = subprocess.Popen([sys.executable, "-c", "pass"])
        ended.wait()
        with pytest.raises(CommandError) as raised:
            check("--timeout", "30", "--pid", str(ended.pid))
        assert str(raised.value).endswith("ended before it responded to a C-ECHO")

    def test_other_program_on_the_port_fails(self, receiver_settings) -> None:
        # As when the receiver cannot bind the port of another demo's: the
        # other program responds, but the process checked does not listen.
        waiting = subprocess.Popen(
            [sys.executable, "-c", "import time; time.sleep(60)"]
        )
        try:
            with other_echo_server(receiver_settings):
                with pytest.raises(CommandError) as raised:
                    check("--timeout", "1", "--pid", str(waiting.pid))
        finally:
            waiting.kill()
            waiting.wait()
        port = receiver_settings.DICOM_PORT
        assert str(raised.value) == (
            f"The DICOM receiver VIEWBOX at 127.0.0.1:{port} did not respond to "
            f"a C-ECHO within 1 s: process {waiting.pid} does not listen on "
            f"port {port}"
        )

    def test_rejected_association_fails(self, receiver_settings) -> None:
        receiver_settings.DICOM_CALLING_AE_TITLES = ["MODALITY"]
        with running_receiver(receiver_settings):
            # The receiver read its calling AE titles as it started.
            receiver_settings.DICOM_CALLING_AE_TITLES = ["STORESCU"]
            with pytest.raises(CommandError) as raised:
                check("--timeout", "1")
        assert str(raised.value).endswith(
            "did not respond to a C-ECHO within 1 s: it rejected the association "
            "from STORESCU"
        )

    def test_failed_echo_status_fails(self, receiver_settings) -> None:
        handlers = [(evt.EVT_C_ECHO, lambda event: 0xC000)]
        with other_echo_server(receiver_settings, evt_handlers=handlers):
            with pytest.raises(CommandError) as raised:
                check("--timeout", "1")
        assert str(raised.value).endswith(
            "did not respond to a C-ECHO within 1 s: the C-ECHO failed with "
            "status 0xC000"
        )


class TestPassedChecks:
    def test_receiver_that_responds_passes(self, receiver_settings) -> None:
        with running_receiver(receiver_settings):
            printed = check("--timeout", "5")
        assert printed == (
            f"The DICOM receiver VIEWBOX at 127.0.0.1:{receiver_settings.DICOM_PORT} "
            "responded to a C-ECHO from STORESCU\n"
        )

    def test_receiver_of_the_process_passes(self, receiver_settings) -> None:
        with running_receiver(receiver_settings):
            printed = check("--timeout", "5", "--pid", str(os.getpid()))
        assert "responded to a C-ECHO from STORESCU" in printed

    def test_receiver_on_every_interface_is_called_on_loopback(
        self, receiver_settings
    ) -> None:
        with running_receiver(receiver_settings):
            receiver_settings.DICOM_HOST = "0.0.0.0"  # noqa: S104 (not bound)
            printed = check("--timeout", "5")
        assert f"at 127.0.0.1:{receiver_settings.DICOM_PORT} responded" in printed

    def test_receiver_that_starts_late_passes(self, receiver_settings) -> None:
        receiver_settings.DICOM_PORT = free_port()
        servers = []

        def start_late() -> None:
            time.sleep(2)
            servers.append(start_receiver("127.0.0.1", receiver_settings.DICOM_PORT))

        starter = threading.Thread(target=start_late)
        starter.start()
        try:
            printed = check("--timeout", "10", "--pid", str(os.getpid()))
        finally:
            starter.join()
            for server in servers:
                server.shutdown()
        assert "responded to a C-ECHO from STORESCU" in printed


def _is_zombie(pid: int) -> bool:
    with open(f"/proc/{pid}/stat") as stat:
        return stat.read().rsplit(")", 1)[1].split()[0] == "Z"
