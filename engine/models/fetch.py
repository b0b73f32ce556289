"""Optional download of model files for machines that are online (stdlib urllib only).

Downloads go to `<name>.part` beside the final file and are resumed with HTTP Range requests after an
interruption (within one call up to `retries` times, and across calls: the .part file is kept). The
final name appears only after the size and — when the manifest knows it — the sha256 match; a file
whose checksum does not match is moved to `<models>/.quarantine/` and reported. Without a network the
caller gets a DownloadFailed error and nothing under the final name.
"""

from __future__ import annotations

import http.client
import logging
import os
import re
import socket
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from engine.api import Progress
from engine.errors import EngineError, ModelCorrupt
from engine.models.folder import quarantine
from engine.models.manifest import DownloadFile, ModelEntry
from engine.models.verify import HashCache, sha256_file

log = logging.getLogger(__name__)

USER_AGENT = "WPlusStudio/0.1 (model fetch)"
_CONTENT_RANGE = re.compile(r"bytes\s+(\d+)-(\d+)/(\d+|\*)")

ProgressFn = Callable[[Progress], None] | None


class DownloadFailed(EngineError):
    """A download could not be completed (no network, HTTP error, server gone)."""


def fetch(
    entry: ModelEntry,
    dest_dir: str | os.PathLike[str],
    progress: ProgressFn = None,
    token: Any = None,
    *,
    retries: int = 3,
    timeout: float = 30.0,
    chunk_size: int = 1 << 20,
    cache_dir: Path | None = None,
) -> list[Path]:
    """Download every file of a manifest entry into the models folder `dest_dir`.

    Files already present with the right size/sha256 are not downloaded again.

    Args:
        entry: a manifest entry with downloads (bundled entries ship with the app).
        dest_dir: the models folder; files go to `dest_dir / rel_path`.
        progress: receives Progress(stage, bytes done, bytes total, elapsed_s) where elapsed_s is scaled
            so that `Progress.eta_s` is the remaining time at the current rate (resumed bytes excluded).
        token: CancelToken checked between chunks (the .part file is kept for a later resume).
        retries: how many times an interrupted transfer is resumed within this call.
        timeout: socket timeout in seconds.

    Returns:
        The final paths, one per download of the entry.

    Raises:
        DownloadFailed: no network, HTTP error, too many interruptions.
        ModelCorrupt: the downloaded size or sha256 does not match (the file is quarantined).
        Cancelled: the token was set.
    """
    if entry.kind == "bundled":
        raise EngineError(f"{entry.id} ships with W+ Studio and is not downloaded.", "Reinstall W+ Studio if it is missing.")
    if not entry.downloads:
        raise EngineError(
            f"{entry.id} has no download address.",
            f"Copy it into the models folder with `wplus models import DIR`. Source: {entry.source_url or 'unknown'}",
        )
    dest = Path(dest_dir)
    dest.mkdir(parents=True, exist_ok=True)
    cache = HashCache(dest, cache_dir)
    try:
        return [
            fetch_file(
                dl, dest, cache, progress=progress, token=token, retries=retries,
                timeout=timeout, chunk_size=chunk_size,
            )
            for dl in entry.downloads
        ]
    finally:
        cache.save()


def _network_message(exc: BaseException, url: str) -> DownloadFailed:
    reason = getattr(exc, "reason", exc)
    host = urllib.parse.urlsplit(url).netloc
    if isinstance(reason, socket.gaierror):
        what = f"cannot resolve {host} (no internet connection?)"
    elif isinstance(reason, ConnectionRefusedError):
        what = f"{host} refused the connection (no internet connection, or a firewall?)"
    elif isinstance(reason, TimeoutError | socket.timeout):
        what = f"{host} did not answer in time"
    else:
        what = f"{host} could not be reached ({reason})"
    return DownloadFailed(
        f"Download failed: {what}.",
        "On an offline machine, copy the model files from another computer or a USB drive and run "
        "`wplus models import DIR` (or use Models › Import in the app).",
    )


