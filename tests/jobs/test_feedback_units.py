"""The feedback loop's parts without the platform: the promotion gate, corrections in each task's shape, the
uncertainty of answers, retraining weights with a changed class list, and cutting a dataset version."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from core.datasets.samples import write_sample
from core.datasets.versions import Edits, NewItem, cut_version, diff
from core.engine.errors import DataError
from core.engine.items import stored_items
from core.engine.tasks import Correction, Scores, get_task
from core.engine.tasks.classification import ClassPrediction
from core.engine.tasks.multilabel import MultiLabelPrediction
from core.jobs.gate import Policy, decide
from core.jobs.significance import binomial_tail
from core.jobs.training import output_keys
from core.storage.local import LocalStore

MANIFEST = {"classes": ["bag", "dress"], "codes": ["void", "a", "b"], "labels": {"label_delim": " "}}


def scores(value: float, per_class: dict[str, float], higher: bool = True) -> Scores:
    return Scores("accuracy" if higher else "mae", value, higher, per_class, 10)


def test_the_gate_promotes_only_a_better_challenger_that_drops_no_class() -> None:
    policy = Policy(min_improvement=0.01, max_class_drop=0.05)
    champion = scores(0.80, {"a": 0.8, "b": 0.8})
    assert decide(scores(0.85, {"a": 0.82, "b": 0.88}), champion, policy).promote
    worse = decide(scores(0.805, {"a": 0.8, "b": 0.81}), champion, policy)
    assert not worse.promote and "not >= 0.8100" in worse.reason
    dropped = decide(scores(0.90, {"a": 0.70, "b": 1.0}), champion, policy)
    assert not dropped.promote and "class 'a' drops 0.100" in dropped.reason
    # Lower is better for errors; a class the challenger does not know counts as dropped to 0.
    assert decide(scores(0.10, {}, higher=False), scores(0.20, {}, higher=False), policy).promote
    assert not decide(scores(0.9, {"a": 0.9}), scores(0.8, {"a": 0.8, "gone": 0.5}), policy).promote
    assert decide(scores(0.1, {}), None, policy).reason == "the name has no champion"
    assert Policy.of({"min_feedback": 20, "unknown": 1}) == Policy(min_feedback=20)


def hits(n_right: int, n: int) -> tuple[float, ...]:
    return tuple([1.0] * n_right + [0.0] * (n - n_right))


def paired_scores(a: tuple[float, ...], b: tuple[float, ...]) -> Scores:
    """Accuracy over two classes' items: class 'a' has the items of `a`, class 'b' those of `b`."""
    flat = a + b
    return Scores(
        "accuracy",
        sum(flat) / len(flat),
        True,
        {"a": sum(a) / len(a), "b": sum(b) / len(b)},
        len(flat),
        flat,
        {"a": a, "b": b},
    )


def test_a_drop_counts_only_beyond_chance_at_its_item_count() -> None:
    policy = Policy(min_improvement=0.0, max_class_drop=0.05)
    assert binomial_tail(5, 5) == 1 / 32 and binomial_tail(0, 7) == 1.0 and binomial_tail(8, 7) == 0.0
    assert abs(binomial_tail(8, 11) - 232 / 2048) < 1e-12
    # Class 'a' (40 items): the champion gets 26 right; the challenger gets 8 of them wrong and 3 others right:
    # 21 right, a fall of 0.125 — more than max_class_drop, but 8 against 3 is what chance often gives (p 0.11).
    champion_a = hits(26, 40)
    challenger_a = tuple([0.0] * 8 + [1.0] * 18 + [1.0] * 3 + [0.0] * 11)
    champion = paired_scores(champion_a, hits(30, 40))
    challenger = paired_scores(challenger_a, hits(40, 40))  # class 'b' gains 10: overall better
    verdict = decide(challenger, champion, policy)
    assert verdict.promote, verdict.reason
    assert "within chance at their counts (a: 40 items" in verdict.reason
    assert verdict.tests["per_class"]["a"]["worse"] == 8 and verdict.tests["per_class"]["a"]["better"] == 3
    # Two classes share the 5% (0.025 each): 5 losses and no gains (p 1/32) still pass; 7 and none (p 1/128) do not.
    assert decide(paired_scores(hits(21, 40), hits(40, 40)), champion, policy).promote
    refused = decide(paired_scores(hits(19, 40), hits(40, 40)), champion, policy)
    assert (
        not refused.promote
        and "class 'a' drops 0.175" in refused.reason
        and "beyond chance on its 40" in refused.reason
    )
    # Overall: a challenger 1 item short is a tie within chance and is promoted (the newer model, on corrected
    # data, wins ties); 12 losses and 2 gains over 80 items is a real drop and is refused.
    tie = decide(paired_scores(hits(26, 40), hits(29, 40)), champion, policy)
    assert tie.promote and "within chance" in tie.reason and "95% interval" in tie.reason
    worse = paired_scores(tuple([0.0] * 12 + [1.0] * 14 + [1.0] * 2 + [0.0] * 12), hits(30, 40))
    lost = decide(worse, champion, policy)
    assert not lost.promote and "worse on 12 of 80 items, better on 2" in lost.reason
    # Asking for an improvement (min_improvement > 0) is a point rule: a tie does not give one.
    assert not decide(paired_scores(hits(26, 40), hits(30, 40)), champion, Policy(min_improvement=0.01)).promote


