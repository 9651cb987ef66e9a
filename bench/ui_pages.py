"""Web UI page weight and server time on the embedded default (`fitcycle serve`), with a 10,000-item dataset.

    .venv/bin/python bench/ui_pages.py [--items 10000] [--n 20]

For every page: the first load's weight (its HTML plus the scripts and stylesheets it links: images are
paged and lazy, so they are left out) against the 300 KB target, and the server's median time to answer its
HTML against the 300 ms target, side by side with the REST call that returns the same data as JSON (the
baseline: what the page costs on top of the API it renders).
"""

from __future__ import annotations

import argparse
import re
import shutil
import statistics
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import httpx

from bench.embedded import served_embedded
from core.datasets.samples import write_sample

CLASSES = ["trouser", "bag", "sneaker", "dress"]


def median_ms(fn: Callable[[], httpx.Response], n: int) -> float:
    times = []
    for _ in range(n):
        t = time.perf_counter()
        res = fn()
        times.append(time.perf_counter() - t)
        assert res.status_code == 200, res.text[:300]
    return statistics.median(times) * 1000


def weight(http: httpx.Client, html: str) -> int:
    """The HTML plus the scripts and stylesheets it links (fetched once each)."""
    linked = re.findall(r'<script src="([^"]+)"', html) + re.findall(r'<link rel="stylesheet" href="([^"]+)"', html)
    return len(html.encode()) + sum(len(http.get(url).content) for url in linked)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--items", type=int, default=10_000)
    p.add_argument("--n", type=int, default=20)
    args = p.parse_args()
    with served_embedded("fitcycle-bench-ui-") as served:
        tmp, base, key, client = served.tmp, served.base, served.key, served.client
        per_class = args.items // len(CLASSES)
        folder = write_sample("fashion-mnist", tmp / "fm", per_class=per_class, size=28, classes=CLASSES)
        archive = Path(shutil.make_archive(str(tmp / "fm"), "zip", folder))
        started = time.perf_counter()
        ds = client.upload("fm", archive).json()
        print(f"uploaded {ds['n_items']} items in {time.perf_counter() - started:.1f} s")
        job = client.submit(kind="fine_tune", dataset_id=ds["id"], arch="resnet18", pretrained="none", epochs=1)
        client.post(f"/jobs/{job['id']}/cancel")  # a job to list and show; its training is not the point

        # A browser's session: the cookie the sign-in form sets.
        browser = httpx.Client(base_url=base, timeout=60)
        signin = browser.get("/signin")
        csrf = re.search(r'name="csrf" value="([^"]+)"', signin.text)
        assert csrf is not None
        browser.post("/signin", data={"key": key, "csrf": csrf.group(1), "next": "/datasets"})
        api = httpx.Client(base_url=f"{base}/api/v1", headers={"Authorization": f"Bearer {key}"}, timeout=60)

        pages = [
            ("/datasets", "/datasets"),
            (f"/datasets/{ds['id']}", f"/datasets/{ds['id']}/items?limit=48"),
            (f"/datasets/{ds['id']}?page=200", f"/datasets/{ds['id']}/items?limit=48&offset=9552"),
            ("/jobs", "/jobs?limit=50"),
            (f"/jobs/{job['id']}", f"/jobs/{job['id']}"),
            ("/models", "/registry"),
            ("/playground", "/models"),
            ("/predictions", "/predictions?order=uncertainty&unlabelled=true&limit=40"),
        ]
        print(f"\n{'page':<46} {'weight KB':>9} {'page ms':>8} {'API ms':>7} {'ratio':>6}  targets: 300 KB, 300 ms")
        worst_kb, worst_ms = 0.0, 0.0
        for page, rest in pages:
            html = browser.get(page)
            assert html.status_code == 200 and "<main" in html.text, (page, html.status_code)
            kb = weight(browser, html.text) / 1024
            page_ms = median_ms(partial(browser.get, page), args.n)
            api_ms = median_ms(partial(api.get, rest), args.n)
            worst_kb, worst_ms = max(worst_kb, kb), max(worst_ms, page_ms)
            shown = page.replace(ds["id"], "{id}").replace(job["id"], "{job}")
            print(f"{shown:<46} {kb:>9.1f} {page_ms:>8.1f} {api_ms:>7.1f} {page_ms / api_ms:>6.2f}")
        verdict = "meets" if worst_kb < 300 and worst_ms < 300 else "MISSES"
        print(f"\nheaviest page {worst_kb:.1f} KB, slowest {worst_ms:.1f} ms: {verdict} the targets")


if __name__ == "__main__":
    main()
