"""One image URL -> one checked file, written atomically (Ray-free; a thread per URL).

:func:`fetch_url` sends ``GET`` with the policy's User-Agent and, per attempt:

- ``200`` with an ``image/*`` Content-Type, at most ``max_bytes`` long, whose bytes decode as an
  image of at most :data:`~g4mm.data.images.MAX_IMAGE_PIXELS` pixels: written to a hidden
  ``.<name>.part-<uuid>`` beside the destination, then renamed onto it (one ``os.replace``), so a
  file at the destination is always whole and checked; a crash leaves only a ``.part`` file,
  which the next run overwrites under another name and :func:`remove_stale_parts` clears;
- ``429`` and ``5xx``, a timeout, a refused or reset connection, a body shorter than its
  Content-Length: retried up to ``retries`` more times after
  ``min(max_backoff_s, (Retry-After or backoff_s * 2**attempt) * U(1, 1.5))`` seconds; a ``429``
  also pushes the whole host back by that delay (``penalize``: every task of the run waits);
- anything else fails at once.

Failure reasons (``FetchResult.reason``): ``http_<code>`` (e.g. ``http_404``, or ``http_429``
when the retries ran out), ``timeout``, ``connection``, ``truncated``, ``too_large``,
``not_image`` (the server said it is not an image: an HTML error page saved as ``.jpg`` is
this), ``undecodable`` (said ``image/*`` but PIL cannot decode it, e.g. HTML served as
``image/jpeg``), ``too_many_pixels``, ``bad_url`` (not ``http(s)://host/...``), ``error``
(anything else, e.g. a full disk: the detail names it; the run goes on).

Timeouts: ``timeout_s`` bounds the connect, each read, and the whole response: a watchdog
shuts the socket down at the deadline, so a server that trickles a byte at a time is cut off
too (a read that keeps receiving never times out by itself).
"""

from __future__ import annotations

import contextlib
import dataclasses
import email.utils
import hashlib
import io
import os
import random
import socket
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

import requests
from PIL import Image
from urllib3.exceptions import ReadTimeoutError

from g4mm.data.images import MAX_IMAGE_PIXELS

__all__ = [
    "FILES_DIR",
    "FetchPolicy",
    "FetchResult",
    "fetch_url",
    "image_relpath",
    "remove_stale_parts",
]

#: Subdirectory of the output that holds the image files (``files/<2 hex>/<sha1>.<ext>``).
FILES_DIR = "files"
_IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".gif", ".webp", ".bmp", ".tif", ".tiff"})
_CHUNK = 64 * 1024


@dataclasses.dataclass(frozen=True)
class FetchPolicy:
    """How one URL is fetched. Defaults are for a public server that rate-limits.

    Attributes:
        user_agent: sent with every request (Wikimedia asks for a contact in it).
        timeout_s: connect and per-read timeout, and the whole body's deadline.
        retries: attempts after the first, on 429 / 5xx / timeout / connection / truncated.
        backoff_s: first back-off; doubles per attempt unless the server sends Retry-After.
        max_backoff_s: cap on any one wait, Retry-After included.
        max_bytes: larger bodies fail as ``too_large`` (Content-Length first, then as read).
    """

    user_agent: str
    timeout_s: float = 30.0
    retries: int = 3
    backoff_s: float = 1.0
    max_backoff_s: float = 60.0
    max_bytes: int = 50 * 1024**2


@dataclasses.dataclass(frozen=True)
class FetchResult:
    """Outcome of one URL: ``status`` ``ok`` (written now), ``skipped`` (already present) or
    ``failed`` (``reason`` says why, ``detail`` the last error); ``path`` relative to the
    output directory; ``attempts`` requests sent; ``bytes`` written."""

    url: str
    path: str
    status: str
    reason: str = ""
    detail: str = ""
    attempts: int = 0
    bytes: int = 0


class _Retry(Exception):
    """A retryable outcome of one attempt: ``reason`` if it is the last, wait ``delay``."""

    def __init__(self, reason: str, detail: str, delay: float | None = None) -> None:
        super().__init__(detail)
        self.reason, self.detail, self.delay = reason, detail, delay