def test_scores_pair_item_by_item() -> None:
    from core.engine.items import ClassItems

    items = ClassItems(
        root=Path("."),
        keys=[f"{i}.png" for i in range(4)],
        is_valid=[True] * 4,
        classes=["a", "b"],
        labels=["a", "b", "a", "b"],
    )
    task = get_task("classification")
    said = ["a", "a", "b", "b"]
    answers = [ClassPrediction(x, "ab".index(x), [0.9, 0.1] if x == "a" else [0.1, 0.9], ["a", "b"]) for x in said]
    got = task.score(answers, items, [0, 1, 2, 3])
    assert got.items == (1.0, 0.0, 0.0, 1.0) and got.class_items == {"a": (1.0, 0.0), "b": (0.0, 1.0)}
    assert got.as_dict()["per_class_n"] == {"a": 2, "b": 2}


def png(array: np.ndarray) -> bytes:
    """A mask target as the task takes it: the PNG's bytes (JSON's base64 is decoded by the request's schema)."""
    buf = io.BytesIO()
    Image.fromarray(array.astype(np.uint8), mode="L").save(buf, format="PNG")
    return buf.getvalue()


def test_corrections_take_each_tasks_shape_and_name_the_field_when_wrong() -> None:
    size = (8, 6)
    assert get_task("classification").correction({"label": " shirt "}, MANIFEST, size).target == {"label": "shirt"}
    for bad in ({"label": ""}, {"label": "a/b"}, {"labels": ["a"]}):
        with pytest.raises(DataError, match="label"):
            get_task("classification").correction(bad, MANIFEST, size)
    labels = get_task("multilabel").correction({"labels": ["dress", "bag", "bag"]}, MANIFEST, size)
    assert labels.target == {"labels": ["bag", "dress"]}
    assert get_task("multilabel").record(labels.target, MANIFEST) == {"label": "bag dress"}
    with pytest.raises(DataError, match="delimiter"):
        get_task("multilabel").record({"labels": ["a b"]}, MANIFEST)
    points = get_task("points").correction({"points": [[1, 2], [3, 4]]}, MANIFEST, size)
    assert points.target == {"points": [1.0, 2.0, 3.0, 4.0]}
    with pytest.raises(DataError, match="points: expected 4 numbers"):
        get_task("points").correction({"points": [[1, 2]]}, MANIFEST, size)
    with pytest.raises(DataError, match="values"):
        get_task("values").correction({"values": [1.0, float("nan")]}, MANIFEST, size)
    mask = np.zeros((6, 8))
    mask[2:, 3:] = 2
    made = get_task("segmentation").correction({"mask": png(mask)}, MANIFEST, size)
    assert made.mask_png is not None and np.array_equal(np.asarray(Image.open(io.BytesIO(made.mask_png))), mask)
    with pytest.raises(DataError, match="mask: it is 6x8, the image is 8x6"):
        get_task("segmentation").correction({"mask": png(mask.T)}, MANIFEST, size)
    with pytest.raises(DataError, match="value 3 has no code"):
        get_task("segmentation").correction({"mask": png(mask + 1)}, MANIFEST, size)
    with pytest.raises(DataError, match="not a PNG"):
        get_task("segmentation").correction({"mask": b"not a png"}, MANIFEST, size)
    with pytest.raises(DataError, match="a segmentation target is"):
        get_task("segmentation").correction({"mask": base64.b64encode(png(mask)).decode()}, MANIFEST, size)


def test_uncertainty_is_highest_where_the_model_hesitates() -> None:
    sure = ClassPrediction("a", 0, [0.9, 0.05, 0.05], ["a", "b", "c"])
    torn = ClassPrediction("a", 0, [0.45, 0.44, 0.11], ["a", "b", "c"])
    assert sure.uncertainty == pytest.approx(0.15) and torn.uncertainty == pytest.approx(0.99)
    near = MultiLabelPrediction("a", 0, [0.21, 0.9], ["a", "b"], ["a", "b"], [0.2, 0.2])
    far = MultiLabelPrediction("b", 1, [0.0, 1.0], ["a", "b"], ["b"], [0.2, 0.2])
    assert near.uncertainty > 0.9 > 0.0 == pytest.approx(far.uncertainty)


