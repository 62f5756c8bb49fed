"""SHELL: what agents are given to use: vaults (credentials), skills and memory stores.

``client.vaults`` (with ``.credentials``), ``client.skills`` (with
``.versions``) and ``client.memory_stores`` (with ``.memories`` and
``.memory_versions``), named and shaped as the official SDK's, working as
every resource of :mod:`qoder_async._api.resources` does
(``credentials.retrieve(vault_id, credential_id)``).

A credential's secrets (``token``, ``access_token``, ``refresh_token``,
``secret_value``...) go out in ``auth`` and never come back: the models leave
them out even if a server echoed them.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, Unpack, overload

from qoder_async._api.resources import CallOptions, _put, _Resource
from qoder_async._core.convert import (
    structure_credential,
    structure_credential_validation,
    structure_memory,
    structure_memory_item,
    structure_memory_store,
    structure_memory_version,
    structure_skill,
    structure_skill_version,
    structure_vault,
)
from qoder_async._core.models import (
    CredentialValidation,
    Deleted,
    Memory,
    MemoryPrefix,
    MemoryStore,
    MemoryVersion,
    Skill,
    SkillVersion,
    Vault,
    VaultCredential,
)
from qoder_async._shell.files import (
    DEFAULT_DOWNLOAD_READ_TIMEOUT,
    FileDownload,
    FileInput,
    prepare_files,
)
from qoder_async._shell.http import HTTP
from qoder_async._shell.pagination import AsyncPaginator, list_params

__all__ = [
    "MemoryStoreMemories",
    "MemoryStoreMemoryVersions",
    "MemoryStores",
    "SkillVersions",
    "Skills",
    "VaultCredentials",
    "Vaults",
]

View = Literal["basic", "full"]


def _view(view: View | None) -> list[tuple[str, str]] | None:
    return list_params(view=view) or None


# --------------------------------------------------------------------------- vaults


class VaultCredentials(_Resource):
    """``client.vaults.credentials``: ``/vaults/{vault_id}/credentials``.

    ``auth`` is one of ``{"type": "static_bearer", "token", "mcp_server_url"}``,
    ``{"type": "mcp_oauth", "access_token", "mcp_server_url", "expires_at",
    "refresh"}`` or ``{"type": "environment_variable", "secret_name",
    "secret_value", "networking", "injection_location"}`` (the official SDK's
    params).
    """

    _base = "/vaults/{}/credentials"

    async def create(
        self,
        vault_id: str,
        *,
        auth: Mapping[str, Any],
        display_name: str | None = None,
        metadata: Mapping[str, str] | None = None,
        idempotency_key: str | None = None,
        **options: Unpack[CallOptions],
    ) -> VaultCredential:
        """Add a credential to a vault (``POST /vaults/{vault_id}/credentials``)."""
        body = _put({"auth": dict(auth)}, display_name=display_name, metadata=metadata)
        path = self._path(vault_id)
        return await self._call(
            "POST", path, structure_credential, options, idempotency_key, json=body
        )

    async def retrieve(
        self, vault_id: str, credential_id: str, **options: Unpack[CallOptions]
    ) -> VaultCredential:
        """Fetch a credential (``GET /vaults/{vault_id}/credentials/{credential_id}``)."""
        path = self._path(vault_id, credential_id)
        return await self._call("GET", path, structure_credential, options)

    async def update(
        self,
        vault_id: str,
        credential_id: str,
        *,
        auth: Mapping[str, Any] | None = None,
        metadata: Mapping[str, str | None] | None = None,
        idempotency_key: str | None = None,
        **options: Unpack[CallOptions],
    ) -> VaultCredential:
        """Rotate a credential's secret or change its metadata (``POST .../{credential_id}``)."""
        body = _put({}, auth=auth, metadata=metadata)
        path = self._path(vault_id, credential_id)
        return await self._call(
            "POST", path, structure_credential, options, idempotency_key, json=body
        )

    def list(
        self,
        vault_id: str,
        *,
        limit: int | None = None,
        include_archived: bool | None = None,
        **options: Unpack[CallOptions],
    ) -> AsyncPaginator[VaultCredential]:
        """Iterate a vault's credentials (``GET /vaults/{vault_id}/credentials``)."""
        params = list_params(limit=limit, include_archived=include_archived)
        return self._list(self._path(vault_id), params, structure_credential, options)

    async def delete(
        self,
        vault_id: str,
        credential_id: str,
        *,
        idempotency_key: str | None = None,
        **options: Unpack[CallOptions],
    ) -> Deleted:
        """Delete a credential (``DELETE``): ``type`` ``vault_credential_deleted``."""
        path = self._path(vault_id, credential_id)
        return await self._delete(path, "vault_credential_deleted", options, idempotency_key)

    async def archive(
        self,
        vault_id: str,
        credential_id: str,
        *,
        idempotency_key: str | None = None,
        **options: Unpack[CallOptions],
    ) -> VaultCredential:
        """Archive a credential (``POST .../{credential_id}/archive``)."""
        path = self._path(vault_id, credential_id, action="archive")
        return await self._call("POST", path, structure_credential, options, idempotency_key)

    async def mcp_oauth_validate(
        self,
        vault_id: str,
        credential_id: str,
        *,
        idempotency_key: str | None = None,
        **options: Unpack[CallOptions],
    ) -> CredentialValidation:
        """Check an MCP credential against its server (``POST .../mcp_oauth_validate``)."""
        path = self._path(vault_id, credential_id, action="mcp_oauth_validate")
        validation = structure_credential_validation
        return await self._call("POST", path, validation, options, idempotency_key)


