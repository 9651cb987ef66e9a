"""A client generated from the API's own OpenAPI document by openapi-python-client (offline, from the document
the app builds) drives the course's flow against the running stack: upload a dataset, queue a fine-tune, wait for
it, predict an image, and read the three answers that are files — the model's bundle, a dataset's show_batch and
the image a prediction kept. Errors come back as the document's Problem."""

from __future__ import annotations

import importlib
import io
import json
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest

from api.main import create_app
from core.config import Settings
from tests.platform.services import BIN, wait_for
from tests.platform.stack import Stack

PACKAGE = "fitcycle_client"
# openapi-python-client reads JSON, text and application/octet-stream; the API's other binary media types are
# bytes too (their schema says so: a binary string), so the generator is told to read them as such.
CONFIG = {
    "package_name_override": PACKAGE,
    "post_hooks": [],
    "content_type_overrides": {
        t: "application/octet-stream" for t in ("image/png", "image/jpeg", "image/webp", "application/zip")
    },
}
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def client_package(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ModuleType]:
    tmp = tmp_path_factory.mktemp("client")
    doc = create_app(Settings(data_dir=tmp / "data")).openapi()
    (tmp / "openapi.json").write_text(json.dumps(doc))
    (tmp / "config.json").write_text(json.dumps(CONFIG))
    res = subprocess.run(
        [
            str(BIN / "openapi-python-client"),
            "generate",
            "--path",
            str(tmp / "openapi.json"),
            "--meta",
            "none",
            "--output-path",
            str(tmp / PACKAGE),
            "--config",
            str(tmp / "config.json"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    out = res.stdout + res.stderr
    assert res.returncode == 0, out
    assert "warning" not in out.lower(), out  # every operation and every response made it into the client
    sys.path.insert(0, str(tmp))
    try:
        yield importlib.import_module(PACKAGE)
    finally:
        sys.path.remove(str(tmp))
        for name in [m for m in sys.modules if m == PACKAGE or m.startswith(PACKAGE + ".")]:
            del sys.modules[name]


def operation(tag: str, name: str) -> Any:
    """A generated operation module, e.g. operation("jobs", "create_job_api_v1_jobs_post")."""
    return importlib.import_module(f"{PACKAGE}.api.{tag}.{name}")


def model(name: str) -> Any:
    return getattr(importlib.import_module(f"{PACKAGE}.models"), name)


def test_a_generated_client_drives_the_course_flow(client_package: ModuleType, stack: Stack, fashion_zip: Path) -> None:
    types = importlib.import_module(f"{PACKAGE}.types")
    client = client_package.AuthenticatedClient(
        base_url=stack.a.base.removesuffix("/api/v1"), token=stack.a.key, timeout=httpx.Timeout(120)
    )
    problem = model("Problem")

    with fashion_zip.open("rb") as f:
        body = model("BodyUploadDatasetApiV1DatasetsPost")(
            name="generated-client", archive=types.File(payload=f, file_name=fashion_zip.name)
        )
        uploaded = operation("datasets", "upload_dataset_api_v1_datasets_post").sync_detailed(client=client, body=body)
    assert uploaded.status_code == 201, uploaded.content
    dataset = uploaded.parsed
    assert isinstance(dataset, model("DatasetPublic")) and len(dataset.classes) == 4

    job_body = model("JobCreate").from_dict(
        {
            "kind": "fine_tune",
            "dataset_id": dataset.id,
            "arch": "resnet18",
            "pretrained": "none",
            "size": 32,
            "bs": 8,
            "freeze_epochs": 0,
            "epochs": 1,
        }
    )
    queued = operation("jobs", "create_job_api_v1_jobs_post").sync_detailed(client=client, body=job_body)
    assert queued.status_code == 202, queued.content
    get_job = operation("jobs", "get_job_api_v1_jobs_job_id_get")
    job = wait_for(
        lambda: (j := get_job.sync(job_id=queued.parsed.id, client=client)).state in ("succeeded", "failed") and j,
        600,
        "the job to finish",
        interval=0.5,
    )
    assert job.state == "succeeded", job.error
    assert isinstance(job.model_id, str)

    with zipfile.ZipFile(fashion_zip) as archive:
        image = archive.read(next(n for n in archive.namelist() if n.startswith("bag/") and n.endswith(".png")))
    predict_body = model("BodyPredictApiV1ModelsModelIdPredictPost")(
        file=[types.File(payload=io.BytesIO(image), file_name="bag.png", mime_type="image/png")]
    )
    answered = operation("models", "predict_api_v1_models_model_id_predict_post").sync_detailed(
        model_id=job.model_id, client=client, body=predict_body
    )
    assert answered.status_code == 200, answered.content
    answer = answered.parsed
    assert isinstance(answer, model("ClassificationAnswer")) and answer.top[0] in dataset.classes

    bundle = operation("models", "download_bundle_api_v1_models_model_id_bundle_get").sync(
        model_id=job.model_id, client=client
    )
    assert isinstance(bundle, types.File)
    names = zipfile.ZipFile(bundle.payload).namelist()
    assert "manifest.json" in names and "weights.safetensors" in names

    batch = operation("datasets", "show_batch_api_v1_datasets_dataset_id_show_batch_get").sync(
        dataset_id=dataset.id, client=client, size=32
    )
    assert isinstance(batch, types.File) and batch.payload.read().startswith(PNG)

    kept = operation("feedback", "prediction_image_api_v1_predictions_prediction_id_image_get").sync(
        prediction_id=answer.prediction_id, client=client
    )
    assert isinstance(kept, types.File) and kept.payload.read() == image

    # An error is the document's Problem, parsed; a too-large offset is a 422 that names the field.
    missing = get_job.sync(job_id="no-such-job", client=client)
    assert isinstance(missing, problem) and missing.status == 404
    refused = operation("jobs", "list_jobs_api_v1_jobs_get").sync(client=client, offset=2**63)
    assert isinstance(refused, problem) and refused.status == 422 and "offset" in refused.detail
