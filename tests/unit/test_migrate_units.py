"""How a partition's studies are cut into Airflow tasks (pure: no Airflow, no ledger)."""

from __future__ import annotations

import random

import pytest

from pacsmig.migrate.units import pack_units, unit_label


def studies(n: int, seed: int = 3) -> list[dict]:
    rng = random.Random(seed)
    return [{"study_instance_uid": f"1.2.3.{i}", "label": f"ACC{i:04d}", "n_instances": rng.choice([1, 4, 60, 300])}
            for i in range(n)]


def flat(units: list[dict]) -> list[str]:
    return [s["study_instance_uid"] for u in units for s in u["studies"]]


def test_default_is_one_task_per_study_labelled_by_accession() -> None:
    s = studies(5)
    units = pack_units(s)
    assert [u["label"] for u in units] == [x["label"] for x in s]
    assert [len(u["studies"]) for u in units] == [1] * 5


def test_one_task_per_study_maps_the_first_max_units_by_priority() -> None:
    s = studies(30)
    units = pack_units(s, max_units=10)
    assert flat(units) == [x["study_instance_uid"] for x in s[:10]]


@pytest.mark.parametrize(("n", "per_task", "lanes", "max_units"), [
    (200, 500, 4, 1024), (200, 50, 4, 16), (3, 500, 4, 1024), (1000, 1, 2, 1024), (50, 100_000, 4, 1024)])
def test_packing_keeps_every_study_exactly_once_within_the_task_limit(n: int, per_task: int, lanes: int,
                                                                      max_units: int) -> None:
    s = studies(n)
    units = pack_units(s, images_per_task=per_task, lanes=lanes, max_units=max_units)
    assert sorted(flat(units)) == sorted(x["study_instance_uid"] for x in s)
    assert len(units) <= max_units
    assert len(units) >= min(lanes, n)
    for u in units:   # each task works through its studies in priority order
        order = [int(x["study_instance_uid"].rsplit(".", 1)[1]) for x in u["studies"]]
        assert order == sorted(order)
        assert u["images"] == sum(x["n_instances"] for x in u["studies"])


def test_packing_balances_images_and_spreads_the_head_of_the_queue() -> None:
    s = studies(400)
    units = pack_units(s, images_per_task=2000, lanes=4)
    total = sum(x["n_instances"] for x in s)
    assert len(units) == max(4, -(-total // 2000))
    loads = [u["images"] for u in units]
    assert max(loads) - min(loads) <= max(x["n_instances"] for x in s)
    # The highest-priority studies start first: one at the head of each of the first tasks.
    heads = {u["studies"][0]["study_instance_uid"] for u in units[:4]}
    assert heads == {x["study_instance_uid"] for x in s[:4]}


def test_unknown_image_counts_count_as_one() -> None:
    s = [{"study_instance_uid": f"9.{i}", "label": f"A{i}", "n_instances": None} for i in range(8)]
    units = pack_units(s, images_per_task=2, lanes=1)
    assert len(units) == 4 and all(len(u["studies"]) == 2 for u in units)


def test_label_names_the_first_study_and_how_many_more() -> None:
    s = studies(3)
    assert unit_label(s[:1]) == "ACC0000"
    assert unit_label(s) == "ACC0000 +2"
