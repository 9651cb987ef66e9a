"""The predict answer as the REST API declares it: one schema per task, made from the task's answer_fields and
told apart by `task`; a prediction carries its files (a mask's PNG) as bytes and only public() encodes them;
a mask sent as JSON is decoded once, by the request's schema."""

from __future__ import annotations

import base64
import io
from pathlib import Path
from typing import Any

import numpy as np
import openapi_spec_validator
import pytest
from PIL import Image
from pydantic import TypeAdapter, ValidationError

from api.schemas import ANSWERS, BatchPredictions, FeedbackCreate, FileError, PredictResponse, answer_of, file_answer_of
from core.engine.tasks import TASKS, Prediction
from core.engine.tasks.classification import ClassPrediction
from core.engine.tasks.multilabel import MultiLabelPrediction
from core.engine.tasks.points import PointsPrediction
from core.engine.tasks.segmentation import MaskPrediction
from core.engine.tasks.values import ValuesPrediction

MASK = np.array([[0, 1], [2, 1]], dtype=np.uint8)
SAMPLES: dict[str, Prediction] = {
    "classification": ClassPrediction("cat", 0, [0.7, 0.3], ["cat", "dog"]),
    "multilabel": MultiLabelPrediction("cat", 0, [0.7, 0.3], ["cat", "dog"], ["cat"], [0.5, 0.5]),
    "points": PointsPrediction([[1.5, 2.0], [3.0, 4.25]]),
    "values": ValuesPrediction([0.25, 12.0]),
    "segmentation": MaskPrediction(Image.fromarray(MASK), {"a": 0.25, "b": 0.5, "c": 0.25}),
}


def png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def test_every_task_answers_the_fields_it_declares() -> None:
    assert set(SAMPLES) == set(TASKS) == set(ANSWERS)
    for name, p in SAMPLES.items():
        answer = p.answer()
        assert list(answer) == list(TASKS[name].answer_fields), name
        files = {k for k, v in answer.items() if isinstance(v, bytes)}
        assert files == set(TASKS[name].file_fields()), name


def test_a_mask_is_bytes_until_public_encodes_it() -> None:
    p = SAMPLES["segmentation"]
    answer = p.answer()
    assert answer["mask"] == png(MASK)
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(answer["mask"]))), MASK)
    assert p.public() == {"mask": base64.b64encode(png(MASK)).decode(), "shares": answer["shares"]}


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_the_rest_answer_is_public_with_its_task_and_id(name: str) -> None:
    public = SAMPLES[name].public()
    made = answer_of(name, public, "p1")
    assert type(made) is ANSWERS[name]
    json_answer = made.model_dump(mode="json", exclude_none=True)  # as the predict routes send it
    assert json_answer == TypeAdapter(Any).dump_python({"task": name, **public, "prediction_id": "p1"}, mode="json")
    # A client reads it back by its task alone.
    assert type(TypeAdapter(PredictResponse).validate_python(json_answer)) is ANSWERS[name]


def test_a_batch_holds_answers_and_errors_by_file() -> None:
    one = answer_of("points", SAMPLES["points"].public(), "p1")
    batch = BatchPredictions(results=[file_answer_of(one, "a.png"), FileError(filename="b.png", error="unreadable")])
    data = batch.model_dump(mode="json")
    assert data["results"][0] == {"task": "points", "points": [[1.5, 2.0], [3.0, 4.25]], "prediction_id": "p1"} | {
        "filename": "a.png"
    }
    assert data["results"][1] == {"filename": "b.png", "error": "unreadable"}
    back = TypeAdapter(PredictResponse).validate_python(data)
    assert isinstance(back, BatchPredictions) and isinstance(back.results[1], FileError)


def test_an_answer_outside_its_schema_is_refused() -> None:
    with pytest.raises(ValidationError):
        answer_of("values", {"values": [1.0], "mask": "x"}, "p1")
    with pytest.raises(ValidationError):
        answer_of("values", {"points": [[1.0, 2.0]]}, "p1")


def test_a_mask_from_json_is_decoded_once_by_its_schema() -> None:
    body = FeedbackCreate.model_validate_json(f'{{"mask": "{base64.b64encode(png(MASK)).decode()}"}}')
    assert body.mask == png(MASK)
    for bad in ('{"mask": "not base64!"}', '{"mask": 3}'):
        with pytest.raises(ValidationError, match="mask"):
            FeedbackCreate.model_validate_json(bad)
    made = TASKS["segmentation"].correction(
        body.model_dump(exclude_none=True, exclude={"new_class"}),
        {"classes": ["b", "c"], "codes": ["a", "b", "c"]},
        (2, 2),
    )
    assert made.mask_png is not None and np.array_equal(np.asarray(Image.open(io.BytesIO(made.mask_png))), MASK)


def test_the_openapi_document_names_one_answer_per_task(tmp_path: Path) -> None:
    from api.main import create_app
    from core.config import Settings

    doc = create_app(Settings(data_dir=tmp_path)).openapi()
    schemas = doc["components"]["schemas"]
    for route in ("/models/{model_id}/predict", "/registry/{name}/predict", "/models/{model_id}/predict-url"):
        [path] = [p for p in doc["paths"] if p.endswith(route)]
        answer = doc["paths"][path]["post"]["responses"]["200"]["content"]["application/json"]["schema"]
        one = next((s for s in answer.get("anyOf", []) if "oneOf" in s), answer)
        assert one["discriminator"]["propertyName"] == "task"
        assert one["discriminator"]["mapping"] == {
            name: f"#/components/schemas/{ANSWERS[name].__name__}" for name in TASKS
        }
    for name, schema in ANSWERS.items():
        declared = schemas[schema.__name__]
        assert declared["properties"]["task"]["const"] == name
        assert set(declared["required"]) == {"task", "prediction_id", *TASKS[name].answer_fields}
        for file in TASKS[name].file_fields():
            assert declared["properties"][file]["contentEncoding"] == "base64"
    openapi_spec_validator.validate(doc)  # the whole document, as a generated client reads it
