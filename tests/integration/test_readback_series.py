"""Read-back by whole series against a real Orthanc: one request per series, and nothing the series
answer leaves out is ever taken as verified (missing instances named, misfiled ones still found)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import requests
from validate_arrange import Archive, delete_instance, make_archive

from pacsmig.config import ConnectionSpec
from pacsmig.verify import readback
from pacsmig.verify.hashing import hash_instance
from pacsmig.verify.readback import MISSING_AT_TARGET, RAW_IDENTICAL, VERIFIED, InstanceTask, verify_chunk
from testbed.orthanc import OrthancServer

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201
    with OrthancServer(tmp_path_factory.mktemp("series_tgt"), name="STGT", aet="STGT", dicomweb=True) as server:
        yield server


@pytest.fixture
def loaded(target: OrthancServer, tmp_path: Path) -> tuple[ConnectionSpec, Archive, list[InstanceTask]]:
    target.reset()
    archive = make_archive(tmp_path / "archive", seed=11)
    assert target.upload_files([i.path for i in archive.all()]) == len(archive.all())
    tasks = []
    for inst in archive.all():
        h = hash_instance(inst.path)
        tasks.append(InstanceTask(h.study_instance_uid, h.series_instance_uid, h.sop_instance_uid, h.pixel_hash,
                                  h.raw_hash, h.number_of_frames, h.transfer_syntax_uid, str(inst.path)))
    conn = ConnectionSpec("target_archive", "http", "127.0.0.1", target.http_port, schema="http",
                          extra={"dicomweb_path": "/dicom-web"})
    return conn, archive, tasks


def _counting(conn: ConnectionSpec, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    dest = readback.open_target(conn)
    seen: list[str] = []
    real = dest.session.request

    def request(method: str, url: str, **kwargs: object) -> requests.Response:
        seen.append(url)
        return real(method, url, **kwargs)

    monkeypatch.setattr(dest.session, "request", request)
    return seen


def test_one_request_per_series(loaded, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: ANN001
    conn, archive, tasks = loaded
    urls = _counting(conn, monkeypatch)
    results = verify_chunk(conn, tasks)
    assert [r.sop_instance_uid for r in results] == [t.sop_instance_uid for t in tasks]
    assert {r.status for r in results} == {VERIFIED}
    assert all(r.method == RAW_IDENTICAL for r in results if r.source_pixel_hash != "no-pixel-data")
    series = {(t.study_instance_uid, t.series_instance_uid) for t in tasks}
    assert len(urls) == len(series) and all("/series/" in u and "/instances" not in u for u in urls)


def test_missing_and_misfiled_instances_are_accounted_for(loaded, target: OrthancServer) -> None:  # noqa: ANN001
    conn, archive, tasks = loaded
    gone = archive.instances["ct"][1].sop
    delete_instance(target.url, gone)
    # The ledger's series UID is wrong for one instance: the series answer lacks it, the listing finds it.
    misfiled = next(t for t in tasks if t.sop_instance_uid == archive.instances["us"][0].sop)
    tasks = [t if t is not misfiled else replace(t, series_instance_uid="1.2.3.999") for t in tasks]
    results = {r.sop_instance_uid: r for r in verify_chunk(conn, tasks)}
    assert len(results) == len(tasks)
    assert (results[gone].status, results[gone].detail) == (MISSING_AT_TARGET, "not held by the target")
    assert results[misfiled.sop_instance_uid].status == VERIFIED
    assert [s for s, r in results.items() if r.status != VERIFIED] == [gone]


def test_a_stream_cut_short_falls_back_per_instance(loaded, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: ANN001
    conn, archive, tasks = loaded
    dest = readback.open_target(conn)
    real = dest.iter_series

    def first_part_only(study: str, series: str):  # noqa: ANN202
        yield next(iter(real(study, series)))

    monkeypatch.setattr(dest, "iter_series", first_part_only)
    results = verify_chunk(conn, tasks)
    assert {r.status for r in results} == {VERIFIED}


def test_iter_series_returns_every_instance_unchanged(loaded) -> None:  # noqa: ANN001
    conn, archive, tasks = loaded
    dest = readback.open_target(conn)
    ct = archive.instances["ct"]
    got = list(dest.iter_series(ct[0].study, ct[0].series))
    assert sorted(got) == sorted(i.path.read_bytes() for i in ct)
    assert list(dest.iter_series(ct[0].study, "1.2.3.999")) == []


def test_worker_processes_start_only_for_decoding(loaded, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: ANN001
    conn, archive, tasks = loaded
    started: list[int] = []
    real_pool = readback.ProcessPoolExecutor

    class Recording(real_pool):  # type: ignore[misc, valid-type]
        def __init__(self, max_workers: int, **kwargs: object) -> None:
            started.append(max_workers)
            super().__init__(max_workers=max_workers, **kwargs)

    monkeypatch.setattr(readback, "ProcessPoolExecutor", Recording)
    monkeypatch.delenv("PACSMIG_VERIFY_WORKERS", raising=False)
    monkeypatch.setattr(readback, "default_workers", lambda: 2)
    results = readback.verify_tasks(conn, tasks, chunk_size=1)
    assert {r.status for r in results} == {VERIFIED} and started == []
    # A syntax the target does not hold: every image must be decoded, worth the processes.
    forced = [replace(t, source_transfer_syntax="1.2.840.10008.1.2.4.70") for t in tasks]
    results = readback.verify_tasks(conn, forced, chunk_size=1)
    assert {r.status for r in results} == {VERIFIED} and started == [2]
    assert len(results) == len(tasks) and all(r.method == "decoded" for r in results)
