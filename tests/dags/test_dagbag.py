"""DagBag integrity: every DAG imports, is documented, tagged, retried, and touches nothing at parse time."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

DAGS = Path(__file__).resolve().parents[2] / "dags"
EXPECTED = {"pacs_audit", "pacs_plan", "pacs_migrate", "pacs_validate", "pacs_prefetch"}


@pytest.fixture(scope="module")
def dagbag():  # noqa: ANN201
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(DAGS))


def test_no_import_errors(dagbag) -> None:  # noqa: ANN001
    assert dagbag.import_errors == {}


def test_one_dag_per_file_named_after_it(dagbag) -> None:  # noqa: ANN001
    assert set(dagbag.dag_ids) == EXPECTED
    for dag_id, dag in dagbag.dags.items():
        assert Path(dag.fileloc).stem == dag_id


@pytest.mark.parametrize("dag_id", sorted(EXPECTED))
def test_dag_is_documented_tagged_and_retried(dagbag, dag_id: str) -> None:  # noqa: ANN001
    dag = dagbag.dags[dag_id]
    assert dag.tags and "pacsmig" in dag.tags
    assert dag.doc_md and len(dag.doc_md) > 200
    assert dag.catchup is False
    assert dag.start_date is not None and dag.start_date.tzinfo is not None
    for t in dag.tasks:
        assert t.retries >= 2, f"{dag_id}.{t.task_id} retries={t.retries}"


def test_mapped_tasks_have_labels(dagbag) -> None:  # noqa: ANN001
    from airflow.sdk.definitions.mappedoperator import MappedOperator

    mapped = [t for d in dagbag.dags.values() for t in d.tasks
              if isinstance(t, MappedOperator) or t.get_closest_mapped_task_group() is not None]
    assert mapped, "the migration maps one task group per study"
    for t in mapped:
        assert t.map_index_template, f"{t.dag_id}.{t.task_id} has no map_index_template"


def test_parsing_opens_no_connection(monkeypatch: pytest.MonkeyPatch) -> None:
    """No network, DB, Variable or Connection access at parse time."""
    from airflow.dag_processing.dagbag import DagBag

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"network access at parse time: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setitem(os.environ, "AIRFLOW_CONN_LEGACY_PACS", "not-a-connection")
    bag = DagBag(dag_folder=str(DAGS))
    assert bag.import_errors == {}
