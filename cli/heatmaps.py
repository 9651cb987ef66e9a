"""Where `--explain DIR` writes each image with its heatmap over it (local `fitcycle predict` and the client verbs
alike): DIR/<name>.heatmap.png, a second image of the same name getting -2, -3, ... rather than overwriting it."""

from __future__ import annotations

from pathlib import Path


def explain_folder(folder: Path) -> Path:
    """The folder, made; a file there (an image taken for the folder: `--explain x.jpg`) is refused."""
    if folder.exists() and not folder.is_dir():
        raise SystemExit(f"error: --explain {folder}: that is a file; give a folder, or put --explain after the images")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def overlay_path(folder: Path, image: Path, used: set[Path]) -> Path:
    """DIR/<stem>.heatmap.png, not one this run already wrote."""
    dest, n = folder / f"{image.stem}.heatmap.png", 1
    while dest in used:
        n += 1
        dest = folder / f"{image.stem}-{n}.heatmap.png"
    used.add(dest)
    return dest
