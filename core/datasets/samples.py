"""Real image datasets that install with the project or the OS, written out as image files: Fashion-MNIST
(Debian's dataset-fashion-mnist), Animal-MNIST silhouettes (PyPI's animal-mnist) and scikit-learn's
digits. Nothing is downloaded. Animal-MNIST ships pickles; we never unpickle them: the array bytes are
read from the pickle's opcodes with pickletools, which parses without executing anything."""

from __future__ import annotations

import csv
import gzip
import pickletools
import struct
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image

FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_CLASSES = [
    "tshirt",
    "trouser",
    "pullover",
    "dress",
    "coat",
    "sandal",
    "shirt",
    "sneaker",
    "bag",
    "ankle_boot",
]
ANIMAL_CLASSES = ["bear", "bird", "cat", "cow", "dog", "elephant", "giraffe", "horse", "sheep", "zebra"]
DIGIT_CLASSES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
Layout = Literal["folder", "csv", "name_re"]
SAMPLES = ("fashion-mnist", "animal-mnist", "digits")


def _read_idx(path: Path) -> np.ndarray:
    """An IDX file (MNIST's format) as a numpy array."""
    with gzip.open(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    dims = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def load_fashion_mnist() -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Fashion-MNIST's 60,000 training images (28x28 uint8), labels and class names."""
    images = FASHION_DIR / "train-images-idx3-ubyte.gz"
    if not images.is_file():
        raise FileNotFoundError(f"{images} not found: install Debian's package dataset-fashion-mnist")
    return _read_idx(images), _read_idx(FASHION_DIR / "train-labels-idx1-ubyte.gz"), FASHION_CLASSES


def _pickled_ndarray(path: Path) -> np.ndarray:
    """The ndarray inside a numpy pickle, from its opcodes alone (no object is ever constructed)."""
    with gzip.open(path, "rb") as f:
        data = f.read()
    ints: list[int] = []
    dtype: str | None = None
    payload = b""
    for op, arg, _ in pickletools.genops(data):
        if op.name.startswith("BININT") and isinstance(arg, int):
            ints.append(arg)
        elif op.name in ("SHORT_BINUNICODE", "BINUNICODE") and arg in ("u1", "i8", "f4", "f8", "i4"):
            dtype = arg
        elif isinstance(arg, bytes) and len(arg) > len(payload):
            payload = arg
    if dtype is None:
        raise ValueError(f"{path}: no numpy dtype found in the pickle")
    # The shape tuple sits between the reconstruct arguments: BININT1 1 (version), then dims.
    itemsize = np.dtype(dtype).itemsize
    n = len(payload) // itemsize
    shape = [d for d in ints[2:] if d > 0]
    while shape and int(np.prod(shape)) != n:
        shape.pop()
    return np.frombuffer(payload, dtype=dtype).reshape(shape or [n]).copy()


def load_animal_mnist() -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Animal-MNIST's 10,000 silhouettes (28x28 uint8), labels and class names."""
    import animal_mnist

    folder = Path(animal_mnist.__file__).parent / "data" / "Animal_MNIST"
    x = _pickled_ndarray(folder / "animal_data_version_3.gz").reshape(-1, 28, 28)
    y = _pickled_ndarray(folder / "animal_label_version_3.gz").astype(np.int64)
    return x, y, ANIMAL_CLASSES


def load_digits() -> tuple[np.ndarray, np.ndarray, list[str]]:
    """scikit-learn's 1,797 8x8 digits, scaled to uint8."""
    from sklearn.datasets import load_digits as sk_digits

    d = sk_digits()
    return (d.images * (255 / 16)).round().astype(np.uint8), d.target.astype(np.int64), DIGIT_CLASSES


def load_sample(name: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Images, labels and class names of a named sample dataset."""
    loaders = {"fashion-mnist": load_fashion_mnist, "animal-mnist": load_animal_mnist, "digits": load_digits}
    if name not in loaders:
        raise ValueError(f"unknown sample dataset '{name}'; choose from: {', '.join(SAMPLES)}")
    return loaders[name]()


def pick_per_class(labels: np.ndarray, per_class: int, offset: int = 0) -> np.ndarray:
    """Indices of `per_class` items of each class, from the offset-th item of that class on."""
    picked = [np.flatnonzero(labels == c)[offset : offset + per_class] for c in np.unique(labels)]
    return np.concatenate(picked)


def write_images(
    dest: str | Path,
    images: np.ndarray,
    labels: np.ndarray,
    classes: Sequence[str],
    size: int | None = None,
    layout: Layout = "folder",
) -> Path:
    """Write grayscale arrays as RGB PNGs: class folders, a flat folder + labels.csv, or `label_N.png` names."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    counters: dict[str, int] = {}
    rows: list[tuple[str, str]] = []
    for img, y in zip(images, labels, strict=True):
        label = classes[int(y)]
        n = counters.get(label, 0)
        counters[label] = n + 1
        pil = Image.fromarray(np.asarray(img, dtype=np.uint8)).convert("RGB")
        if size:
            pil = pil.resize((size, size), Image.Resampling.BILINEAR)
        if layout == "folder":
            rel = f"{label}/{n:04d}.png"
        elif layout == "csv":
            rel = f"images/{len(rows):05d}.png"
        else:
            rel = f"{label}_{n:04d}.png"
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        pil.save(dest / rel)
        rows.append((rel, label))
    if layout == "csv":
        with (dest / "labels.csv").open("w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["name", "label"])
            w.writerows(rows)
    return dest


def write_sample(
    name: str,
    dest: str | Path,
    per_class: int = 100,
    size: int | None = None,
    layout: Layout = "folder",
    offset: int = 0,
    classes: Sequence[str] | None = None,
) -> Path:
    """Write `per_class` images of each class (optionally only `classes`) of a sample dataset to dest."""
    x, y, names = load_sample(name)
    idx = pick_per_class(y, per_class, offset)
    if classes is not None:
        unknown = set(classes) - set(names)
        if unknown:
            raise ValueError(f"{name} has no class {sorted(unknown)}; its classes are {names}")
        keep = {names.index(c) for c in classes}
        idx = np.array([i for i in idx if int(y[i]) in keep])
    return write_images(dest, x[idx], y[idx], names, size, layout)


def write_mosaics(
    dest: str | Path,
    count: int = 400,
    classes: Sequence[str] = ("trouser", "bag", "sneaker", "dress"),
    blank: float = 0.35,
    seed: int = 0,
) -> Path:
    """Multi-label data from real images: 2x2 mosaics of Fashion-MNIST tiles (a tile is blank with
    probability `blank`), each labelled by the set of classes it shows; images/ plus labels.csv with a
    space-delimited `tags` column."""
    x, y, names = load_fashion_mnist()
    rng = np.random.default_rng(seed)
    pools = {c: np.flatnonzero(y == names.index(c)) for c in classes}
    dest = Path(dest)
    (dest / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(count):
        tiles, present = [], set()
        for _ in range(4):
            if rng.random() < blank:
                tiles.append(np.zeros((28, 28), dtype=np.uint8))
            else:
                c = classes[int(rng.integers(len(classes)))]
                present.add(c)
                tiles.append(x[rng.choice(pools[c])])
        mosaic = np.block([[tiles[0], tiles[1]], [tiles[2], tiles[3]]])
        name = f"images/{i:05d}.png"
        Image.fromarray(mosaic).convert("RGB").save(dest / name)
        rows.append((name, " ".join(sorted(present))))
    with (dest / "labels.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["name", "tags"])
        w.writerows(rows)
    return dest


def write_silhouette_points(
    dest: str | Path, count: int = 300, width: int = 72, height: int = 60, seed: int = 0
) -> Path:
    """Keypoint data from real images: Animal-MNIST silhouettes pasted at random places and scales on
    scikit-image textures (brick, grass, gravel); targets are the silhouette's centroid and its top point
    in the image's own pixels. images/ plus points.csv (name, centroid_x, centroid_y, top_x, top_y)."""
    from skimage import data as skdata

    shapes, _, _ = load_animal_mnist()
    textures = [np.asarray(Image.fromarray(getattr(skdata, n)()).convert("L")) for n in ("brick", "grass", "gravel")]
    rng = np.random.default_rng(seed)
    dest = Path(dest)
    (dest / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(count):
        tex = textures[int(rng.integers(len(textures)))]
        y0, x0 = int(rng.integers(tex.shape[0] - height)), int(rng.integers(tex.shape[1] - width))
        canvas = tex[y0 : y0 + height, x0 : x0 + width].astype(np.float32) * 0.6
        side = int(rng.integers(22, min(height, width) - 4))
        shape = np.asarray(Image.fromarray(shapes[int(rng.integers(len(shapes)))]).resize((side, side)), np.float32)
        px, py = int(rng.integers(0, width - side)), int(rng.integers(0, height - side))
        mask = shape > 100
        region = canvas[py : py + side, px : px + side]
        region[mask] = 255.0
        ys, xs = np.nonzero(mask)
        cx, cy = float(xs.mean() + px + 0.5), float(ys.mean() + py + 0.5)
        top = int(ys.min())
        tx = float(xs[ys == top].mean() + px + 0.5)
        ty = float(top + py + 0.5)
        name = f"images/{i:05d}.png"
        Image.fromarray(canvas.clip(0, 255).astype(np.uint8)).convert("RGB").save(dest / name)
        rows.append((name, round(cx, 2), round(cy, 2), round(tx, 2), round(ty, 2)))
    with (dest / "points.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["name", "centroid_x", "centroid_y", "top_x", "top_y"])
        w.writerows(rows)
    return dest


def _cross_max(mask: np.ndarray, outside: bool) -> np.ndarray:
    """Binary dilation by the 4-neighbour cross (pixels beyond the edge count as `outside`)."""
    p = np.pad(mask, 1, constant_values=outside)
    return p[1:-1, 1:-1] | p[:-2, 1:-1] | p[2:, 1:-1] | p[1:-1, :-2] | p[1:-1, 2:]


def _cross_min(mask: np.ndarray) -> np.ndarray:
    """Binary erosion by the 4-neighbour cross (beyond the edge is background)."""
    return ~_cross_max(~mask, True)


SEGMENTATION_CODES = ("void", "brick", "grass", "gravel", "animal")


def write_silhouette_masks(
    dest: str | Path, count: int = 300, side: int = 64, seed: int = 0, animals: Sequence[str] | None = None
) -> Path:
    """Segmentation data from real images: two scikit-image textures (brick, grass, gravel) split by a
    random line, with an Animal-MNIST silhouette pasted at a random place and scale. Each pixel's code is
    its texture or `animal`; a one-pixel ring around the silhouette is `void` (an uncertain edge, as in
    CamVid). With `animals` (Animal-MNIST class names), only those animals are pasted and each is a code of
    its own instead of `animal` (seven of them: 11 codes, as CamVid's 11 classes). images/NNNNN.png,
    masks/NNNNN.png (pixel value = code index), codes.txt, and pairs.csv (name, mask) for the CSV rule."""
    from skimage import data as skdata

    shapes, shape_labels, _ = load_animal_mnist()
    codes = SEGMENTATION_CODES if animals is None else (*SEGMENTATION_CODES[:4], *animals)
    if animals is not None:
        unknown = sorted(set(animals) - set(ANIMAL_CLASSES))
        if unknown or len(set(animals)) != len(animals):
            raise ValueError(f"animals: {list(animals)} should name distinct classes of {ANIMAL_CLASSES}")
        pool = np.flatnonzero(np.isin(shape_labels, [ANIMAL_CLASSES.index(a) for a in animals]))
    else:
        pool = np.arange(len(shapes))
    textures = [np.asarray(Image.fromarray(getattr(skdata, n)()).convert("L")) for n in SEGMENTATION_CODES[1:4]]
    rng = np.random.default_rng(seed)
    dest = Path(dest)
    (dest / "images").mkdir(parents=True, exist_ok=True)
    (dest / "masks").mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[0:side, 0:side].astype(np.float32) - side / 2
    rows = []
    for i in range(count):
        first, second = rng.choice(3, size=2, replace=False)
        crops = []
        for t in (first, second):
            tex = textures[t]
            y0, x0 = int(rng.integers(tex.shape[0] - side)), int(rng.integers(tex.shape[1] - side))
            crops.append(tex[y0 : y0 + side, x0 : x0 + side].astype(np.float32))
        angle, offset = rng.uniform(0, 2 * np.pi), rng.uniform(-side / 4, side / 4)
        other = xx * np.cos(angle) + yy * np.sin(angle) > offset
        canvas = np.where(other, crops[1], crops[0]) * 0.7
        mask = np.where(other, second + 1, first + 1).astype(np.uint8)
        size = int(rng.integers(side // 3, side * 3 // 4))
        pick = int(pool[int(rng.integers(len(pool)))])
        shape = np.asarray(Image.fromarray(shapes[pick]).resize((size, size)), np.float32)
        px, py = int(rng.integers(0, side - size)), int(rng.integers(0, side - size))
        animal = np.zeros((side, side), dtype=bool)
        animal[py : py + size, px : px + size] = shape > 100
        canvas[animal] = 235.0
        mask[animal] = codes.index("animal" if animals is None else ANIMAL_CLASSES[int(shape_labels[pick])])
        ring = _cross_max(animal, False) & ~_cross_min(animal)
        mask[ring] = codes.index("void")
        name = f"{i:05d}.png"
        Image.fromarray(canvas.clip(0, 255).astype(np.uint8)).convert("RGB").save(dest / "images" / name)
        Image.fromarray(mask).save(dest / "masks" / name)
        rows.append((f"images/{name}", f"masks/{name}"))
    (dest / "codes.txt").write_text("\n".join(codes) + "\n")
    with (dest / "pairs.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["name", "mask"])
        w.writerows(rows)
    return dest


MARK_SIZE = 64
MARK_REGION = (0, 0, 32, 32)  # left, top, right, bottom: where the class is decided (the top-left quarter)
MARK_SIDE = 8
MARK_COLOURS = {"red": (255, 40, 40), "blue": (40, 40, 255)}
DISTRACTOR_COLOURS = ((40, 255, 40), (255, 255, 40), (255, 255, 255))  # green, yellow, white: no class's colour


def write_marks(
    dest: str | Path, per_class: int = 200, seed: int = 0, shuffle_labels: bool = False, distractors: int = 0
) -> Path:
    """Class folders of 64 px grey-noise images whose class is decided by a mark inside one known region
    (`MARK_REGION`, the top-left quarter): a red square or a blue one, somewhere in it. `distractors` squares of
    other colours (green, yellow, white; the same size) lie outside the region, so the mark is not the only thing
    that stands out: a model that learnt the task looks at the mark, one that did not has no reason to prefer it.
    Everything else is noise. `shuffle_labels` files the same images under random classes: nothing left to learn."""
    rng = np.random.default_rng(seed)
    dest = Path(dest)
    labels = [c for c in MARK_COLOURS for _ in range(per_class)]
    filed = [str(c) for c in rng.permutation(labels)] if shuffle_labels else labels
    left, top, right, bottom = MARK_REGION
    for n, (drawn, label) in enumerate(zip(labels, filed, strict=True)):
        img = np.repeat(rng.integers(0, 200, (MARK_SIZE, MARK_SIZE, 1), dtype=np.uint8), 3, axis=2)
        x = int(rng.integers(left + 2, right - MARK_SIDE - 1))
        y = int(rng.integers(top + 2, bottom - MARK_SIDE - 1))
        img[y : y + MARK_SIDE, x : x + MARK_SIDE] = MARK_COLOURS[drawn]
        for _ in range(distractors):
            while True:  # anywhere on the image but touching the region
                dx, dy = (int(v) for v in rng.integers(0, MARK_SIZE - MARK_SIDE + 1, 2))
                if dx >= right or dy >= bottom or dx + MARK_SIDE <= left or dy + MARK_SIDE <= top:
                    break
            colour = DISTRACTOR_COLOURS[int(rng.integers(len(DISTRACTOR_COLOURS)))]
            img[dy : dy + MARK_SIDE, dx : dx + MARK_SIDE] = colour
        (dest / label).mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(dest / label / f"{n:04d}.png")
    return dest
