"""jobs/fetch_images.py against a real HTTP server on loopback, started here.

The server serves real JPEG / PNG files and every failure the issue lists: a 404, a 429 then
success, a response slower than the timeout, a body cut short of its Content-Length, an HTML
error page under an image URL (and HTML served as image/jpeg), a file over the size limit and
a server that keeps answering 503. It counts the requests per path, so the rerun's "only the
failures again" is checked on the server's side.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import requests
from PIL import Image

from g4mm.data.tfrecord import sequence_example, write_tfrecords
from g4mm.fetch.download import FetchPolicy, fetch_url, image_relpath
from g4mm.fetch.rate import HostRateLimiter

ROOT = Path(__file__).resolve().parents[1]
HTML = b"<html><body>Error 403<img src='/img/red.jpg'></body></html>"


def _image_bytes(fmt: str, size: tuple[int, int], color: tuple[int, int, int]) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format=fmt)
    return buf.getvalue()


def _noise_png(side: int) -> bytes:
    pixels = np.random.default_rng(0).integers(0, 256, (side, side, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


RED = _image_bytes("JPEG", (64, 48), (200, 30, 30))
BLUE = _image_bytes("PNG", (40, 40), (30, 30, 200))
GREEN = _image_bytes("JPEG", (32, 32), (30, 200, 30))
HUGE = _noise_png(300)  # ~270 KB, over the tests' 0.1 MB limit

#: path -> (outcome in the report, reason)
EXPECTED = {
    "/img/red.jpg": ("ok", ""),
    "/img/blue.png": ("ok", ""),
    "/img/Green%20leaf.jpg": ("ok", ""),
    "/img/busy.jpg": ("ok", ""),  # 429 first
    "/img/gone.jpg": ("failed", "http_404"),
    "/img/slow.jpg": ("failed", "timeout"),
    "/img/trickle.jpg": ("failed", "timeout"),  # a byte at a time: no read ever times out
    "/img/cut.jpg": ("failed", "truncated"),
    "/img/error-page.jpg": ("failed", "not_image"),
    "/img/html-as-jpeg.jpg": ("failed", "undecodable"),
    "/img/huge.png": ("failed", "too_large"),
    "/img/down.jpg": ("failed", "http_503"),
}


class _Handler(BaseHTTPRequestHandler):
    counts: dict[str, int]
    user_agents: list[str]
    lock: threading.Lock

    def log_message(self, *args) -> None:  # keep the test output clean
        pass

    def _send(self, code: int, body: bytes, ctype: str, headers: dict | None = None) -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        with self.lock:
            self.counts[self.path] = n = self.counts.get(self.path, 0) + 1
            self.user_agents.append(self.headers.get("User-Agent", ""))
        routes = {
            "/img/red.jpg": lambda: self._send(200, RED, "image/jpeg"),
            "/img/blue.png": lambda: self._send(200, BLUE, "image/png"),
            "/img/Green%20leaf.jpg": lambda: self._send(200, GREEN, "image/jpeg"),
            "/img/gone.jpg": lambda: self._send(404, b"not found", "text/plain"),
            "/img/error-page.jpg": lambda: self._send(200, HTML, "text/html; charset=utf-8"),
            "/img/html-as-jpeg.jpg": lambda: self._send(200, HTML, "image/jpeg"),
            "/img/huge.png": lambda: self._send(200, HUGE, "image/png"),
            "/img/down.jpg": lambda: self._send(503, b"busy", "text/plain"),
        }
        if self.path == "/img/busy.jpg":
            if n == 1:
                self._send(429, b"slow down", "text/plain", {"Retry-After": "0"})
            else:
                self._send(200, RED, "image/jpeg")
        elif self.path == "/img/slow.jpg":
            time.sleep(1.5)  # past the tests' 0.5 s timeout: the client has gone
            with contextlib.suppress(OSError):
                self._send(200, RED, "image/jpeg")
        elif self.path == "/img/trickle.jpg":
            self.send_response(200)
            self.send_header("Content-Type", "image/jpeg")
            self.send_header("Content-Length", str(len(RED)))
            self.end_headers()
            with contextlib.suppress(OSError):
                for i in range(40):  # 4 s in all, each byte within the 0.5 s read timeout
                    self.wfile.write(RED[i : i + 1])
                    self.wfile.flush()
                    time.sleep(0.1)
        elif self.path == "/img/cut.jpg":
            self.send_response(200)
            self.send_header("Content-Type", "image/jpeg")
            self.send_header("Content-Length", str(len(RED)))
            self.end_headers()
            self.wfile.write(RED[: len(RED) // 2])
            self.wfile.flush()
            self.close_connection = True
        elif self.path in routes:
            routes[self.path]()
        else:
            self._send(404, b"no such path", "text/plain")


@pytest.fixture
def server():
    handler = type("Handler", (_Handler,), {"counts": {}, "user_agents": [],
                                            "lock": threading.Lock()})  # fmt: skip
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", handler
    httpd.shutdown()
    httpd.server_close()


POLICY = dict(timeout_s=0.5, retries=1, backoff_s=0.05, max_bytes=100_000)


def _policy(**change) -> FetchPolicy:
    return FetchPolicy(user_agent="g4mm-tests/1.0 (tests@example.org)", **{**POLICY, **change})


# ------------------------------------------------------------------- one URL, no Ray


@pytest.mark.parametrize("path", sorted(EXPECTED))
def test_each_response_has_its_outcome(server, tmp_path, path):
    base, handler = server
    result = fetch_url(requests.Session(), base + path, tmp_path, _policy())
    assert (result.status, result.reason) == EXPECTED[path]
    dest = tmp_path / image_relpath(base + path)
    assert dest.is_file() == (result.status == "ok")
    if result.status == "ok":
        with Image.open(dest) as image:
            image.load()
    # nothing half-written anywhere: no .part file, no file for a failure
    leftovers = [p for p in tmp_path.rglob("*") if p.is_file() and p != dest]
    assert leftovers == []
    retried = {"busy.jpg", "slow.jpg", "trickle.jpg", "cut.jpg", "down.jpg"}
    assert handler.counts[path] == (2 if path.rsplit("/", 1)[1] in retried else 1)
    assert set(handler.user_agents) == {"g4mm-tests/1.0 (tests@example.org)"}


def test_a_present_file_is_not_fetched_again(server, tmp_path):
    base, handler = server
    url = base + "/img/red.jpg"
    assert fetch_url(requests.Session(), url, tmp_path, _policy()).status == "ok"
    again = fetch_url(requests.Session(), url, tmp_path, _policy())
    assert again.status == "skipped" and handler.counts["/img/red.jpg"] == 1


def test_a_429_pushes_the_host_back_for_everyone(server, tmp_path):
    base, _ = server
    pushed: list[tuple[str, float]] = []
    result = fetch_url(requests.Session(), base + "/img/busy.jpg", tmp_path, _policy(),
                       penalize=lambda host, s: pushed.append((host, s)))  # fmt: skip
    assert result.status == "ok" and result.attempts == 2
    assert pushed and pushed[0][0] == base.split("//")[1]


def test_the_rate_limiter_spaces_requests_per_host():
    limiter = HostRateLimiter(rate_per_s=20.0)
    waits = [limiter.reserve("a") for _ in range(5)]
    assert waits[0] == 0.0
    assert waits[4] == pytest.approx(4 / 20.0, abs=0.01)  # slots 50 ms apart
    assert limiter.reserve("b") == 0.0  # hosts are independent
    limiter.penalize("b", 1.0)
    assert limiter.reserve("b") == pytest.approx(1.05, abs=0.01)  # its next slot, 1 s later
    unlimited = HostRateLimiter(0)
    assert [unlimited.reserve("a") for _ in range(3)] == [0.0, 0.0, 0.0]


def test_a_429_moves_every_later_slot_of_the_host():
    limiter = HostRateLimiter(rate_per_s=10.0)
    assert [round(limiter.reserve("h"), 2) for _ in range(3)] == [0.0, 0.1, 0.2]
    limiter.penalize("h", 2.0)  # slots up to 0.3 s were queued: the next is 2 s after
    assert limiter.reserve("h") == pytest.approx(2.3, abs=0.02)


def test_odd_urls_and_retry_after_dates():
    from email.utils import formatdate

    from g4mm.fetch.download import _retry_after

    odd = fetch_url(requests.Session(), "http://[x/y.jpg", Path("/nonexistent"), _policy())
    assert (odd.status, odd.reason) == ("failed", "bad_url")
    ftp = fetch_url(requests.Session(), "ftp://host/y.jpg", Path("/nonexistent"), _policy())
    assert (ftp.status, ftp.reason) == ("failed", "bad_url")
    response = requests.Response()
    response.headers["Retry-After"] = formatdate(time.time() + 30, usegmt=True)
    assert 25 <= _retry_after(response) <= 31
    response.headers["Retry-After"] = "7"
    assert _retry_after(response) == 7.0


# ------------------------------------------------------------------- the job, on Ray


def _page(split: str, title: str, urls: list[list[str]]) -> bytes:
    n = len(urls)
    return sequence_example(
        {"split": [split], "page_title": [title], "clean_page_description": [f"{title}."]},
        {
            "section_title": [[f"Part {i}"] for i in range(n)],
            "section_depth": [[1]] * n,
            "section_heading_level": [[2]] * n,
            "section_parent_index": [[-1]] * n,
            "section_clean_1st_sentence": [[f"{title} part {i} opens here."] for i in range(n)],
            "section_rest_sentence": [[f"More on {title} part {i}."] for i in range(n)],
            "section_image_url": urls,
            "section_image_captions": [[f"caption {j}" for j in range(len(u))] for u in urls],
            "is_section_summarization_sample": [[1]] * n,
        },
    )


def _input(tmp_path: Path, base: str) -> tuple[Path, dict[str, int]]:
    """Two TFRecord files; red.jpg is referenced three times, once from a test page."""
    u = {p: base + p for p in EXPECTED}
    pages = [
        _page("train", "Alpha", [[u["/img/red.jpg"], u["/img/blue.png"]], [u["/img/gone.jpg"]]]),
        _page(
            "train",
            "Beta",
            [
                [u["/img/Green%20leaf.jpg"], u["/img/busy.jpg"]],
                [u["/img/slow.jpg"], u["/img/cut.jpg"]],
            ],
        ),
        _page(
            "val",
            "Gamma",
            [[u["/img/error-page.jpg"], u["/img/red.jpg"]], [u["/img/html-as-jpeg.jpg"]]],
        ),
        _page("test", "Delta", [[u["/img/huge.png"], u["/img/down.jpg"]], [u["/img/red.jpg"]]]),
        _page("val", "Epsilon", [[u["/img/trickle.jpg"]]]),
    ]
    tf = tmp_path / "tf"
    tf.mkdir()
    write_tfrecords(tf / "part-0.tfrecord.gz", pages[:2])
    write_tfrecords(tf / "part-1.tfrecord", pages[2:])
    return tf, {"references": 14, "distinct": len(EXPECTED)}


def _fetch(tf: Path, out: Path, *extra: str) -> tuple[subprocess.CompletedProcess, dict]:
    cmd = [sys.executable, "jobs/fetch_images.py", "--input", str(tf), "--output", str(out),
           "--num-cpus", "2", "--concurrency", "6", "--threads-per-task", "3", "--rate", "50",
           "--timeout", "0.5", "--retries", "1", "--backoff", "0.05", "--max-mb", "0.1",
           "--user-agent", "g4mm-tests/1.0 (tests@example.org)", *extra]  # fmt: skip
    env = {**os.environ, "RAY_ADDRESS": "local", "RAY_DATA_DISABLE_PROGRESS_BARS": "1"}
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode in (0, 3), proc.stderr[-3000:]
    report = json.loads((out / "fetch_report.json").read_text())
    return proc, report


def _manifest(out: Path) -> dict[str, str]:
    with open(out / "manifest.csv", newline="") as handle:
        rows = list(csv.reader(handle))
    assert rows[0] == ["url", "path"]
    return dict(rows[1:])


@pytest.mark.slow
def test_fetch_job_counts_exactly_reruns_incrementally_and_feeds_preprocess(server, tmp_path):
    base, handler = server
    tf, sizes = _input(tmp_path, base)
    out = tmp_path / "images"

    proc, report = _fetch(tf, out)
    assert proc.returncode == 3  # some failed
    wanted_failed = {}
    for outcome, reason in EXPECTED.values():
        if outcome == "failed":
            wanted_failed[reason] = wanted_failed.get(reason, 0) + 1
    assert report["ok"] == 4 and report["skipped"] == 0
    assert report["failed"] == wanted_failed
    assert report["urls"]["references"] == sizes["references"]
    assert report["urls"]["distinct"] == sizes["distinct"]
    assert report["manifest_rows"] == 4
    assert report["bytes"] == len(RED) * 2 + len(BLUE) + len(GREEN)
    assert "[fetch] fetch: 12/12 URLs" in proc.stdout and "ETA" in proc.stdout
    manifest = _manifest(out)
    assert set(manifest) == {base + p for p, (o, _) in EXPECTED.items() if o == "ok"}
    for url, rel in manifest.items():
        assert rel == image_relpath(url)
        with Image.open(out / rel) as image:
            image.load()
    files = [p for p in (out / "files").rglob("*") if p.is_file()]
    assert len(files) == 4  # nothing half-written, nothing for a failure
    with open(out / "failures.csv", newline="") as handle:
        failures = {row["url"]: row["reason"] for row in csv.DictReader(handle)}
    assert failures == {base + p: r for p, (o, r) in EXPECTED.items() if o == "failed"}
    assert handler.counts["/img/red.jpg"] == 1  # three references, one request

    # the rerun asks the server only for what failed
    before = dict(handler.counts)
    proc, again = _fetch(tf, out)
    asked = {p for p, n in handler.counts.items() if n > before.get(p, 0)}
    assert asked == {p for p, (o, _) in EXPECTED.items() if o == "failed"}
    assert again["ok"] == 0 and again["skipped"] == 4 and again["failed"] == wanted_failed
    assert _manifest(out) == manifest

    # --splits and --limit select before fetching, and the manifest keeps the other images
    before = dict(handler.counts)
    _, train_only = _fetch(tf, out, "--splits", "train", "--limit", "3")
    assert train_only["urls"]["references"] == 7 and train_only["urls"]["distinct"] == 7
    assert train_only["urls"]["selected"] == 3  # Green%20leaf, blue, busy: first in URL order
    assert train_only["skipped"] == 3 and train_only["ok"] == 0 and not train_only["failed"]
    assert handler.counts == before  # all three on disk: no request
    assert train_only["manifest_carried"] == 1  # red.jpg, not selected, still listed
    assert _manifest(out) == manifest

    # straight into preprocessing: every reference to a fetched image is an ok image
    from g4mm.config import load_config
    from g4mm.data.corpus import ensure_tiny_backbones

    art = tmp_path / "artifacts"
    sets = [f"data.artifact_dir={art}", "data.dataset=wikiweb2m", f"data.input={tf}",
            f"data.images={out}"]  # fmt: skip
    ensure_tiny_backbones(load_config("smoke", sets), ["a page about parts"] * 50,
                          pretrain_steps=2)  # fmt: skip
    prep = subprocess.run(
        [sys.executable, "jobs/preprocess.py", "--dataset", "wikiweb2m", "--input", str(tf),
         "--images", str(out), "--output", str(tmp_path / "prep"), "--num-cpus", "2",
         "--config", "smoke", "--set", f"data.artifact_dir={art}"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
        env={**os.environ, "RAY_ADDRESS": "local", "RAY_DATA_DISABLE_PROGRESS_BARS": "1"},
    )  # fmt: skip
    assert prep.returncode == 0, prep.stderr[-3000:]
    prep_report = json.loads(prep.stdout[prep.stdout.index("\n{") + 1 :])
    # red.jpg x3, blue, green, busy: 6 references resolve to fetched files
    assert prep_report["images"] == {"ok": 6, "missing": 8, "corrupt": 0}


def test_a_second_fetch_into_the_same_output_is_refused(tmp_path):
    import fcntl

    from g4mm.fetch.run import OutputBusyError, _exclusive

    out = tmp_path / "images"
    out.mkdir()
    with open(out / ".fetch.lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        with pytest.raises(OutputBusyError, match="another fetch is writing"), _exclusive(out):
            pass


def test_fetch_help_and_bad_input(tmp_path):
    run = lambda *a: subprocess.run([sys.executable, "jobs/fetch_images.py", *a],  # noqa: E731
                                    cwd=ROOT, capture_output=True, text=True)  # fmt: skip
    assert run("--help").returncode == 0
    missing = run("--input", str(tmp_path / "nope"), "--output", str(tmp_path / "o"))
    assert missing.returncode == 2 and "no such file or directory" in missing.stderr
    bad = run("--input", str(tmp_path), "--output", str(tmp_path / "o"), "--concurrency", "0")
    assert bad.returncode == 2 and "must be > 0" in bad.stderr


def test_the_images_listing_digest_sees_content_not_bookkeeping(tmp_path):
    """The cache key's listing of an images directory: a nested image added, changed or
    removed changes it; the fetcher's bookkeeping, hidden files and the manifest's row order
    do not (a rerun that fetched nothing must keep the preprocessing cache)."""
    from g4mm.pipeline.cache import _listing

    root = tmp_path / "images"
    (root / "files" / "ab").mkdir(parents=True)
    (root / "files" / "ab" / "ab12.jpg").write_bytes(RED)
    (root / "manifest.csv").write_text("url,path\nhttp://h/a.jpg,files/ab/ab12.jpg\n"
                                       "http://h/b.jpg,files/ab/ab12.jpg\n")  # fmt: skip
    first = _listing(root)
    assert first["files"] == 2
    (root / "failures.csv").write_text("url,reason,detail,attempts\n")
    (root / "fetch_report.json").write_text("{}")
    (root / ".fetch.lock").write_text("")
    (root / "files" / "ab" / ".ab13.jpg.part-1").write_bytes(b"half")
    (root / "manifest.csv").write_text("url,path\nhttp://h/b.jpg,files/ab/ab12.jpg\n"
                                       "http://h/a.jpg,files/ab/ab12.jpg\n")  # fmt: skip
    assert _listing(root) == first
    (root / "files" / "cd").mkdir()
    (root / "files" / "cd" / "cd34.png").write_bytes(BLUE)
    added = _listing(root)
    assert added["digest"] != first["digest"] and added["files"] == 3
    (root / "files" / "cd" / "cd34.png").write_bytes(GREEN)
    os.utime(root / "files" / "cd" / "cd34.png", ns=(1, 1))
    assert _listing(root)["digest"] not in (first["digest"], added["digest"])
    (root / "files" / "cd" / "cd34.png").unlink()
    assert _listing(root) == first
    (root / "manifest.csv").write_text("url,path\nhttp://h/a.jpg,files/ab/ab12.jpg\n")
    assert _listing(root)["digest"] != first["digest"]


@pytest.mark.slow
def test_an_input_without_image_urls_is_an_error_naming_it(tmp_path):
    tf = tmp_path / "tf"
    tf.mkdir()
    write_tfrecords(tf / "part-0.tfrecord", [_page("train", "Bare", [[]])])
    proc = subprocess.run(
        [sys.executable, "jobs/fetch_images.py", "--input", str(tf), "--output",
         str(tmp_path / "out"), "--num-cpus", "2"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
        env={**os.environ, "RAY_ADDRESS": "local", "RAY_DATA_DISABLE_PROGRESS_BARS": "1"},
    )  # fmt: skip
    assert proc.returncode == 1
    assert f"error: {tf}: no section_image_url in the records; nothing to fetch" in proc.stderr
