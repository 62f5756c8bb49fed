"""The fake server's file store: uploads held in memory, metadata as the SDKs read it.

Rules this module keeps:

* A file is ``{"id": "file_...", "type": "file", "filename", "mime_type",
  "content_type" (the same value), "size_bytes", "purpose", "metadata",
  "status": "processed", "downloadable", "expires_at", "scope": null,
  "created_at"}``; the bytes are kept as uploaded.
* ``filename`` is the final path component of the upload's name (a ``name``
  field wins); an empty one becomes ``unnamed`` plus the extension of the
  MIME type. The MIME type is the part's own ``Content-Type``, else guessed
  from the name, else ``application/octet-stream``.
* A deleted file is gone: every later use of its id is a 404 (or a 400 where
  a request body refers to it).
* Each file has an unguessable download token for the storage link that
  ``GET /files/{id}/content`` may answer with (the SDKs fetch that link
  without credentials).
"""

from __future__ import annotations

import copy
import mimetypes
import random
from datetime import UTC, datetime, timedelta
from typing import Any

import attrs

from ._params import FormPart, form_fields, form_json
from ._wire import Ids, bad_request, not_found

__all__ = ["FileStore", "StoredFile"]

_MIN_EXPIRY, _MAX_EXPIRY = 3600, 7_776_000


@attrs.define
class StoredFile:
    """One uploaded file: its metadata, its bytes and its download-link token."""

    meta: dict[str, Any]
    content: bytes
    token: str


class FileStore:
    """Every file of one fake server, oldest first."""

    def __init__(self, ids: Ids, rng: random.Random) -> None:
        self._ids = ids
        self._rng = rng
        self.files: dict[str, StoredFile] = {}

    def add(
        self,
        content: bytes,
        filename: str | None = None,
        *,
        mime_type: str | None = None,
        purpose: str | None = None,
        metadata: dict[str, str] | None = None,
        expires_in_seconds: int | None = None,
        downloadable: bool = True,
    ) -> dict[str, Any]:
        """Store a file; returns a copy of its metadata."""
        name = (filename or "").replace("\\", "/").rsplit("/", 1)[-1]
        mime = mime_type or mimetypes.guess_type(name)[0] or "application/octet-stream"
        if not name:
            name = "unnamed" + (mimetypes.guess_extension(mime) or "")
        expires_at = None
        if expires_in_seconds is not None:
            when = datetime.now(UTC) + timedelta(seconds=expires_in_seconds)
            expires_at = when.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        meta: dict[str, Any] = {
            "id": self._ids.resource("file"),
            "type": "file",
            "filename": name,
            "mime_type": mime,
            "content_type": mime,
            "size_bytes": len(content),
            "purpose": purpose,
            "metadata": dict(metadata or {}),
            "status": "processed",
            "downloadable": downloadable,
            "expires_at": expires_at,
            "scope": None,
            "created_at": self._ids.now(),
        }
        token = f"{self._rng.getrandbits(128):032x}"
        self.files[meta["id"]] = StoredFile(meta, bytes(content), token)
        return copy.deepcopy(meta)

    def upload(self, parts: list[FormPart]) -> dict[str, Any]:
        """Store the file of a ``POST /files`` form (field ``file``; ``purpose``, ``name``,
        ``metadata`` as JSON, ``expires_in_seconds``)."""
        upload = next((part for part in parts if part.name == "file"), None)
        fields = form_fields(parts)
        if upload is None:
            raise bad_request("Missing required field: file", "file")
        metadata = form_json(fields, "metadata", {})
        if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
            raise bad_request("metadata must be a JSON object of strings", "metadata")
        expires: int | None = None
        if fields.get("expires_in_seconds"):
            try:
                expires = int(fields["expires_in_seconds"])
            except ValueError:
                expires = -1
            if not _MIN_EXPIRY <= expires <= _MAX_EXPIRY:
                raise bad_request(
                    f"expires_in_seconds must be between {_MIN_EXPIRY} and {_MAX_EXPIRY}",
                    "expires_in_seconds",
                )
        return self.add(
            upload.data,
            fields.get("name") or upload.filename,
            mime_type=upload.content_type,
            purpose=fields.get("purpose") or None,
            metadata=metadata,
            expires_in_seconds=expires,
        )

    def get(self, file_id: str) -> StoredFile:
        """The stored file, or a 404."""
        stored = self.files.get(file_id)
        if stored is None:
            raise not_found("file", file_id)
        return stored

    def delete(self, file_id: str) -> dict[str, Any]:
        """Forget a file; returns the deletion answer."""
        self.get(file_id)
        del self.files[file_id]
        return {"id": file_id, "type": "file_deleted"}
