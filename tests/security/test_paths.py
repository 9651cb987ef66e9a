"""No request reads outside its dataset, and no template, regex or table makes the server work without end.
Each answer is a 4xx naming the field, quoting no file and no secret, and the project is left as it was."""

from __future__ import annotations

import io
import tarfile
import time
from pathlib import Path

import pytest

from tests.platform.stack import Stack
from tests.security.attacks import good_members, png_bytes, png_claiming, write_zip
from tests.security.conftest import Victim, rss_bytes


def secrets_of(stack: Stack) -> list[str]:
    """Strings no answer may contain: the S3 secret, the database URL, and lines of server files."""
    return [stack.s3.secret_key, stack.env["FITCYCLE_DATABASE_URL"], "root:x:0:0", "FITCYCLE_S3_SECRET_KEY"]


def assert_refused(stack: Stack, res: object, field: str, status: int = 422) -> None:
    text = res.text  # type: ignore[attr-defined]
    assert res.status_code == status, text  # type: ignore[attr-defined]
    assert res.headers["content-type"] == "application/problem+json"  # type: ignore[attr-defined]
    assert field in res.json()["detail"], text  # type: ignore[attr-defined]
    for secret in secrets_of(stack):
        assert secret not in text


MASKS = {
    **{f"images/{i}.png": png_bytes(value=30 * i) for i in range(6)},
    **{f"masks/{i}.png": png_bytes(value=i % 2) for i in range(6)},
    "codes.txt": b"background\nthing\n",
}


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"labels": "values", "csv": "/proc/self/environ"}, "csv"),
        ({"labels": "points", "csv": "/proc/self/environ"}, "csv"),
        ({"labels": "csv", "csv": "/etc/passwd"}, "csv"),
        ({"labels": "csv", "csv": "../../../../etc/passwd"}, "csv"),
        ({"labels": "values", "csv": "../../../../proc/self/environ.json"}, "csv"),
        ({"labels": "masks", "csv": "/etc/passwd"}, "csv"),
        ({"labels": "masks", "images_dir": "/etc"}, "images_dir"),
        ({"labels": "masks", "images_dir": "../../../../etc"}, "images_dir"),
        ({"labels": "masks", "mask_template": "{stem:😀>100000000}"}, "mask_template"),
        ({"labels": "masks", "mask_template": "{stem.__class__}"}, "mask_template"),
        ({"labels": "masks", "mask_template": "../../../../etc/{name}"}, "mask"),
        ({"labels": "name_re", "pattern": "^(a|a)*$"}, "pattern"),
        ({"labels": "name_re", "pattern": "(" * 600}, "pattern"),
    ],
)
def test_request_named_paths_stay_inside_the_dataset(
    stack: Stack, unchanged: Victim, tmp_path: Path, fields: dict[str, str], field: str
) -> None:
    members = MASKS if fields["labels"] == "masks" else good_members()
    if fields["labels"] == "name_re":  # names that make a nested repetition backtrack without end
        members = {f"{'a' * 28}{i}!.png": png_bytes(value=i) for i in range(4)}
    before = rss_bytes(stack.api.proc.pid)
    start = time.monotonic()
    res = unchanged.client.upload("pets", write_zip(tmp_path / "a.zip", members), **fields)
    assert time.monotonic() - start < 10
    assert_refused(stack, res, field)
    assert rss_bytes(stack.api.proc.pid) - before < 50 * 1024**2


def tar_with(name: str, data: bytes, pax: bool = False) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz", format=tarfile.PAX_FORMAT) as tf:
        for member, content in good_members().items():
            info = tarfile.TarInfo(member)
            info.size = len(content)
            tf.addfile(info, io.BytesIO(content))
        info = tarfile.TarInfo("cats/x.png")
        if pax:
            info.pax_headers = {"path": name}
        else:
            info.name = name
        info.size = len(data)
        tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def nul_in_tar_name(p: Path) -> Path:
    (p / "a.tar.gz").write_bytes(tar_with("cats/a\x00b.png", png_bytes(), pax=True))
    return p / "a.tar.gz"


def long_tar_header(p: Path) -> Path:
    """A GNU long-name header of 1 MB: tarfile would read all of it into memory before any cap."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz", format=tarfile.GNU_FORMAT) as tf:
        info = tarfile.TarInfo("cats/" + "x" * 1024**2 + ".png")
        info.size = 3
        tf.addfile(info, io.BytesIO(b"abc"))
    (p / "a.tar.gz").write_bytes(buf.getvalue())
    return p / "a.tar.gz"


def latin1_csv(p: Path) -> Path:
    rows = "name,label\ncats/0.png,\xe9t\xe9\n".encode("latin-1")
    return write_zip(p / "a.zip", {**good_members(), "labels.csv": rows})


def huge_field_csv(p: Path) -> Path:
    rows = b"name,label\ncats/0.png," + b"x" * 200_000 + b"\n"
    return write_zip(p / "a.zip", {**good_members(), "labels.csv": rows})


def deep_json(p: Path) -> Path:
    return write_zip(p / "a.zip", {**good_members(), "t.json": b"[" * 100_000})


@pytest.mark.parametrize(
    ("make", "fields", "message"),
    [
        (nul_in_tar_name, {}, "control character"),
        (long_tar_header, {}, "extended tar header of 1,048,"),
        (latin1_csv, {"labels": "csv", "csv": "labels.csv"}, "not UTF-8"),
        (huge_field_csv, {"labels": "csv", "csv": "labels.csv"}, "field larger than field limit"),
        (deep_json, {"labels": "values", "csv": "t.json"}, "not valid JSON"),
    ],
)
def test_malformed_tables_and_names_are_4xx_not_500(
    stack: Stack, unchanged: Victim, tmp_path: Path, make: object, fields: dict[str, str], message: str
) -> None:
    res = unchanged.client.upload("pets", make(tmp_path), **fields)  # type: ignore[operator]
    assert res.status_code == 422, res.text
    assert message in res.json()["detail"]


def test_a_mask_that_claims_400_megapixels_is_rejected_with_a_reason(
    stack: Stack, victim: Victim, tmp_path: Path
) -> None:
    members = {**MASKS, "masks/0.png": png_claiming(20000, 20000)}
    res = victim.client.upload("bomb-masks", write_zip(tmp_path / "m.zip", members), labels="masks")
    assert res.status_code == 201, res.text
    rejected = {r["key"]: r["reason"] for r in res.json()["rejected"]}
    assert "pixel limit" in rejected["images/0.png"]


def test_a_table_naming_one_file_thousands_of_times_costs_one_check(victim: Victim, tmp_path: Path) -> None:
    members = good_members()
    rows = ["name,label", *(f"{k},{k.split('/')[0]}" for k in members), *(["cats/0.png,cats"] * 5000)]
    members["labels.csv"] = "\n".join(rows).encode()
    start = time.monotonic()
    res = victim.client.upload("dupes", write_zip(tmp_path / "d.zip", members), labels="csv", csv="labels.csv")
    assert res.status_code == 201, res.text
    body = res.json()
    assert body["n_items"] == 12 and time.monotonic() - start < 20
    assert len(body["rejected"]) == 1001 and "listed on an earlier row" in body["rejected"][0]["reason"]
    assert body["rejected"][-1] == {"key": "...", "reason": "4,000 more files rejected"}
