"""S3-compatible stores (AWS S3, MinIO, SeaweedFS, Ceph RGW...) through the MinIO client: a key prefix is a
model folder, one key a dataset file. The revision is a digest of the keys and their ETags, so changed
objects make a new revision; an ETag that is an MD5 (one-part uploads) checks the bytes."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

from chatmodel_operator.remote_source import FetchError, Remote

from .listing import CHUNK, Interrupted, Listing, RemoteFile, Stalled
from .settings import Settings

_MD5 = re.compile(r"^[0-9a-f]{32}$")


class S3Store:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._client: Any = None

    def client(self) -> Any:
        if self._client is None:
            import urllib3
            from minio import Minio

            s = self.settings
            url = urlsplit(s.s3_endpoint or "https://s3.amazonaws.com")
            timeout = urllib3.Timeout(connect=30.0, read=s.stall_seconds)
            http = urllib3.PoolManager(timeout=timeout, retries=urllib3.Retry(total=2, backoff_factor=0.5))
            self._client = Minio(
                url.netloc,
                access_key=s.s3_access_key,
                secret_key=s.s3_secret_key,
                secure=url.scheme == "https",
                region=s.s3_region,
                http_client=http,
            )
            if not s.s3_path_style:
                self._client.enable_virtual_style_endpoint()
        return self._client

    def _error(self, remote: Remote, exc: Exception) -> FetchError:
        from minio.error import S3Error

        if isinstance(exc, S3Error):
            return FetchError(f"{remote}: {exc.code}: {exc.message}")
        where = self.settings.s3_endpoint or "AWS S3"
        return FetchError(f"{remote}: {where} unreachable: {str(exc).splitlines()[0] if str(exc) else exc!r}")

    def listing(self, remote: Remote) -> Listing:
        import urllib3.exceptions
        from minio.error import MinioException

        key = remote.path
        try:
            objects = list(self.client().list_objects(remote.repo, prefix=key, recursive=True))
        except (MinioException, urllib3.exceptions.HTTPError, OSError, ValueError) as exc:
            raise self._error(remote, exc) from None
        exact = [o for o in objects if o.object_name == key]
        under = [o for o in objects if not key or o.object_name.startswith(key.rstrip("/") + "/")]
        chosen, single = (exact, True) if exact else (under, False)
        if not chosen:
            raise FetchError(f"{remote}: NoSuchKey: no object {key or '(any)'} in bucket {remote.repo}")
        files = []
        for o in sorted(chosen, key=lambda o: o.object_name):
            name = o.object_name
            etag = (o.etag or "").strip('"')
            rel = name.rsplit("/", 1)[-1] if single else name[len(key.rstrip("/")) + 1 :] if key else name
            files.append(
                RemoteFile(
                    path=rel,
                    size=int(o.size or 0),
                    locator=name,
                    md5=etag if _MD5.match(etag) else None,
                    etag=etag,
                )
            )
        lines = "".join(f"{f.locator}\t{f.etag}\t{f.size}\n" for f in files)
        revision = hashlib.sha256(lines.encode()).hexdigest()[:16]
        return Listing(remote, revision, tuple(files), single)

    def read(self, listing: Listing, file: RemoteFile, start: int) -> Iterator[bytes]:
        import urllib3.exceptions
        from minio.error import MinioException

        remote = listing.remote
        try:
            response = self.client().get_object(remote.repo, file.locator, offset=start)
        except (MinioException, urllib3.exceptions.HTTPError, OSError) as exc:
            if isinstance(exc, urllib3.exceptions.ReadTimeoutError):
                raise Stalled() from None
            raise self._error(remote, exc) from None
        try:
            yield from response.stream(CHUNK)
        except urllib3.exceptions.ReadTimeoutError:
            raise Stalled() from None
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise Interrupted(str(exc) or repr(exc)) from None
        finally:
            response.close()
            response.release_conn()
