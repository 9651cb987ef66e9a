"""Predictions as the CLI prints them, local (`fitcycle predict`) and remote (`fitcycle models predict`):
the answer's fields (the REST API's shape), with each file in it (a segmentation mask) written to a PNG file
and its path in the line instead of the image."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any


def write_file(out_dir: Path, image: Path, name: str, png: bytes) -> Path:
    """A file of an image's answer (its mask) as OUT_DIR/<image stem>.<name>.png."""
    out = out_dir / f"{image.stem}.{name}.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(png)
    return out


def with_files(answer: dict[str, Any], image: Path, mask_dir: Path) -> dict[str, Any]:
    """The answer with each file in it written to a file and replaced by the file's path. A file is bytes in a
    prediction's answer(); in a REST answer (JSON) the mask is base64 text, decoded here, at that edge."""
    if isinstance(answer.get("mask"), str):
        answer = answer | {"mask": base64.b64decode(answer["mask"])}
    return {k: str(write_file(mask_dir, image, k, v)) if isinstance(v, bytes) else v for k, v in answer.items()}