class Vaults(_Resource):
    """``client.vaults``: create, retrieve, list, delete, archive (``/vaults``).

    A session uses a vault's credentials when created with ``vault_ids=[...]``.
    """

    _base = "/vaults"

    def __init__(self, http: HTTP) -> None:
        super().__init__(http)
        self.credentials = VaultCredentials(http)

    async def create(
        self,
        *,
        display_name: str,
        metadata: Mapping[str, str] | None = None,
        idempotency_key: str | None = None,
        **options: Unpack[CallOptions],
    ) -> Vault:
        """Create a vault (``POST /vaults``)."""
        body = _put({"display_name": display_name}, metadata=metadata)
        return await self._call(
            "POST", self._path(), structure_vault, options, idempotency_key, json=body
        )

    async def retrieve(self, vault_id: str, **options: Unpack[CallOptions]) -> Vault:
        """Fetch a vault (``GET /vaults/{vault_id}``)."""
        return await self._call("GET", self._path(vault_id), structure_vault, options)

    def list(
        self,
        *,
        limit: int | None = None,
        include_archived: bool | None = None,
        **options: Unpack[CallOptions],
    ) -> AsyncPaginator[Vault]:
        """Iterate vaults (``GET /vaults``)."""
        params = list_params(limit=limit, include_archived=include_archived)
        return self._list(self._path(), params, structure_vault, options)

    async def delete(
        self, vault_id: str, *, idempotency_key: str | None = None, **options: Unpack[CallOptions]
    ) -> Deleted:
        """Delete a vault and its credentials (``DELETE /vaults/{vault_id}``)."""
        return await self._delete(self._path(vault_id), "vault_deleted", options, idempotency_key)

    async def archive(
        self, vault_id: str, *, idempotency_key: str | None = None, **options: Unpack[CallOptions]
    ) -> Vault:
        """Archive a vault (``POST /vaults/{vault_id}/archive``)."""
        path = self._path(vault_id, action="archive")
        return await self._call("POST", path, structure_vault, options, idempotency_key)


# --------------------------------------------------------------------------- skills


