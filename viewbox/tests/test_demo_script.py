"""scripts/demo, run as a user runs it, on loopback ports of its own."""

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from pynetdicom import AE

from viewbox.ingest.dicom_network import VERIFICATION_SOP_CLASS

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
# The demo installs packages, loads its records and waits up to 30 seconds
# for the DICOM receiver before it prints its directions.
DEMO_START_SECONDS = 300
LAST_LINE = "the worker, the mail catcher, the HL7 listener and the DICOM receiver."


def free_port() -> int:
    with socket.create_server(("127.0.0.1", 0)) as probe:
        return int(probe.getsockname()[1])


def demo_environment(data: Path, web_port: int, dicom_port: int) -> dict[str, str]:
    """Return the environment of a demo on its own loopback ports and data folder."""
    environment = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith("VIEWBOX_")
    }
    environment.update(
        VIEWBOX_DATA_DIR=str(data),
        VIEWBOX_PORT=str(web_port),
        VIEWBOX_EMAIL_PORT=str(free_port()),
        VIEWBOX_HL7_PORT=str(free_port()),
        VIEWBOX_DICOM_PORT=str(dicom_port),
        TCP_NODELAY="1",
    )
    return environment


@contextmanager
def running_demo(tmp_path: Path, dicom_port: int) -> Iterator[tuple[str, Path]]:
    """Run scripts/demo until it prints its directions; yield them and its data.

    The demo runs in a process group of its own, which is stopped after.
    """
    data = tmp_path / "data"
    environment = demo_environment(data, free_port(), dicom_port)
    output_path = tmp_path / "demo-output.txt"
    with output_path.open("wb") as output:
        demo = subprocess.Popen(
            [str(REPO / "scripts" / "demo")],
            cwd=REPO,
            env=environment,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + DEMO_START_SECONDS
        while LAST_LINE not in output_path.read_text():
            assert demo.poll() is None, output_path.read_text()
            assert time.monotonic() < deadline, output_path.read_text()
            time.sleep(0.2)
        yield output_path.read_text(), data
    finally:
        try:
            os.killpg(demo.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            demo.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(demo.pid, signal.SIGKILL)
            demo.wait()
        # load_demo's output lists the demo patients' codes, as demo-codes.txt
        # does, so the session's scan of *.log files would count it as leaks.
        (data / "demo-load.log").unlink(missing_ok=True)


class TestDemoDicomReceiver:
    def test_receiver_without_port_is_reported_failed(self, tmp_path) -> None:
        # Another DICOM program listens on the port and responds to C-ECHO, as a
        # second demo on the default port would.
        port = free_port()
        other = AE(ae_title="OTHERPACS")
        other.add_supported_context(VERIFICATION_SOP_CLASS)
        server = other.start_server(("127.0.0.1", port), block=False)
        try:
            with running_demo(tmp_path, port) as (output, data):
                dicom_log = (data / "dicom.log").read_text()
        finally:
            server.shutdown()

        failure = f"The DICOM receiver failed to start; its log is {data}/dicom.log."
        assert output.count(failure) == 2
        assert "The DICOM receiver listens" not in output
        assert "Viewbox is running." in output
        assert "Cannot start the DICOM receiver: [Errno 98]" in dicom_log
        assert "ended before it responded to a C-ECHO" in dicom_log

    def test_receiver_that_responds_is_reported(self, tmp_path) -> None:
        port = free_port()
        with running_demo(tmp_path, port) as (output, data):
            dicom_log = (data / "dicom.log").read_text()

        assert (
            f"The DICOM receiver listens on 127.0.0.1:{port} as AE title\n"
            f"VIEWBOX; try: dcmsend 127.0.0.1 {port} FILE..."
        ) in output
        assert "failed to start" not in output
        assert "responded to a C-ECHO from STORESCU" in dicom_log


def run_until_exit(environment: dict[str, str]) -> tuple[int, str, str]:
    """Run scripts/demo, expecting it to stop by itself; return its status and output.

    A demo that went on instead is stopped with its whole process group.
    """
    demo = subprocess.Popen(
        [str(REPO / "scripts" / "demo")],
        cwd=REPO,
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        stdout, stderr = demo.communicate(timeout=DEMO_START_SECONDS)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(demo.pid, signal.SIGKILL)
        demo.wait()
    return demo.returncode, stdout, stderr


class TestDemoPorts:
    def test_taken_web_port_stops_the_demo(self, tmp_path) -> None:
        # Another web server listens on the port, as a demo started earlier would.
        with socket.create_server(("127.0.0.1", 0)) as other:
            port = other.getsockname()[1]
            environment = demo_environment(tmp_path / "data", port, free_port())
            status, stdout, stderr = run_until_exit(environment)

        assert status == 1
        assert f"Port {port} on 127.0.0.1 is in use, so the web server" in stderr
        assert "set VIEWBOX_PORT to a free port" in stderr
        assert "Viewbox is running" not in stdout

    def test_taken_hl7_port_stops_the_demo(self, tmp_path) -> None:
        with socket.create_server(("127.0.0.1", 0)) as other:
            port = other.getsockname()[1]
            environment = demo_environment(tmp_path / "data", free_port(), free_port())
            environment["VIEWBOX_HL7_PORT"] = str(port)
            status, _, stderr = run_until_exit(environment)

        assert status == 1
        assert f"Port {port} on 127.0.0.1 is in use, so the HL7 listener" in stderr
        assert "set VIEWBOX_HL7_PORT to a free port" in stderr
