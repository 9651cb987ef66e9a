"""Predictions as the CLI prints them, local (`fitcycle predict`) and remote (`fitcycle models predict`):
the answer's JSON (prediction.public(), the REST API's shape), with a segmentation mask written to a PNG
file and its path in the line instead of the base64 image."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any


def write_mask(mask_dir: Path, image: Path, png: bytes) -> Path:
    """A predicted mask as MASK_DIR/<image stem>.mask.png."""
    out = mask_dir / f"{image.stem}.mask.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(png)
    return out


def with_files(answer: dict[str, Any], image: Path, mask_dir: Path) -> dict[str, Any]:
    """The answer with any image in it (a mask) written to a file and replaced by the file's path."""
    if isinstance(answer.get("mask"), str):
        return answer | {"mask": str(write_mask(mask_dir, image, base64.b64decode(answer["mask"])))}
    return answer