class SkillVersions(_Resource):
    """``client.skills.versions``: ``/skills/{skill_id}/versions``; a version is named by
    its ``version`` string."""

    _base = "/skills/{}/versions"

    async def create(
        self,
        skill_id: str,
        *,
        files: Sequence[FileInput],
        idempotency_key: str | None = None,
        **options: Unpack[CallOptions],
    ) -> SkillVersion:
        """Upload a new version's files (``POST /skills/{skill_id}/versions``, multipart).

        ``files`` as for :meth:`Skills.create`.
        """
        path = self._path(skill_id)
        upload = await prepare_files("files", files, fields=dict(options.pop("extra_body", {})))
        return await self._upload(path, upload, structure_skill_version, idempotency_key, options)

    async def retrieve(
        self, skill_id: str, version: str, **options: Unpack[CallOptions]
    ) -> SkillVersion:
        """Fetch a version (``GET /skills/{skill_id}/versions/{version}``)."""
        path = self._path(skill_id, version)
        return await self._call("GET", path, structure_skill_version, options)

    def list(
        self, skill_id: str, *, limit: int | None = None, **options: Unpack[CallOptions]
    ) -> AsyncPaginator[SkillVersion]:
        """Iterate a skill's versions, newest first (``GET /skills/{skill_id}/versions``)."""
        params = list_params(limit=limit)
        return self._list(self._path(skill_id), params, structure_skill_version, options)

    async def delete(
        self,
        skill_id: str,
        version: str,
        *,
        idempotency_key: str | None = None,
        **options: Unpack[CallOptions],
    ) -> Deleted:
        """Delete a version (``DELETE``); the answer's ``id`` is the version string."""
        path = self._path(skill_id, version)
        return await self._delete(path, "skill_version_deleted", options, idempotency_key)

    @overload
    async def download(
        self,
        skill_id: str,
        version: str,
        *,
        to: None = None,
        read_timeout: float | None = ...,
        **options: Unpack[CallOptions],
    ) -> FileDownload: ...

    @overload
    async def download(
        self,
        skill_id: str,
        version: str,
        *,
        to: str | os.PathLike[str],
        read_timeout: float | None = ...,
        **options: Unpack[CallOptions],
    ) -> Path: ...

    async def download(
        self,
        skill_id: str,
        version: str,
        *,
        to: str | os.PathLike[str] | None = None,
        read_timeout: float | None = DEFAULT_DOWNLOAD_READ_TIMEOUT,
        **options: Unpack[CallOptions],
    ) -> FileDownload | Path:
        """A version's files as a zip (``GET /skills/{skill_id}/versions/{version}/content``),
        handled as ``client.files.download`` handles a file."""
        path = self._path(skill_id, version, action="content")
        return await self._download(path, to, read_timeout, options)


class Skills(_Resource):
    """``client.skills``: create, retrieve, list, delete (``/skills``).

    An agent uses one with ``skills=[{"type": "custom", "skill_id": ...}]``.
    """

    _base = "/skills"

    def __init__(self, http: HTTP) -> None:
        super().__init__(http)
        self.versions = SkillVersions(http)

    async def create(
        self,
        *,
        files: Sequence[FileInput],
        display_title: str | None = None,
        metadata: Mapping[str, str] | None = None,
        idempotency_key: str | None = None,
        **options: Unpack[CallOptions],
    ) -> Skill:
        """Create a skill from its files (``POST /skills``, multipart, one ``files`` part each).

        ``files`` is a list of what ``client.files.upload`` takes; give a
        ``(relative_path, content)`` tuple to name one inside the skill (a
        ``SKILL.md`` is required by the API).
        """
        fields = {"display_title": display_title, "metadata": metadata}
        fields.update(options.pop("extra_body", {}))
        upload = await prepare_files("files", files, fields=fields)
        return await self._upload(self._path(), upload, structure_skill, idempotency_key, options)

    async def retrieve(self, skill_id: str, **options: Unpack[CallOptions]) -> Skill:
        """Fetch a skill (``GET /skills/{skill_id}``)."""
        return await self._call("GET", self._path(skill_id), structure_skill, options)

    def list(
        self,
        *,
        limit: int | None = None,
        source: str | None = None,
        **options: Unpack[CallOptions],
    ) -> AsyncPaginator[Skill]:
        """Iterate skills (``GET /skills``); ``source``: ``custom`` or ``qoder`` only."""
        params = list_params(limit=limit, source=source)
        return self._list(self._path(), params, structure_skill, options)

    async def delete(
        self, skill_id: str, *, idempotency_key: str | None = None, **options: Unpack[CallOptions]
    ) -> Deleted:
        """Delete a skill (``DELETE /skills/{skill_id}``): ``type`` ``skill_deleted``."""
        return await self._delete(self._path(skill_id), "skill_deleted", options, idempotency_key)