class _Fail(Exception):
    """A final failure of one URL."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason, self.detail = reason, detail


def image_relpath(url: str) -> str:
    """Where ``url``'s image lives under the output: ``files/<h[:2]>/<h><ext>``, ``h`` the
    sha1 of the URL, ``ext`` the URL's own image suffix (lower case) or none. A function of
    the URL alone, so a rerun finds what an earlier run wrote without any state; 256
    subdirectories keep directories small at millions of images."""
    digest = hashlib.sha1(url.encode()).hexdigest()
    suffix = Path(urlsplit(url).path).suffix.lower()
    suffix = suffix if suffix in _IMAGE_SUFFIXES else ""
    return f"{FILES_DIR}/{digest[:2]}/{digest}{suffix}"


def _retry_after(response: requests.Response) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or an HTTP date), or None."""
    value = response.headers.get("Retry-After", "").strip()
    if not value:
        return None
    if value.isdigit():
        return float(value)
    with contextlib.suppress(TypeError, ValueError):
        when = email.utils.parsedate_to_datetime(value)
        return max(0.0, when.timestamp() - time.time())
    return None


def _read_body(response: requests.Response, policy: FetchPolicy, deadline: float) -> bytes:
    """The body, refused past ``max_bytes`` or the deadline; a short body raises (urllib3
    checks Content-Length) and is retried as ``truncated``."""
    declared = response.headers.get("Content-Length", "")
    if declared.isdigit() and int(declared) > policy.max_bytes:
        raise _Fail("too_large", f"Content-Length {declared} > {policy.max_bytes}")
    body = io.BytesIO()
    try:
        for chunk in response.iter_content(_CHUNK):
            body.write(chunk)
            if body.tell() > policy.max_bytes:
                raise _Fail("too_large", f"body over {policy.max_bytes} bytes")
            if time.monotonic() > deadline:
                raise _Retry("timeout", f"body not complete within {policy.timeout_s} s")
    except requests.exceptions.ChunkedEncodingError as err:  # urllib3 IncompleteRead et al.
        raise _Retry("truncated", str(err)) from None
    except requests.exceptions.ContentDecodingError as err:  # a bad gzip / deflate body
        raise _Fail("undecodable", f"content encoding: {err}") from None
    except (requests.exceptions.Timeout, requests.exceptions.ConnectionError) as err:
        # requests raises a read timeout inside the body as a ConnectionError around
        # urllib3's ReadTimeoutError
        cause = err.args[0] if err.args else None
        if isinstance(err, requests.exceptions.Timeout) or isinstance(cause, ReadTimeoutError):
            raise _Retry("timeout", str(err)) from None
        raise _Retry("truncated", str(err)) from None
    return body.getvalue()


def _check_decodes(data: bytes) -> None:
    """Raise :class:`_Fail` unless ``data`` is an image PIL decodes fully, within the pixel
    limit (the size is read from the header before anything is decoded)."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            width, height = image.size
            if width * height > MAX_IMAGE_PIXELS:
                raise _Fail("too_many_pixels", f"{width} x {height} pixels")
            image.load()
    except _Fail:
        raise
    except Image.DecompressionBombError as err:  # over PIL's own limit: refused by PIL first
        raise _Fail("too_many_pixels", str(err)) from None
    except Exception as err:  # PIL raises OSError, SyntaxError, ValueError, struct.error, ...
        raise _Fail("undecodable", f"{type(err).__name__}: {err}") from None


def _write_atomically(data: bytes, dest: Path) -> None:
    """``data`` to ``dest`` through a hidden ``.part`` file in the same directory."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(f".{dest.name}.part-{uuid.uuid4().hex[:12]}")
    try:
        with open(part, "wb") as handle:
            handle.write(data)
        os.replace(part, dest)
    except BaseException:
        part.unlink(missing_ok=True)
        raise


def _shut_down(response: requests.Response) -> None:
    """Shut the response's socket down (from the watchdog thread): a read blocked in another
    thread then returns at once with an error."""
    connection = getattr(response.raw, "connection", None)
    sock = getattr(connection, "sock", None)
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)


def _attempt(session: requests.Session, url: str, policy: FetchPolicy) -> bytes:
    """One GET: the checked body, or :class:`_Retry` / :class:`_Fail`."""
    deadline = time.monotonic() + policy.timeout_s
    try:
        response = session.get(
            url,
            headers={"User-Agent": policy.user_agent},
            timeout=(policy.timeout_s, policy.timeout_s),
            stream=True,
        )
    except requests.exceptions.Timeout as err:
        raise _Retry("timeout", str(err)) from None
    except requests.exceptions.ConnectionError as err:
        raise _Retry("connection", str(err)) from None
    except requests.exceptions.RequestException as err:  # invalid URL, too many redirects, ...
        raise _Fail("bad_url", str(err)) from None
    watchdog = threading.Timer(max(0.0, deadline - time.monotonic()), _shut_down, (response,))
    watchdog.daemon = True
    watchdog.start()
    try:
        with response:
            data = _checked_body(response, policy, deadline)
    except _Fail:  # a definite answer (404, not an image, too large)
        raise
    except (_Retry, OSError, requests.exceptions.RequestException) as err:
        if time.monotonic() >= deadline:  # the watchdog cut the body off
            raise _Retry("timeout", f"response not complete within {policy.timeout_s} s") from None
        if isinstance(err, _Retry):
            raise
        raise _Retry("truncated", str(err)) from None
    finally:
        watchdog.cancel()
    _check_decodes(data)
    return data


