"""Scenes read over the network: GDAL's settings for them, their identity, and safe hrefs.

A scene's files may be URLs GDAL reads (``https://…``, ``s3://…``, ``/vsi…``). GDAL reads a
tiled GeoTIFF (a COG) window by window with HTTP range requests, fetching only the internal
tiles a window touches, provided it is told not to look around the file first:
:func:`gdal_env` gives every open and read of a remote file the settings of
:data:`REMOTE_GDAL_OPTIONS`, each one unless the user's environment sets it already. The same
reading code runs in the client and in every Dask worker, so both get them.

Credentials are never geoseg options: S3 keys, the profile and the endpoint come from the
standard AWS environment (``AWS_ACCESS_KEY_ID``, ``AWS_PROFILE``, ``AWS_S3_ENDPOINT``,
``AWS_HTTPS``, ``AWS_VIRTUAL_HOSTING``, …) that rasterio's ``AWSSession`` and GDAL read. A URL
may still carry some (``https://user:password@host/…``, a presigned ``X-Amz-Signature``
query): :func:`redact` takes them out of whatever geoseg writes or prints.

A remote file's identity (for resume keys and batch reuse) is :func:`remote_fingerprint`:
its size, ETag and modification time from one HEAD request, never its bytes.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

#: GDAL settings for remote files; the user's environment wins over each. No
#: ``CPL_VSIL_CURL_ALLOWED_EXTENSIONS``: it would refuse URLs without a file suffix (presigned
#: and API download links), and ``EMPTY_DIR`` already stops the probing it guards against.
REMOTE_GDAL_OPTIONS: dict[str, str] = {
    # Look for no sidecar file (.aux.xml, .ovr, .msk) beside the file: each probe, or a
    # listing of the bucket, is a request, and a COG holds all it needs.
    "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR",
    # Adjacent tiles of one window in one range request, requests over shared connections.
    "GDAL_HTTP_MERGE_CONSECUTIVE_RANGES": "YES",
    "GDAL_HTTP_MULTIPLEX": "YES",
    # Keep fetched ranges (the header, tiles a neighbouring block's halo reads again).
    "VSI_CACHE": "TRUE",
    # A busy server's 429 or 5xx retried, with back-off, before a read fails.
    "GDAL_HTTP_MAX_RETRY": "3",
    "GDAL_HTTP_RETRY_DELAY": "1",
}

#: Seconds a HEAD request for :func:`remote_fingerprint` may take.
HEAD_TIMEOUT_S = 10

_SCHEME = re.compile(r"^[a-z][a-z0-9+.-]*://", re.IGNORECASE)
#: URLs inside free text (an error message): up to whitespace or a quote.
_URL_IN_TEXT = re.compile(r"[a-z][a-z0-9+.-]*://[^\s'\"<>]+", re.IGNORECASE)
#: Query parameters whose values are secrets: AWS (SigV4 and V2) and GCS presigned URLs,
#: Azure SAS tokens, OAuth tokens, API keys.
_SECRET_PARAM = re.compile(
    r"signature|credential|security-token|token|^sig$|secret|password|^key$|api[-_]?key|"
    r"awsaccesskeyid",
    re.IGNORECASE,
)
#: What stands in for a secret.
HIDDEN = "***"


def is_remote(path: str) -> bool:
    """Whether ``path`` is read over the network (a URL or a ``/vsi…`` path), not a local file."""
    return bool(_SCHEME.match(path)) or path.startswith("/vsi")


def gdal_env(path: str) -> contextlib.AbstractContextManager[object]:
    """The GDAL settings to open and read ``path`` under: :data:`REMOTE_GDAL_OPTIONS` if remote.

    Local files get none: ``EMPTY_DIR`` would hide a local file's ``.ovr`` or ``.aux.xml``.
    rasterio keeps these settings to the calling thread.
    """
    if not is_remote(path):
        return contextlib.nullcontext()
    import rasterio

    return rasterio.Env(**_remote_options())


def _remote_options() -> dict[str, str]:
    """:data:`REMOTE_GDAL_OPTIONS` less those the user's environment sets."""
    return {k: v for k, v in REMOTE_GDAL_OPTIONS.items() if k not in os.environ}


def redact(text: str) -> str:
    """``text`` with every URL's user, password and secret query values replaced by ``***``.

    Works on a bare href (``https://user:pw@host/a.tif?X-Amz-Signature=…``), a GDAL path
    (``/vsicurl/https://…``) and any message that quotes one.
    """
    return _URL_IN_TEXT.sub(lambda m: _redact_url(m.group(0)), text)


def _redact_url(url: str) -> str:
    parts = urlsplit(url)
    netloc = parts.netloc
    if "@" in netloc:
        netloc = f"{HIDDEN}@{netloc.rpartition('@')[2]}"
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        query = urlencode(
            [(k, HIDDEN if _SECRET_PARAM.search(k) else v) for k, v in pairs], safe="*/:"
        )
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def remote_fingerprint(path: str) -> str:
    """What identifies a remote file's version without reading it: size, ETag, modified time.

    One HEAD request: http(s) through requests (a URL's own user and password included), S3
    through boto3 when it is installed, configured by the standard AWS environment as GDAL
    is. ``""`` when the server says nothing (or for other ``/vsi…`` paths): the file is then
    known by its href alone.
    """
    url = path.removeprefix("/vsicurl/")
    scheme = urlsplit(url).scheme.lower()
    if scheme in ("http", "https"):
        return _http_fingerprint(url)
    if scheme == "s3" or url.startswith("/vsis3/"):
        bucket, _, key = url.removeprefix("s3://").removeprefix("/vsis3/").partition("/")
        return _s3_fingerprint(bucket, key)
    return ""


def _http_fingerprint(url: str) -> str:
    import requests

    try:
        response = requests.head(url, allow_redirects=True, timeout=HEAD_TIMEOUT_S)
    except requests.RequestException:
        return ""
    if not response.ok:
        return ""
    headers = response.headers
    return ":".join(headers.get(k, "") for k in ("Content-Length", "ETag", "Last-Modified"))


def _s3_fingerprint(bucket: str, key: str) -> str:
    try:
        client = _s3_client()
        head = client.head_object(Bucket=bucket, Key=key)
    except Exception:  # noqa: BLE001 - no boto3, no credentials, no network: href alone
        return ""
    return f"{head.get('ContentLength', '')}:{head.get('ETag', '')}:{head.get('LastModified', '')}"


@functools.lru_cache(maxsize=1)
def _s3_client() -> Any:
    """A boto3 S3 client set up from the environment variables GDAL's ``/vsis3/`` reads."""
    import boto3
    from botocore import UNSIGNED
    from botocore.config import Config

    endpoint = os.environ.get("AWS_S3_ENDPOINT")
    url = None
    if endpoint:
        https = os.environ.get("AWS_HTTPS", "YES").upper() not in ("NO", "FALSE", "OFF", "0")
        url = endpoint if "://" in endpoint else f"{'https' if https else 'http'}://{endpoint}"
    virtual = os.environ.get("AWS_VIRTUAL_HOSTING", "TRUE").upper() not in ("NO", "FALSE", "0")
    unsigned = os.environ.get("AWS_NO_SIGN_REQUEST", "NO").upper() in ("YES", "TRUE", "1")
    config = Config(
        s3={"addressing_style": "virtual" if virtual else "path"},
        signature_version=UNSIGNED if unsigned else None,
        connect_timeout=HEAD_TIMEOUT_S,
        read_timeout=HEAD_TIMEOUT_S,
        retries={"max_attempts": 1},
    )
    return boto3.session.Session().client("s3", endpoint_url=url, config=config)
