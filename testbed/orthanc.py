"""Start a real Orthanc as a child process (legacy PACS or target archive) on free loopback ports."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

ORTHANC_BIN = shutil.which("Orthanc") or "/usr/sbin/Orthanc"
PLUGIN_DIR = Path("/usr/share/orthanc/plugins")


def free_port() -> int:
    """A TCP port free on loopback right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_port(port: int, timeout: float = 20.0, interval: float = 0.05) -> None:
    """Until something listens on ``port`` on loopback; RuntimeError after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(interval)
    raise RuntimeError(f"nothing listens on port {port} after {timeout}s")


@dataclass
class OrthancServer:
    """One Orthanc instance with its own config, storage and ports.

    ``modalities`` maps a symbolic name to ``(aet, host, port)``: the peers this Orthanc may send
    C-MOVE sub-operations to and accept associations from (Orthanc refuses unknown AEs).
    """

    workdir: Path
    name: str = "LEGACY"
    aet: str = "LEGACY"
    modalities: dict[str, tuple[str, str, int]] = field(default_factory=dict)
    dicomweb: bool = False
    gdcm: bool = False
    limit_find_results: int = 0
    always_allow_store: bool = True
    extra_config: dict[str, Any] = field(default_factory=dict)
    http_port: int = 0
    dicom_port: int = 0
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def dicomweb_url(self) -> str:
        return f"{self.url}/dicom-web"

    def config(self) -> dict[str, Any]:
        plugins = []
        if self.dicomweb:
            plugins.append(str(PLUGIN_DIR / "libOrthancDicomWeb.so"))
        if self.gdcm:
            plugins.append(str(PLUGIN_DIR / "libOrthancGdcm.so"))
        cfg: dict[str, Any] = {
            "Name": self.name,
            "StorageDirectory": str(self.workdir / "storage"),
            "IndexDirectory": str(self.workdir / "index"),
            "HttpPort": self.http_port,
            "DicomPort": self.dicom_port,
            "DicomAet": self.aet,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "HttpServerEnabled": True,
            "DicomServerEnabled": True,
            "StorageCompression": False,
            "OverwriteInstances": False,
            "DicomCheckCalledAet": False,
            "DicomCheckModalityHost": False,
            "DicomAlwaysAllowEcho": True,
            "DicomAlwaysAllowStore": self.always_allow_store,
            "DicomModalities": {k: list(v) for k, v in self.modalities.items()},
            "DicomScuTimeout": 30,
            "DicomScpTimeout": 60,
            "LimitFindResults": self.limit_find_results,
            "LimitFindInstances": self.limit_find_results,
            "HttpThreadsCount": 16,
            "ConcurrentJobs": 4,
            "KeepAlive": True,
            "SaveJobs": False,
            "StableAge": 1,
            "Plugins": plugins,
            "DicomWeb": {"Enable": self.dicomweb, "Root": "/dicom-web/", "EnableWado": True,
                         "StudiesMetadata": "Full", "SeriesMetadata": "Full"},
        }
        if self.gdcm:
            cfg["Gdcm"] = {"Enable": True, "Throttling": 4}
        cfg.update(self.extra_config)
        return cfg

    def start(self, timeout: float = 30.0) -> OrthancServer:
        """Write the config, start Orthanc and wait until its REST API answers."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.http_port = self.http_port or free_port()
        self.dicom_port = self.dicom_port or free_port()
        cfg_path = self.workdir / "orthanc.json"
        cfg_path.write_text(json.dumps(self.config(), indent=2))
        env = dict(os.environ, TCP_NODELAY="1")
        log = open(self.workdir / "orthanc.log", "ab")  # noqa: SIM115 - owned by the child's lifetime
        self.process = subprocess.Popen(
            [ORTHANC_BIN, "--no-jobs", str(cfg_path)], stdout=log, stderr=subprocess.STDOUT, env=env
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"Orthanc {self.name} exited: see {self.workdir / 'orthanc.log'}")
            try:
                if requests.get(f"{self.url}/system", timeout=1).ok:
                    return self
            except requests.RequestException:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"Orthanc {self.name} did not start within {timeout}s")

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def __enter__(self) -> OrthancServer:
        return self.start() if self.process is None else self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- the pacsmig connections that reach this server (tests, demo, bench) -----------------
    def dicomweb_connection(self, conn_id: str = "target_archive") -> Any:
        """This Orthanc as a DICOMweb ``target_archive`` (a :class:`pacsmig.config.ConnectionSpec`)."""
        from pacsmig.config import ConnectionSpec

        return ConnectionSpec(conn_id, "http", "127.0.0.1", self.http_port, schema="http",
                              extra={"dicomweb_path": "/dicom-web"})

    def dicom_connection(self, storage_port: int, conn_id: str = "legacy_pacs", **extra: Any) -> Any:
        """This Orthanc as the ``legacy_pacs`` Q/R SCP, moving to our storage SCP on ``storage_port``."""
        from pacsmig.config import ConnectionSpec

        return ConnectionSpec(conn_id, "dicom", "127.0.0.1", self.dicom_port,
                              extra={"ae_title": self.aet, "calling_ae_title": "PACSMIG",
                                     "move_destination": "PACSMIG", "storage_port": storage_port, **extra})

    # --- REST conveniences used by tests, demo and bench -------------------------------------
    def add_modality(self, name: str, aet: str, host: str, port: int) -> None:
        """Declare a peer at run time (PUT /modalities/{name})."""
        body = {"AET": aet, "Host": host, "Port": port, "AllowEcho": True, "AllowFind": True,
                "AllowMove": True, "AllowGet": True, "AllowStore": True}
        requests.put(f"{self.url}/modalities/{name}", json=body, timeout=10).raise_for_status()

    def upload_files(self, paths: list[Path], threads: int = 4) -> int:
        """POST Part-10 files to /instances; returns how many Orthanc accepted."""
        from concurrent.futures import ThreadPoolExecutor

        session = requests.Session()

        def post(path: Path) -> bool:
            resp = session.post(f"{self.url}/instances", data=path.read_bytes(), timeout=60)
            return resp.ok

        with ThreadPoolExecutor(threads) as pool:
            return sum(pool.map(post, paths))

    def count(self, level: str = "instances") -> int:
        return int(requests.get(f"{self.url}/statistics", timeout=10).json()[
            {"instances": "CountInstances", "series": "CountSeries", "studies": "CountStudies"}[level]])

    def reset(self) -> None:
        """Delete every patient (a clean archive between tests)."""
        for pid in requests.get(f"{self.url}/patients", timeout=30).json():
            requests.delete(f"{self.url}/patients/{pid}", timeout=60)