def test_a_changed_class_list_keeps_the_rows_of_the_classes_that_stay() -> None:
    head = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.BatchNorm1d(8), torch.nn.Linear(8, 3, bias=True))
    state = head.state_dict()
    assert output_keys(state, 3) == {"2.weight", "2.bias"}  # the 8-wide norm before it is not the output
    assert output_keys(state, 8) == set()  # the last layer has 3 rows, not 8


def test_cut_a_version_keeps_splits_adds_feedback_and_relabels(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "store")
    folder = write_sample("fashion-mnist", tmp_path / "data", per_class=10, size=16, classes=["bag", "dress"])
    keys = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*.png"))
    for k in keys:
        store.put_file(f"v1/files/{k}", folder / k)
    parent = {
        "format": "fitcycle-dataset",
        "format_version": 1,
        "labels": {"kind": "folder"},
        "split": "random",
        "classes": ["bag", "dress"],
        "target_kind": "label",
        "items": [{"key": k, "label": k.split("/")[0], "valid": False} for k in keys],
    }
    store.put_file("predictions/p1.png", folder / keys[0])
    relabel = ("dress/0000.png", Correction({"label": "bag"}))
    add = NewItem("feedback/p1.png", "predictions/p1.png", Correction({"label": "shirt"}), "p1")
    edits = Edits(remove=["bag/0001.png"], relabel=[relabel], add=[add], note="fixes")
    cut = cut_version(store, "v1", parent, "v2", edits, 0.2, 42)
    before = stored_items(Path("."), parent, 0.2, 42)
    after = stored_items(Path("."), cut.manifest, 0.5, 7)  # a pinned split ignores a job's valid_pct and seed
    old = dict(zip(before.keys, before.is_valid, strict=True))
    assert all(old[k] == v for k, v in zip(after.keys, after.is_valid, strict=True) if k in old)
    assert cut.classes == ["bag", "dress", "shirt"] and cut.changes["new_classes"] == ["shirt"]
    assert cut.n_items == 20 and store.exists("v2/files/feedback/p1.png") and not store.exists("v2/files/bag/0001.png")
    assert json.loads(store.get_bytes("v2/manifest.json"))["split"] == "pinned"
    changed = diff(parent, cut.manifest)
    assert changed["counts"] == {
        "added": 1,
        "removed": 1,
        "relabelled": 1,
        "split_moved": changed["counts"]["split_moved"],
    }
    assert changed["relabelled"] == [
        {"item": "dress/0000.png", "before": {"label": "dress"}, "after": {"label": "bag"}}
    ]
    with pytest.raises(DataError, match=r"remove: no item .nope\.png."):
        cut_version(store, "v1", parent, "v3", Edits(remove=["nope.png"]), 0.2, 42)
    assert not store.list("v3/")  # nothing left behind

    # The same prediction corrected again after v2 took its first correction: v3 replaces the item's target
    # (same image, same split) instead of refusing a second item of that key (which stopped the policy loop).
    again = NewItem("feedback/p1.png", "predictions/p1.png", Correction({"label": "dress"}), "p1")
    third = cut_version(store, "v2", cut.manifest, "v3", Edits(add=[again]), 0.2, 42)
    row = next(r for r in third.manifest["items"] if r["key"] == "feedback/p1.png")
    first = next(r for r in cut.manifest["items"] if r["key"] == "feedback/p1.png")
    assert row["label"] == "dress" and row["valid"] == first["valid"] and third.n_items == cut.n_items
    assert third.changes["added"] == 0 and third.changes["relabelled"] == 1


def test_one_process_of_the_fleet_holds_the_loop_at_a_time(tmp_path: Path) -> None:
    import time

    from core.db import repos
    from core.db.session import make_engine, make_sessionmaker, session_scope, upgrade

    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    upgrade(url)
    sessions = make_sessionmaker(make_engine(url))

    def hold(owner: str, seconds: float) -> bool:
        with session_scope(sessions) as s:
            return repos.hold_fleet_lease(s, "loop", owner, seconds)

    assert hold("a", 0.5) and hold("a", 0.5)  # taken, then renewed by its holder
    assert not hold("b", 0.5)  # held by a
    time.sleep(0.6)
    assert hold("b", 30) and not hold("a", 30)  # a's lease ran out: b took it


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_the_feedback_loop_migration_goes_down_and_up_again(tmp_path: Path, backend: str) -> None:
    """0003 has a downgrade: head -> 0002 -> head, on SQLite and on a fresh PostgreSQL database."""
    from alembic import command
    from sqlalchemy import inspect

    from core.db.session import _alembic_config, current_revision, make_engine, upgrade
    from tests.platform.services import postgres_database

    with postgres_database() as pg:
        url = f"sqlite:///{tmp_path / 'db.sqlite'}" if backend == "sqlite" else pg
        upgrade(url)
        engine = make_engine(url)
        assert {"model_names", "predictions", "feedback", "webhooks"} <= set(inspect(engine).get_table_names())
        engine.dispose()
        command.downgrade(_alembic_config(url), "0002")
        engine = make_engine(url)
        assert current_revision(engine) == "0002" and "predictions" not in inspect(engine).get_table_names()
        assert "settings" not in {c["name"] for c in inspect(engine).get_columns("projects")}
        engine.dispose()
        upgrade(url)
        engine = make_engine(url)
        assert "feedback" in inspect(engine).get_table_names()
        engine.dispose()