# --------------------------------------------------------------------------- memory stores


class MemoryStoreMemories(_Resource):
    """``client.memory_stores.memories``: ``/memory_stores/{memory_store_id}/memories``.

    ``view="full"`` answers each memory with its ``content``; ``"basic"``
    (what lists, creates and updates answer by default) without.
    """

    _base = "/memory_stores/{}/memories"

    async def create(
        self,
        memory_store_id: str,
        *,
        path: str,
        content: str | None,
        metadata: Mapping[str, str] | None = None,
        view: View | None = None,
        idempotency_key: str | None = None,
        **options: Unpack[CallOptions],
    ) -> Memory:
        """Write a memory at ``path`` (``POST``); a path in use is a 409."""
        body = _put({"path": path, "content": content}, metadata=metadata)
        url = self._path(memory_store_id)
        return await self._call(
            "POST", url, structure_memory, options, idempotency_key, json=body, params=_view(view)
        )

    async def retrieve(
        self,
        memory_store_id: str,
        memory_id: str,
        *,
        view: View | None = None,
        **options: Unpack[CallOptions],
    ) -> Memory:
        """Read a memory, with its content unless ``view="basic"`` (``GET``)."""
        url = self._path(memory_store_id, memory_id)
        return await self._call("GET", url, structure_memory, options, params=_view(view))

    async def update(
        self,
        memory_store_id: str,
        memory_id: str,
        *,
        content: str | None = None,
        path: str | None = None,
        metadata: Mapping[str, str | None] | None = None,
        content_sha256: str | None = None,
        view: View | None = None,
        idempotency_key: str | None = None,
        **options: Unpack[CallOptions],
    ) -> Memory:
        """Change a memory's content, path (a rename) or metadata (``POST``).

        With ``content_sha256`` the change is made only if the memory's
        content still has that hash (else a 409): a safe read-modify-write.
        """
        body = _put(
            {}, content=content, path=path, metadata=metadata, content_sha256=content_sha256
        )
        url = self._path(memory_store_id, memory_id)
        return await self._call(
            "POST", url, structure_memory, options, idempotency_key, json=body, params=_view(view)
        )

    def list(
        self,
        memory_store_id: str,
        *,
        path_prefix: str | None = None,
        depth: int | None = None,
        limit: int | None = None,
        view: View | None = None,
        **options: Unpack[CallOptions],
    ) -> AsyncPaginator[Memory | MemoryPrefix]:
        """Iterate memories in path order (``GET``); with ``depth``, deeper ones are rolled up
        into :class:`MemoryPrefix` items."""
        params = list_params(path_prefix=path_prefix, depth=depth, limit=limit, view=view)
        return self._list(self._path(memory_store_id), params, structure_memory_item, options)

    async def delete(
        self,
        memory_store_id: str,
        memory_id: str,
        *,
        expected_content_sha256: str | None = None,
        idempotency_key: str | None = None,
        **options: Unpack[CallOptions],
    ) -> Deleted:
        """Delete a memory (``DELETE``), only if its content has ``expected_content_sha256``
        when given (else a 409)."""
        url = self._path(memory_store_id, memory_id)
        params = list_params(expected_content_sha256=expected_content_sha256) or None
        return await self._delete(url, "memory_deleted", options, idempotency_key, params)


