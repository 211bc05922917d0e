"""Push DICOM files from a private Orthanc to Viewbox's receiver with C-STORE.

Run inside ``unshare --net``: Orthanc listens on every address, so it only
ever runs in a network namespace whose only interface is loopback. Viewbox's
receiver is outside that namespace; a relay inside it accepts Orthanc's
connection on a loopback port and forwards it to a Unix socket, which the
test forwards to the receiver. Prints one JSON object: the HTTP status and
body of Orthanc's ``POST /modalities/viewbox/store``.

    unshare --net -- python orthanc_push.py --socket PATH --ae-title VIEWBOX FILE...
"""

import argparse
import ctypes
import http.client
import json
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

START_TIMEOUT_SECONDS = 30
STOP_TIMEOUT_SECONDS = 20


def require_private_network() -> None:
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    listing = subprocess.run(
        ["ip", "-o", "link", "show"], check=True, capture_output=True, text=True
    ).stdout
    names = sorted(line.split(": ")[1] for line in listing.splitlines())
    if names != ["lo"]:
        raise SystemExit(f"not in a private network namespace: {names}")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def pump(source: socket.socket, target: socket.socket) -> None:
    try:
        while chunk := source.recv(1 << 16):
            target.sendall(chunk)
    except OSError:
        pass
    finally:
        for end in (source, target):
            try:
                end.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


def relay_to_unix_socket(listener: socket.socket, path: str) -> None:
    while True:
        client, _ = listener.accept()
        upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        upstream.connect(path)
        threading.Thread(target=pump, args=(client, upstream), daemon=True).start()
        threading.Thread(target=pump, args=(upstream, client), daemon=True).start()


def end_with_parent() -> None:
    # Linux prctl(PR_SET_PDEATHSIG, SIGTERM): Orthanc stops with this script.
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)


def request(port: int, method: str, path: str, body: bytes = b"") -> tuple[int, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    try:
        connection.request(method, path, body=body)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def wait_until_ready(process: subprocess.Popen[bytes], port: int) -> None:
    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"Orthanc exited with status {process.returncode}")
        try:
            if request(port, "GET", "/system")[0] == 200:
                return
        except OSError:
            time.sleep(0.1)
    raise SystemExit("Orthanc did not answer GET /system in time")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--socket", required=True)
    parser.add_argument("--ae-title", required=True)
    parser.add_argument("files", nargs="+", type=Path)
    arguments = parser.parse_args()
    require_private_network()

    listener = socket.create_server(("127.0.0.1", 0))
    relay_port = listener.getsockname()[1]
    threading.Thread(
        target=relay_to_unix_socket, args=(listener, arguments.socket), daemon=True
    ).start()

    folder = Path(tempfile.mkdtemp(prefix="viewbox-test-orthanc-"))
    http_port = free_port()
    configuration = {
        "Name": "ViewboxTest",
        "StorageDirectory": str(folder / "storage"),
        "IndexDirectory": str(folder / "index"),
        "HttpPort": http_port,
        "DicomServerEnabled": True,
        "DicomAet": "ORTHANC",
        "DicomPort": free_port(),
        "DicomModalities": {"viewbox": [arguments.ae_title, "127.0.0.1", relay_port]},
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "Plugins": [],
        "OrthancExplorerEnabled": False,
        "SaveJobs": False,
        "TcpNoDelay": True,
    }
    (folder / "orthanc.json").write_text(json.dumps(configuration))
    process = subprocess.Popen(
        [
            "Orthanc",
            "--no-jobs",
            f"--logfile={folder / 'orthanc.log'}",
            str(folder / "orthanc.json"),
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        preexec_fn=end_with_parent,
    )
    try:
        wait_until_ready(process, http_port)
        studies = set()
        for path in arguments.files:
            status, body = request(http_port, "POST", "/instances", path.read_bytes())
            if status != 200:
                raise SystemExit(f"Orthanc refused {path.name}: HTTP {status}")
            studies.add(json.loads(body)["ParentStudy"])
        status, body = request(
            http_port,
            "POST",
            "/modalities/viewbox/store",
            json.dumps({"Resources": sorted(studies), "Synchronous": True}).encode(),
        )
        print(json.dumps({"status": status, "body": body.decode(errors="replace")}))
    finally:
        process.terminate()
        try:
            process.wait(timeout=STOP_TIMEOUT_SECONDS)
        except subprocess.TimeoutExpired:
            process.kill()
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
