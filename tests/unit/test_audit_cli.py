"""``pacsmig audit`` argument handling (the full run is covered by the integration tests' run_audit)."""

from __future__ import annotations

import pytest

from pacsmig.audit.cli import main, parser
from pacsmig.cli import main as pacsmig_main


def test_arguments_and_defaults() -> None:
    args = parser().parse_args(["--date-from", "2010-01-01", "--window", "month", "--find-cap", "500"])
    assert (args.date_from, args.window, args.find_cap, args.samples_per_group) == (
        "2010-01-01",
        "month",
        500,
        3,
    )
    with pytest.raises(SystemExit):
        parser().parse_args(["--window", "week"])


def test_missing_connection_is_a_clear_error(monkeypatch, capsys, tmp_path) -> None:  # noqa: ANN001
    monkeypatch.delenv("AIRFLOW_CONN_LEGACY_PACS", raising=False)
    assert main(["--out", str(tmp_path)]) == 1
    assert "AIRFLOW_CONN_LEGACY_PACS" in capsys.readouterr().err
    assert pacsmig_main(["audit", "--out", str(tmp_path)]) == 1