def _checked_body(response: requests.Response, policy: FetchPolicy, deadline: float) -> bytes:
    """The body of one response after the status, type and size checks."""
    code = response.status_code
    if code == 429 or code >= 500:
        raise _Retry(f"http_{code}", f"HTTP {code}", _retry_after(response))
    if code != 200:
        raise _Fail(f"http_{code}", f"HTTP {code}")
    ctype = response.headers.get("Content-Type", "").split(";")[0].strip().lower()
    if not ctype.startswith("image/"):
        raise _Fail("not_image", f"Content-Type {ctype or '(none)'}")
    return _read_body(response, policy, deadline)


def fetch_url(
    session: requests.Session,
    url: str,
    output: Path,
    policy: FetchPolicy,
    wait_turn: Callable[[str], None] = lambda host: None,
    penalize: Callable[[str, float], None] = lambda host, seconds: None,
) -> FetchResult:
    """Fetch ``url`` into ``output / image_relpath(url)`` unless it is there already.

    Args:
        session: a ``requests.Session`` (one per thread: connections are reused per host).
        url: the image URL.
        output: the output directory.
        policy: User-Agent, timeouts, retries, size limit.
        wait_turn: called with the host before every request (the per-host rate limit).
        penalize: called with the host and a delay after a 429 (every requester backs off).
    """
    try:
        rel = image_relpath(url)
        parts = urlsplit(url)
    except ValueError as err:  # e.g. "Invalid IPv6 URL"
        return FetchResult(url, "", "failed", "bad_url", str(err))
    if (output / rel).is_file():
        return FetchResult(url, rel, "skipped")
    if parts.scheme not in ("http", "https") or not parts.netloc:
        return FetchResult(url, rel, "failed", "bad_url", "not an http(s) URL with a host")
    try:
        return _fetch_new(session, url, rel, output, policy, wait_turn, penalize)
    except Exception as err:  # one URL's unforeseen error must not end the whole run
        return FetchResult(url, rel, "failed", "error", f"{type(err).__name__}: {err}")


def _fetch_new(
    session: requests.Session,
    url: str,
    rel: str,
    output: Path,
    policy: FetchPolicy,
    wait_turn: Callable[[str], None],
    penalize: Callable[[str, float], None],
) -> FetchResult:
    """:func:`fetch_url` past the checks: the attempts, then the atomic write."""
    dest = output / rel
    host = urlsplit(url).netloc.lower()
    reason = detail = ""
    for attempt in range(policy.retries + 1):
        wait_turn(host)
        try:
            data = _attempt(session, url, policy)
        except _Fail as err:
            return FetchResult(url, rel, "failed", err.reason, err.detail, attempt + 1)
        except _Retry as err:
            reason, detail = err.reason, err.detail
            if attempt == policy.retries:
                break
            delay = err.delay if err.delay is not None else policy.backoff_s * 2**attempt
            delay = min(policy.max_backoff_s, delay * random.uniform(1.0, 1.5))
            if err.reason == "http_429":
                penalize(host, delay)
            time.sleep(delay)
            continue
        _write_atomically(data, dest)
        return FetchResult(url, rel, "ok", attempts=attempt + 1, bytes=len(data))
    return FetchResult(url, rel, "failed", reason, detail, policy.retries + 1)


def remove_stale_parts(output: Path) -> int:
    """Delete ``.part`` files a killed run left under ``output/files``; returns how many."""
    removed = 0
    root = output / FILES_DIR
    if not root.is_dir():
        return 0
    for sub in os.scandir(root):
        if not sub.is_dir():
            continue
        for entry in os.scandir(sub.path):
            if entry.name.startswith(".") and ".part-" in entry.name:
                Path(entry.path).unlink(missing_ok=True)
                removed += 1
    return removed
