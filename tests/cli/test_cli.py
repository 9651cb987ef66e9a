"""The `fitcycle` command end to end, in real subprocesses, on real images."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

FITCYCLE = str(Path(sys.executable).parent / "fitcycle")


def run(*args: str | Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [FITCYCLE, *map(str, args)],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, **(env or {})},
    )


@pytest.fixture(scope="module")
def scratch_run(fashion_folder: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("cli") / "scratch"
    res = run(
        "train",
        fashion_folder,
        "--from-folder",
        "--arch",
        "resnet18",
        "--pretrained",
        "none",
        "--size",
        "32",
        "--bs",
        "16",
        "--freeze-epochs",
        "0",
        "--epochs",
        "3",
        "--lr",
        "5e-3",
        "--valid-pct",
        "0.25",
        "--seed",
        "1",
        "--out",
        out,
    )
    assert res.returncode == 0, res.stderr
    assert "loss=" in res.stderr and "error_rate" in res.stderr  # the progress bar and the epoch table
    return out


def test_train_writes_metrics_bundle_plots_and_checkpoints(scratch_run: Path) -> None:
    metrics = json.loads((scratch_run / "metrics.json").read_text())
    # 4 classes: chance is 0.75. Three epochs from scratch are noisy: seeds 1-4 ended between 0.32 and 0.58.
    assert 0 <= metrics["error_rate"] < 0.65
    assert len(metrics["epochs"]) == 3 and metrics["pretrained"] == "random init"
    assert metrics["lrs"]["train"] == [5e-3] * 3  # from scratch: one rate for every group
    assert (scratch_run / "export" / "manifest.json").is_file()
    assert not (scratch_run / "checkpoints" / "last.pt").exists()  # shorter than --checkpoint-seconds: none
    for png in ["losses", "confusion_matrix", "top_losses", "show_batch"]:
        assert (scratch_run / "plots" / f"{png}.png").is_file()


def test_ctrl_c_stops_with_a_checkpoint_and_resume_goes_on(fashion_folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "stopped"
    args = [FITCYCLE, "train", str(fashion_folder), "--from-folder", "--arch", "resnet18", "--pretrained", "none"]
    args += ["--size", "32", "--bs", "16", "--freeze-epochs", "0", "--epochs", "5", "--lr", "5e-3"]
    args += ["--valid-pct", "0.25", "--seed", "1", "--out", str(out)]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while not (out / "epochs.jsonl").exists():  # the first epoch ended
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr and proc.stderr.read()
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 130, stderr
    assert "--resume" in stdout and "Traceback" not in stderr
    assert (out / "checkpoints" / "last.pt").is_file()  # written at the stop, not by the (300 s) time policy
    done = len((out / "epochs.jsonl").read_text().splitlines())
    assert 1 <= done < 5

    res = run(*args[1:], "--resume")
    assert res.returncode == 0, res.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    assert [e["epoch"] for e in metrics["epochs"]] == [0, 1, 2, 3, 4]


def test_predict_json_lines(scratch_run: Path, fashion_folder: Path) -> None:
    images = [fashion_folder / "bag" / "0000.png", fashion_folder / "trouser" / "0001.png"]
    res = run("predict", scratch_run / "export", *images, "--json")
    assert res.returncode == 0, res.stderr
    lines = [json.loads(line) for line in res.stdout.splitlines()]
    assert [line["path"] for line in lines] == [str(p) for p in images]
    for line in lines:
        # The REST API's answer: every class ranked, the most probable first.
        assert set(line) == {"path", "top", "predictions"} and len(line["predictions"]) == 4
        assert line["top"] == line["predictions"][0] and {c for c, _ in line["predictions"]} == {
            "bag",
            "dress",
            "sneaker",
            "trouser",
        }
        assert sum(p for _, p in line["predictions"]) == pytest.approx(1.0, abs=1e-5)


def test_fine_tune_from_a_bundle_with_lr_find_over_a_csv(scratch_run: Path, fashion_csv: Path, tmp_path: Path) -> None:
    out = tmp_path / "tuned"
    res = run(
        "train",
        fashion_csv,
        "--from-csv",
        "labels.csv",
        "--arch",
        "resnet18",
        "--pretrained",
        scratch_run / "export",
        "--size",
        "32",
        "--bs",
        "16",
        "--freeze-epochs",
        "1",
        "--epochs",
        "1",
        "--lr",
        "find",
        "--out",
        out,
    )
    assert res.returncode == 0, res.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    suggested = json.loads((out / "lr_find.json").read_text())["suggestions"]["valley"]
    assert metrics["lrs"]["base_lr"] == pytest.approx(suggested)
    stage2 = metrics["lrs"]["stage2"]
    assert stage2[-1] == pytest.approx(suggested / 2) and stage2[0] == pytest.approx(suggested / 200)
    assert [e["tag"] for e in metrics["epochs"]] == ["stage1", "stage2"]
    assert metrics["pretrained"].startswith("fitcycle bundle")
    assert (out / "plots" / "lr_find.png").is_file()


def test_lr_find_verb_prints_suggestions(fashion_names: Path, tmp_path: Path) -> None:
    res = run(
        "lr-find",
        fashion_names,
        "--from-name-re",
        r"^([a-z_]+)_\d+\.png$",
        "--arch",
        "resnet18",
        "--pretrained",
        "none",
        "--size",
        "32",
        "--bs",
        "8",
        "--out",
        tmp_path,
    )
    assert res.returncode == 0, res.stderr
    assert all(name in res.stdout for name in ["valley", "steep", "minimum", "slide"])
    assert (tmp_path / "plots" / "lr_find.png").is_file()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--arch", "vgg99"], "arch: Value error, unknown architecture 'vgg99'"),
        (["--lr", "-1"], "lr: Value error, learning rate must be in (0, 10)"),
        (["--pretrained", "imagenet"], "no ImageNet weights for resnet18 on this machine; tried:"),
        (["--pretrained", "imagenet"], "on the command line: --pretrained PATH, --pretrained none"),
        (["--pretrained", "/nowhere/weights.pt"], "pretrained weights '/nowhere/weights.pt' not found"),
    ],
)
def test_bad_input_is_a_clear_error(fashion_folder: Path, tmp_path: Path, args: list[str], message: str) -> None:
    base = {"--arch": "resnet18", "--pretrained": "none", "--lr": "1e-3"}
    base.update(dict(zip(args[::2], args[1::2], strict=True)))
    flat = [x for kv in base.items() for x in kv]
    res = run(
        "train",
        fashion_folder,
        *flat,
        "--size",
        "32",
        "--epochs",
        "1",
        "--out",
        tmp_path / "o",
        env={"TORCH_HOME": str(tmp_path / "empty_torch_home")},
    )
    assert res.returncode == 2
    assert message in res.stderr
    assert "Traceback" not in res.stderr


def test_predict_refuses_a_folder_that_is_not_a_bundle(tmp_path: Path) -> None:
    res = run("predict", tmp_path, "x.png")
    assert res.returncode == 2 and "no manifest.json" in res.stderr


def test_a_reader_that_leaves_early_gets_no_traceback(tmp_path: Path) -> None:
    """`fitcycle ... | head`: the pipe closes before fitcycle writes; it ends as a piped command does (141), with
    nothing on stderr about BrokenPipeError."""
    proc = subprocess.Popen(
        [FITCYCLE, "sample-data", "digits", str(tmp_path / "d"), "--per-class", "1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    proc.stdout.close()  # long before the command has imported anything, let alone printed
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 141 and "Traceback" not in err and "BrokenPipe" not in err, err


def test_a_labels_file_outside_the_image_folder_is_read_like_fastais_from_csv(
    fashion_csv: Path, tmp_path: Path
) -> None:
    """Kaggle's layout (train.csv beside train/): `fitcycle train train --from-csv train.csv`."""
    from cli.main import build_parser, train_spec
    from core.jobs.training import label_items

    outside = tmp_path / "train.csv"
    outside.write_text((fashion_csv / "labels.csv").read_text())
    spec = train_spec(build_parser().parse_args(["train", str(fashion_csv), "--from-csv", str(outside)]))
    assert spec.csv is not None and Path(spec.data, spec.csv).resolve() == outside.resolve()
    assert Path(spec.data, spec.images_dir or ".").resolve() == fashion_csv.resolve()
    items = label_items(spec)
    assert len(items) == 80 and sorted(items.classes) == sorted(["trouser", "bag", "sneaker", "dress"])
    inside = train_spec(build_parser().parse_args(["train", str(fashion_csv), "--from-csv", "labels.csv"]))
    assert (inside.data, inside.csv, inside.images_dir) == (str(fashion_csv), "labels.csv", None)