def fetch_file(
    dl: DownloadFile,
    models_dir: Path,
    cache: HashCache,
    *,
    progress: ProgressFn = None,
    token: Any = None,
    retries: int = 3,
    timeout: float = 30.0,
    chunk_size: int = 1 << 20,
) -> Path:
    """Download one file resumably (see `fetch`); returns its final path."""
    final = models_dir / dl.rel_path
    part = final.with_name(final.name + ".part")
    if final.is_file() and _already_good(final, dl, cache, token):
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    opener = urllib.request.build_opener()
    label = f"downloading {final.name}"
    failures = 0
    t0 = time.monotonic()
    start_offset: int | None = None
    while True:
        offset = part.stat().st_size if part.exists() else 0
        if dl.size and offset > dl.size:  # a stale .part of another file: start over
            part.unlink()
            offset = 0
        if start_offset is None:
            start_offset = offset
        headers = {"User-Agent": USER_AGENT, "Accept-Encoding": "identity"}
        if offset:
            headers["Range"] = f"bytes={offset}-"
        received = 0
        try:
            if token is not None:
                token.raise_if_cancelled()
            try:
                resp = opener.open(urllib.request.Request(dl.url, headers=headers), timeout=timeout)
            except urllib.error.HTTPError as exc:
                if exc.code == 416 and offset:
                    # The server has nothing after `offset`: the .part is complete, or it belongs to an
                    # older version of the file. Verify below; a mismatch restarts from zero.
                    exc.close()
                    if dl.size in (0, offset):
                        break
                    part.unlink()
                    continue
                raise _http_error(exc, dl.url) from exc
            with resp:
                total, append = _plan(resp, offset, dl)
                if dl.size and total and total != dl.size:
                    raise DownloadFailed(
                        f"{dl.url} offers {total:,} bytes but {final.name} should be {dl.size:,}.",
                        "The file on the server changed; update W+ Studio or import the file by hand.",
                    )
                if not append:
                    offset = 0
                    start_offset = 0
                with open(part, "ab" if append else "wb") as fh:
                    done = offset
                    while True:
                        if token is not None:
                            token.raise_if_cancelled()
                        chunk = resp.read(chunk_size)
                        if not chunk:
                            break
                        fh.write(chunk)
                        received += len(chunk)
                        done += len(chunk)
                        if progress is not None:
                            progress(_progress(label, done, total, start_offset, time.monotonic() - t0))
                    fh.flush()
                    os.fsync(fh.fileno())
                if total and done < total:
                    raise http.client.IncompleteRead(b"", total - done)
                break
        except (urllib.error.URLError, http.client.HTTPException, OSError) as exc:
            if isinstance(exc, urllib.error.HTTPError | DownloadFailed):
                raise
            # Retry only transfers that made progress: a refused or unresolvable connection fails at once.
            failures += 1
            if received == 0 or failures > retries:
                if received and failures > retries:
                    raise DownloadFailed(
                        f"The download of {final.name} was interrupted {failures} times; "
                        f"{part.stat().st_size if part.exists() else 0:,} bytes are kept in {part.name}.",
                        "Run the same command again to resume.",
                    ) from exc
                raise _network_message(exc, dl.url) from exc
            log.info("download of %s interrupted after %d bytes (%s); resuming", final.name, received, exc)
    return _finish(part, final, dl, models_dir, cache, token)


def _already_good(final: Path, dl: DownloadFile, cache: HashCache, token: Any) -> bool:
    if dl.size and final.stat().st_size != dl.size:
        return False
    if dl.sha256:
        return cache.sha256(final, token=token) == dl.sha256
    return True


def _plan(resp: Any, offset: int, dl: DownloadFile) -> tuple[int, bool]:
    """(total size or 0, whether to append to the .part) from the response status and headers."""
    length = resp.headers.get("Content-Length")
    length_i = int(length) if length and length.isdigit() else 0
    if offset and resp.status == 206:
        m = _CONTENT_RANGE.match(resp.headers.get("Content-Range", ""))
        if m and int(m.group(1)) == offset:
            total = int(m.group(3)) if m.group(3) != "*" else (offset + length_i if length_i else dl.size)
            return total, True
        raise DownloadFailed(
            f"The server answered the resume request of {dl.url} with a wrong range.",
            "Delete the .part file and try again.",
        )
    # 200: the server ignores ranges (or this is a fresh start): the body is the whole file.
    return (length_i or dl.size), False


def _progress(label: str, done: int, total: int, start: int, elapsed: float) -> Progress:
    fresh = done - start
    # Progress.eta_s = elapsed/step*(total-step); scale elapsed so that it reflects the rate of this
    # session's bytes only (resumed bytes arrived at no cost).
    eff = elapsed * done / fresh if fresh > 0 else 0.0
    return Progress(label, done, total, eff)


def _http_error(exc: urllib.error.HTTPError, url: str) -> DownloadFailed:
    exc.close()
    if exc.code in (401, 403):
        return DownloadFailed(
            f"The server refused {url} (HTTP {exc.code}).",
            "The file may need a login: download it in a browser, then `wplus models import DIR`.",
        )
    if exc.code == 404:
        return DownloadFailed(
            f"{url} does not exist (HTTP 404).",
            "The file moved; download it by hand from the source page and use `wplus models import DIR`.",
        )
    return DownloadFailed(f"The server answered HTTP {exc.code} for {url}.", "Try again later.")


def _finish(part: Path, final: Path, dl: DownloadFile, models_dir: Path, cache: HashCache, token: Any) -> Path:
    size = part.stat().st_size
    if dl.size and size != dl.size:
        q = quarantine(part, models_dir, f"size {size} instead of {dl.size} from {dl.url}")
        raise ModelCorrupt(
            f"{final.name} downloaded from {dl.url} is {size:,} bytes instead of {dl.size:,}; moved to {q}.",
            "Try again later, or import the file from a trusted copy.",
        )
    digest = sha256_file(part, token=token)
    if dl.sha256 and digest != dl.sha256:
        q = quarantine(part, models_dir, f"sha256 {digest} instead of {dl.sha256} from {dl.url}")
        raise ModelCorrupt(
            f"{final.name} downloaded from {dl.url} has sha256 {digest[:16]}…, expected {dl.sha256[:16]}…: "
            f"the file is damaged or not the published one. It was moved to {q}.",
            "Try again later, or import the file from a trusted copy with `wplus models import DIR`.",
        )
    os.replace(part, final)
    cache.record(final, digest, "fetch" if dl.sha256 else "fetch (no published checksum)")
    return final
