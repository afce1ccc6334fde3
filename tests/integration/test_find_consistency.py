"""C-FIND answers on a reused association are complete: no match lost to pynetdicom's reactor thread.

pynetdicom 3.0.4's reactor can take an answer of our own C-FIND off the DIMSE queue and drop it
("Received unexpected C-FIND service message"): the query then ends with Success one match short
(a 4-series study walked as 3 instances), or, when the answer taken is the final status, hangs for
the DIMSE timeout. The race is timing-dependent, so these tests inject it deterministically: the
DIMSE queue hands the chosen answer to ``assoc._serve_request`` exactly as the racing reactor does.
"""

from __future__ import annotations

import queue
from collections.abc import Iterator
from typing import Any

import pytest
from pynetdicom.association import Association
from pynetdicom.dimse_primitives import C_FIND
from pynetdicom.status import code_to_category

from pacsmig.audit.inventory import walk_study
from pacsmig.config import DicomNode
from pacsmig.dicom import retrieve
from pacsmig.dicom.find import FindClient, query_dataset
from testbed.orthanc import OrthancServer

pytestmark = pytest.mark.integration


class ReactorSteals(queue.Queue):
    """The association's DIMSE queue, handing one chosen C-FIND answer to the reactor's handler."""

    def __init__(self, assoc: Association, *, final: bool) -> None:
        super().__init__()
        self.assoc, self.final, self.armed, self.stolen = assoc, final, False, 0

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        _, msg = item
        if self.armed and isinstance(msg, C_FIND) and msg.is_valid_response:
            if (code_to_category(int(msg.Status)) != "Pending") == self.final:
                self.armed = False
                self.stolen += 1
                self.assoc._serve_request(msg, item[0])  # what _run_reactor does with what it took
                return
        super().put(item, block, timeout)


def steal_on(assoc: Association, *, final: bool) -> ReactorSteals:
    assert assoc.dimse.msg_queue.empty()
    thief = ReactorSteals(assoc, final=final)
    assoc.dimse.msg_queue = thief
    return thief


@pytest.fixture(scope="module")
def xa_source(synthetic_archive, tmp_path_factory, storage_port) -> Iterator[tuple[DicomNode, list]]:  # noqa: ANN001
    """An Orthanc holding the archive's studies of single-instance series (the flaky test's (4, 4) study)."""
    studies = [s for s in synthetic_archive.studies if s.n_series >= 2 and s.n_series == s.n_instances]
    assert any(s.n_series == 4 for s in studies)
    files = [f for s in studies for f in synthetic_archive.study_files(s.study_instance_uid)]
    with OrthancServer(
        tmp_path_factory.mktemp("findsrc"),
        name="FINDSRC",
        aet="FINDSRC",
        modalities={"pacsmig": ("PACSMIG", "127.0.0.1", storage_port)},
    ) as server:
        assert server.upload_files(files) == len(files)
        # a short DIMSE timeout: a swallowed final status must not hide behind a long wait
        node = DicomNode("127.0.0.1", server.dicom_port, "FINDSRC", calling_ae_title="PACSMIG",
                         storage_port=storage_port, find_cap=1000, timeout=8)
        yield node, studies


def image_query(study_uid: str, series_uid: str) -> Any:
    return query_dataset("IMAGE", {"StudyInstanceUID": study_uid, "SeriesInstanceUID": series_uid,
                                   "SOPInstanceUID": ""})


def test_a_match_taken_by_the_reactor_is_not_lost(xa_source) -> None:  # noqa: ANN001
    node, studies = xa_source
    study = next(s for s in studies if s.n_series == 4)
    with FindClient(node) as client:
        thief = steal_on(client._association(), final=False)
        for series_uid, _, n in study.series:
            thief.armed = True
            result = client.find(image_query(study.study_instance_uid, series_uid))
            assert thief.stolen and result.complete
            assert len(result) == n, series_uid


def test_a_final_status_taken_by_the_reactor_does_not_become_a_timeout(xa_source) -> None:  # noqa: ANN001
    node, studies = xa_source
    with FindClient(node) as client:
        thief = steal_on(client._association(), final=True)
        thief.armed = True
        nowhere = {"StudyInstanceUID": "1.2.3.4.5.6.7.8.9", "StudyDate": ""}
        empty = client.find(query_dataset("STUDY", nowhere))
        assert thief.stolen == 1
        assert empty.status == 0x0000 and len(empty) == 0  # None would mean the DIMSE timeout struck
        thief.armed = True
        uid = studies[0].study_instance_uid
        one = client.find(query_dataset("STUDY", {"StudyInstanceUID": uid}))
        assert thief.stolen == 2 and one.complete and len(one) == 1


def test_walking_a_study_with_a_stolen_match_still_counts_every_instance(xa_source) -> None:  # noqa: ANN001
    node, studies = xa_source
    study = next(s for s in studies if s.n_series == 4)
    with FindClient(node) as client:
        thief = steal_on(client._association(), final=False)
        thief.armed = True
        walked = walk_study(client, study.study_instance_uid, node.find_cap)
        assert thief.stolen == 1
    assert (walked["n_series"], walked["n_instances"]) == (study.n_series, study.n_instances)


def test_list_study_instances_with_stolen_matches_lists_every_instance(xa_source, monkeypatch) -> None:  # noqa: ANN001
    node, studies = xa_source
    study = next(s for s in studies if s.n_series == 4)
    thieves: list[ReactorSteals] = []
    opened = retrieve._find_association

    def stealing(n: DicomNode) -> Iterator[Association]:
        with opened(n) as assoc:
            thieves.append(steal_on(assoc, final=False))
            real_find, calls = assoc.send_c_find, []

            def send_c_find(*args: Any, **kwargs: Any) -> Any:
                calls.append(args)
                # one match of every query is taken the first time it is sent (a retry goes through)
                thieves[-1].armed = len(calls) == 1 or calls[-1][0] is not calls[-2][0]
                return real_find(*args, **kwargs)

            assoc.send_c_find = send_c_find
            yield assoc

    monkeypatch.setattr(retrieve, "_find_association", retrieve.contextmanager(stealing))
    listed = retrieve.list_study_instances(node, study.study_instance_uid)
    assert thieves and thieves[0].stolen >= 1 + study.n_series
    assert sorted(listed) == sorted(uid for uid, _, _ in study.series)
    assert sorted(u for uids in listed.values() for u in uids) == sorted(study.instances)


def test_back_to_back_queries_on_one_association_all_answer_in_full(xa_source) -> None:  # noqa: ANN001
    """The real race, not injected: many short queries reusing one association (lost 3 in 3000 before)."""
    node, studies = xa_source
    series = [(s.study_instance_uid, uid, n) for s in studies for uid, _, n in s.series]
    short = []
    with FindClient(node) as client:
        for k in range(1500):
            study_uid, series_uid, n = series[k % len(series)]
            result = client.find(image_query(study_uid, series_uid))
            if len(result) != n or not result.complete:
                short.append((k, len(result), result.status))
    assert short == []