def test_a_huge_mask_for_a_small_image_is_refused_before_it_is_decoded() -> None:
    bomb = io.BytesIO()
    Image.new("1", (8000, 5000)).save(bomb, format="PNG")  # a few KB of PNG, 40 Mpx of pixels
    # Cut off its pixel data: only a check made before decoding can still say what is wrong with its size.
    body = {"mask": bomb.getvalue()[:200]}
    with pytest.raises(DataError, match="mask: it is 8000x5000, the image is 10x10"):
        get_task("segmentation").correction(body, MANIFEST, (10, 10))


def test_a_webhook_url_httpx_cannot_send_is_a_refusal_not_a_crash() -> None:
    import asyncio

    from api.errors import Problem
    from api.services.urlfetch import post_json
    from core.config import Settings

    settings = Settings(url_fetch_allow_hosts=["127.0.0.1"], url_fetch_timeout_seconds=2)
    with pytest.raises(Problem, match="could not reach the URL"):
        asyncio.run(post_json("http://127.0.0.1:9/\x01", b"{}", {}, settings))


def test_one_worker_of_the_fleet_reaps_at_a_time(tmp_path: Path) -> None:
    """Every worker runs the reaper loop; only the holder of the fleet's reaper lease reaps."""
    from core.config import Settings
    from core.db.session import make_engine, make_sessionmaker, upgrade
    from worker.execute import Runtime, reap_if_holder

    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    upgrade(url)
    settings = Settings(data_dir=tmp_path, database_url=url, reaper_interval_seconds=0.2)
    sessions = make_sessionmaker(make_engine(url))
    a, b = (Runtime(settings, sessions, LocalStore(tmp_path / "objects"), owner) for owner in ("a", "b"))
    sent: list[str] = []
    assert reap_if_holder(a, lambda job_id, queue: sent.append(job_id)) == []  # a holds it and reaps
    assert reap_if_holder(b, lambda job_id, queue: sent.append(job_id)) is None  # b does not
    assert reap_if_holder(a, lambda job_id, queue: sent.append(job_id)) == []  # a renews
    import time

    time.sleep(0.7)  # a is gone for three intervals: b takes over
    assert reap_if_holder(b, lambda job_id, queue: sent.append(job_id)) == []


def test_a_retrain_starts_from_how_its_champion_last_trained() -> None:
    """The course's rule for new data: unfrozen, the champion's last-stage rates x1.5 (spread kept), its epochs + 2;
    a frozen last stage (a stage-1 champion) is spread as fine_tune's stage 2 would be; nothing recorded: the old
    defaults, saying so."""
    from core.jobs.rates import RETRAIN_FALLBACK, retrain_defaults

    fields, how = retrain_defaults({"low": 1e-5, "high": 1e-3, "epochs": 4, "frozen": False})
    assert fields == {"freeze_epochs": 0, "epochs": 6, "lr": [pytest.approx(1.5e-5), pytest.approx(1.5e-3)]}
    assert "x1.5" in how and "4 epochs" in how
    frozen, _ = retrain_defaults({"low": 3e-4, "high": 3e-3, "epochs": 2, "frozen": True})
    assert frozen["lr"] == [pytest.approx(1.5 * 3e-3 / 2 / 100), pytest.approx(1.5 * 3e-3 / 2)]
    assert retrain_defaults(None) == (
        RETRAIN_FALLBACK,
        "fallback: the champion did not record how its last stage trained",
    )


def test_a_tie_goes_to_the_challenger_only_when_it_learnt_from_newer_data() -> None:
    """A retrain on a corrected version that is 1 item short is a tie it wins; stage 2 after stage 1 on the same
    data, 1 item short, has nothing new to break the tie with and is refused."""
    champion = paired_scores(hits(26, 40), hits(30, 40))
    short = paired_scores(hits(26, 40), hits(29, 40))
    assert decide(short, champion, Policy(), newer_data=True).promote
    same = decide(short, champion, Policy(), newer_data=False)
    assert not same.promote and "it learnt from the same data" in same.reason
    assert decide(paired_scores(hits(26, 40), hits(31, 40)), champion, Policy(), newer_data=False).promote