class MemoryStoreMemoryVersions(_Resource):
    """``client.memory_stores.memory_versions``: the history of a store's memories
    (``/memory_stores/{memory_store_id}/memory_versions``)."""

    _base = "/memory_stores/{}/memory_versions"

    async def retrieve(
        self,
        memory_store_id: str,
        memory_version_id: str,
        *,
        view: View | None = None,
        **options: Unpack[CallOptions],
    ) -> MemoryVersion:
        """Fetch a version (``GET .../memory_versions/{memory_version_id}``)."""
        url = self._path(memory_store_id, memory_version_id)
        return await self._call("GET", url, structure_memory_version, options, params=_view(view))

    def list(
        self,
        memory_store_id: str,
        *,
        memory_id: str | None = None,
        operation: Literal["created", "modified", "deleted"] | None = None,
        session_id: str | None = None,
        limit: int | None = None,
        view: View | None = None,
        **options: Unpack[CallOptions],
    ) -> AsyncPaginator[MemoryVersion]:
        """Iterate versions, newest first (``GET``); filtered by memory, operation, session."""
        params = list_params(
            memory_id=memory_id, operation=operation, session_id=session_id, limit=limit, view=view
        )
        return self._list(self._path(memory_store_id), params, structure_memory_version, options)

    async def redact(
        self,
        memory_store_id: str,
        memory_version_id: str,
        *,
        idempotency_key: str | None = None,
        **options: Unpack[CallOptions],
    ) -> MemoryVersion:
        """Erase a version's content for good (``POST .../{memory_version_id}/redact``)."""
        url = self._path(memory_store_id, memory_version_id, action="redact")
        return await self._call("POST", url, structure_memory_version, options, idempotency_key)


class MemoryStores(_Resource):
    """``client.memory_stores``: create, retrieve, update, list, delete, archive
    (``/memory_stores``); a session mounts one as a ``memory_store`` resource."""

    _base = "/memory_stores"

    def __init__(self, http: HTTP) -> None:
        super().__init__(http)
        self.memories = MemoryStoreMemories(http)
        self.memory_versions = MemoryStoreMemoryVersions(http)

    async def create(
        self,
        *,
        name: str,
        description: str | None = None,
        metadata: Mapping[str, str] | None = None,
        idempotency_key: str | None = None,
        **options: Unpack[CallOptions],
    ) -> MemoryStore:
        """Create a memory store (``POST /memory_stores``)."""
        body = _put({"name": name}, description=description, metadata=metadata)
        return await self._call(
            "POST", self._path(), structure_memory_store, options, idempotency_key, json=body
        )

    async def retrieve(self, memory_store_id: str, **options: Unpack[CallOptions]) -> MemoryStore:
        """Fetch a memory store (``GET /memory_stores/{memory_store_id}``)."""
        return await self._call("GET", self._path(memory_store_id), structure_memory_store, options)

    async def update(
        self,
        memory_store_id: str,
        *,
        name: str | None = None,
        description: str | None = None,
        metadata: Mapping[str, str | None] | None = None,
        idempotency_key: str | None = None,
        **options: Unpack[CallOptions],
    ) -> MemoryStore:
        """Rename a store or change its description or metadata (``POST``; a ``None`` metadata
        value deletes that key)."""
        body = _put({}, name=name, description=description, metadata=metadata)
        url = self._path(memory_store_id)
        return await self._call(
            "POST", url, structure_memory_store, options, idempotency_key, json=body
        )

    def list(
        self,
        *,
        limit: int | None = None,
        include_archived: bool | None = None,
        **options: Unpack[CallOptions],
    ) -> AsyncPaginator[MemoryStore]:
        """Iterate memory stores (``GET /memory_stores``)."""
        params = list_params(limit=limit, include_archived=include_archived)
        return self._list(self._path(), params, structure_memory_store, options)

    async def delete(
        self,
        memory_store_id: str,
        *,
        idempotency_key: str | None = None,
        **options: Unpack[CallOptions],
    ) -> Deleted:
        """Delete a store with its memories and versions (``DELETE``)."""
        path = self._path(memory_store_id)
        return await self._delete(path, "memory_store_deleted", options, idempotency_key)

    async def archive(
        self,
        memory_store_id: str,
        *,
        idempotency_key: str | None = None,
        **options: Unpack[CallOptions],
    ) -> MemoryStore:
        """Archive a store: read-only from then on (``POST .../archive``)."""
        path = self._path(memory_store_id, action="archive")
        return await self._call("POST", path, structure_memory_store, options, idempotency_key)
