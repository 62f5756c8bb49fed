"""The fake server's vaults (with credentials), skills (with versions) and memory stores
(with memories and their versions): state and handlers, routed by ``_server``.

Rules this module keeps (shapes: the official SDK's captured answers):

* Lists are newest first (``order=desc``), except memories: in path order.
  ``include_archived`` shows archived vaults, credentials and stores.
* A credential's secrets (``token``, ``access_token``, ``refresh_token``,
  ``secret_value``, ``client_secret``) are kept apart (`secrets`) and never
  answered; an update may rotate them, never change the ``auth`` type. A
  vault's create answer lists its credentials (none yet); other answers do not.
* A skill is created from a multipart body: ``files`` parts (one must be a
  ``SKILL.md``, whose front matter gives ``name`` and ``description``),
  ``display_title``, ``metadata`` (JSON). Each upload is a version named by a
  growing string of digits; the content endpoint answers a zip of its files.
  Deleting a skill deletes its versions.
* A memory's ``path`` starts with ``/`` and is unique in its store (409
  otherwise). ``view``: ``full`` answers ``content``, ``basic`` answers it as
  ``null``; retrieves default to ``full``, the rest to ``basic``. A
  ``content_sha256`` precondition (update) or ``expected_content_sha256``
  (delete) that does not match is a 409. Every create, change and delete of a
  memory adds a version (``created``, ``modified``, ``deleted``); a redacted
  version loses its content. An archived store takes no writes (400).
* Deletions answer ``{id, type: "<kind>_deleted"}``; later uses are 404s.
"""

from __future__ import annotations

import copy
import hashlib
import io
import time
import zipfile
from collections.abc import Callable, Mapping
from typing import Any

from aiohttp import web

from ._params import (
    FormPart,
    Handler,
    archiver,
    check_metadata,
    check_str,
    form_fields,
    form_json,
    int_param,
    lister,
    paginate,
    parse_multipart,
    read_body,
    show,
)
from ._wire import Ids, bad_request, conflict, find, json_response

__all__ = ["ManagedStore"]

#: Fields of a credential's ``auth`` (and its ``refresh``) that are never answered.
SECRET_FIELDS = frozenset(
    {"token", "access_token", "refresh_token", "secret_value", "client_secret", "password"}
)
_AUTH_REQUIRED = {
    "static_bearer": ("token", "mcp_server_url"),
    "mcp_oauth": ("access_token", "mcp_server_url"),
    "environment_variable": ("secret_name", "secret_value"),
}
_API_ACTOR = {"type": "api_actor", "api_key_id": "apikey_fake"}


def _public(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _public(v) for k, v in value.items() if k not in SECRET_FIELDS}
    return copy.deepcopy(value)


def _secret_part(value: Any) -> Any:
    if isinstance(value, dict):
        out = {k: v for k, v in value.items() if k in SECRET_FIELDS}
        for k, v in value.items():
            if isinstance(v, dict) and (inner := _secret_part(v)):
                out[k] = inner
        return out
    return {}


def _patch_metadata(current: dict[str, str], body: Mapping[str, Any]) -> dict[str, str]:
    """Metadata update semantics: given keys set, a ``null`` value deletes the key."""
    patch = body.get("metadata")
    if patch is None:
        return current
    if not isinstance(patch, dict) or not all(
        isinstance(k, str) and (v is None or isinstance(v, str)) for k, v in patch.items()
    ):
        raise bad_request("metadata must be an object of string values", "metadata")
    merged = {**current, **patch}
    return {k: v for k, v in merged.items() if v is not None}


def _front_matter(text: str) -> dict[str, str]:
    lines = text.splitlines()
    if not lines or lines[0].strip() != "---":
        return {}
    out: dict[str, str] = {}
    for line in lines[1:]:
        if line.strip() == "---":
            break
        key, sep, value = line.partition(":")
        if sep:
            out[key.strip()] = value.strip().strip("\"'")
    return out


def _sha256(content: str | None) -> str:
    return hashlib.sha256((content or "").encode()).hexdigest()


class ManagedStore:
    """Vaults, skills and memory stores of one fake server (``server.managed``)."""

    def __init__(self, ids: Ids, create_status: Callable[[], int]) -> None:
        self._ids = ids
        self._create_status = create_status
        self.vaults: dict[str, dict[str, Any]] = {}
        self.credentials: dict[str, dict[str, dict[str, Any]]] = {}
        #: The secrets of each credential, by credential id (never answered).
        self.secrets: dict[str, dict[str, Any]] = {}
        self.skills: dict[str, dict[str, Any]] = {}
        self.skill_versions: dict[str, dict[str, dict[str, Any]]] = {}
        self.skill_files: dict[tuple[str, str], list[tuple[str, bytes]]] = {}
        self.memory_stores: dict[str, dict[str, Any]] = {}
        self.memories: dict[str, dict[str, dict[str, Any]]] = {}
        self.memory_versions: dict[str, dict[str, dict[str, Any]]] = {}
        self._last_version = 0

    def add_routes(self, router: web.UrlDispatcher, base: str) -> None:
        """Register every endpoint under ``base``."""
        v, s, m = f"{base}/vaults", f"{base}/skills", f"{base}/memory_stores"
        cred = f"{v}/{{vid}}/credentials"
        routes: list[tuple[str, str, Handler]] = [
            ("POST", v, self._create_vault),
            ("GET", v, lister(lambda _: [*self.vaults.values()], order="desc", archivable=True)),
            ("GET", f"{v}/{{vid}}", show(self._vault)),
            ("DELETE", f"{v}/{{vid}}", self._delete_vault),
            ("POST", f"{v}/{{vid}}/archive", archiver(self._vault, self._ids)),
            ("POST", cred, self._create_credential),
            ("GET", cred, lister(self._credentials, order="desc", archivable=True)),
            ("GET", f"{cred}/{{cid}}", show(self._credential)),
            ("POST", f"{cred}/{{cid}}", self._update_credential),
            ("DELETE", f"{cred}/{{cid}}", self._delete_credential),
            ("POST", f"{cred}/{{cid}}/archive", archiver(self._credential, self._ids)),
            ("POST", f"{cred}/{{cid}}/mcp_oauth_validate", self._validate),
            ("POST", s, self._create_skill),
            ("GET", s, self._list_skills),
            ("GET", f"{s}/{{sid}}", show(self._skill)),
            ("DELETE", f"{s}/{{sid}}", self._delete_skill),
            ("POST", f"{s}/{{sid}}/versions", self._create_skill_version),
            ("GET", f"{s}/{{sid}}/versions", lister(self._skill_versions, order="desc")),
            ("GET", f"{s}/{{sid}}/versions/{{ver}}", show(self._skill_version)),
            ("DELETE", f"{s}/{{sid}}/versions/{{ver}}", self._delete_skill_version),
            ("GET", f"{s}/{{sid}}/versions/{{ver}}/content", self._skill_content),
            ("POST", m, self._create_store),
            (
                "GET",
                m,
                lister(lambda _: [*self.memory_stores.values()], order="desc", archivable=True),
            ),
            ("GET", f"{m}/{{mid}}", show(self._store)),
            ("POST", f"{m}/{{mid}}", self._update_store),
            ("DELETE", f"{m}/{{mid}}", self._delete_store),
            ("POST", f"{m}/{{mid}}/archive", archiver(self._store, self._ids, status="archived")),
            ("POST", f"{m}/{{mid}}/memories", self._create_memory),
            ("GET", f"{m}/{{mid}}/memories", self._list_memories),
            ("GET", f"{m}/{{mid}}/memories/{{mem}}", self._get_memory),
            ("POST", f"{m}/{{mid}}/memories/{{mem}}", self._update_memory),
            ("DELETE", f"{m}/{{mid}}/memories/{{mem}}", self._delete_memory),
            ("GET", f"{m}/{{mid}}/memory_versions", self._list_memory_versions),
            ("GET", f"{m}/{{mid}}/memory_versions/{{ver}}", self._get_memory_version),
            ("POST", f"{m}/{{mid}}/memory_versions/{{ver}}/redact", self._redact_version),
        ]
        for method, path, handler in routes:
            router.add_route(method, path, handler)

    # ------------------------------------------------------------------ vaults

    def _vault(self, request: web.Request) -> dict[str, Any]:
        return find(self.vaults, request.match_info["vid"], "vault")

    async def _create_vault(self, request: web.Request) -> web.Response:
        body = await read_body(request)
        fields = {
            "display_name": check_str(body, "display_name", required=True),
            "metadata": check_metadata(body) or {},
        }
        vault = self._ids.stamped("vault", "vault", fields)
        self.vaults[vault["id"]] = vault
        self.credentials[vault["id"]] = {}
        return json_response(self._create_status(), {**vault, "credentials": []})

    async def _delete_vault(self, request: web.Request) -> web.Response:
        vault = self._vault(request)
        for cred_id in self.credentials.pop(vault["id"], {}):
            self.secrets.pop(cred_id, None)
        del self.vaults[vault["id"]]
        return json_response(200, {"id": vault["id"], "type": "vault_deleted"})

    # ------------------------------------------------------------------ credentials

    def _credentials(self, request: web.Request) -> list[dict[str, Any]]:
        return list(self.credentials[self._vault(request)["id"]].values())

    def _credential(self, request: web.Request) -> dict[str, Any]:
        vault = self._vault(request)
        return find(self.credentials[vault["id"]], request.match_info["cid"], "credential")

    @staticmethod
    def _check_auth(auth: Any, *, creating: bool, kind: str | None = None) -> dict[str, Any]:
        if not isinstance(auth, dict):
            raise bad_request("auth must be an object", "auth")
        auth_type = auth.get("type")
        if auth_type not in _AUTH_REQUIRED:
            raise bad_request(
                "auth.type must be static_bearer, mcp_oauth or environment_variable", "auth.type"
            )
        if kind is not None and auth_type != kind:
            raise bad_request(f"auth.type cannot change (it is {kind})", "auth.type")
        for name in _AUTH_REQUIRED[auth_type] if creating else ():
            check_str(auth, name, required=True, within="auth")
        if creating and auth_type == "environment_variable" and "networking" not in auth:
            raise bad_request("Missing required field: auth.networking", "auth.networking")
        return auth

    async def _create_credential(self, request: web.Request) -> web.Response:
        vault = self._vault(request)
        if vault["archived_at"] is not None:
            raise bad_request("vault is archived")
        body = await read_body(request)
        auth = self._check_auth(body.get("auth"), creating=True)
        fields = {
            "vault_id": vault["id"],
            "auth": _public(auth),
            "display_name": check_str(body, "display_name"),
            "metadata": check_metadata(body) or {},
        }
        cred = self._ids.stamped("vcred", "vault_credential", fields)
        self.credentials[vault["id"]][cred["id"]] = cred
        self.secrets[cred["id"]] = _secret_part(auth)
        return json_response(self._create_status(), cred)

    async def _update_credential(self, request: web.Request) -> web.Response:
        cred = self._credential(request)
        body = await read_body(request)
        if "auth" in body:
            auth = self._check_auth(body["auth"], creating=False, kind=cred["auth"]["type"])
            cred["auth"] = {**cred["auth"], **_public(auth)}
            self.secrets[cred["id"]] = {**self.secrets[cred["id"]], **_secret_part(auth)}
        cred["metadata"] = _patch_metadata(cred["metadata"], body)
        cred["updated_at"] = self._ids.now()
        return json_response(200, cred)

    async def _delete_credential(self, request: web.Request) -> web.Response:
        cred = self._credential(request)
        del self.credentials[cred["vault_id"]][cred["id"]]
        self.secrets.pop(cred["id"], None)
        return json_response(200, {"id": cred["id"], "type": "vault_credential_deleted"})

    async def _validate(self, request: web.Request) -> web.Response:
        cred = self._credential(request)
        if cred["auth"]["type"] != "mcp_oauth":
            raise bad_request("only an mcp_oauth credential can be validated")
        secrets = self.secrets.get(cred["id"], {})
        has_refresh = bool(secrets.get("refresh", {}).get("refresh_token"))
        probe = {
            "status_code": 200,
            "content_type": "application/json",
            "body": "{}",
            "body_truncated": False,
        }
        return json_response(
            200,
            {
                "credential_id": cred["id"],
                "vault_id": cred["vault_id"],
                "type": "vault_credential_validation",
                "status": "valid",
                "validated_at": self._ids.now(),
                "has_refresh_token": has_refresh,
                "refresh": {
                    "status": "skipped" if has_refresh else "no_refresh_token",
                    "http_response": None,
                },
                "mcp_probe": {"method": "initialize", "http_response": probe},
            },
        )

    # ------------------------------------------------------------------ skills

    def _skill(self, request: web.Request) -> dict[str, Any]:
        return find(self.skills, request.match_info["sid"], "skill")

    def _skill_versions(self, request: web.Request) -> list[dict[str, Any]]:
        return list(self.skill_versions[self._skill(request)["id"]].values())

    def _skill_version(self, request: web.Request) -> dict[str, Any]:
        skill = self._skill(request)
        return find(self.skill_versions[skill["id"]], request.match_info["ver"], "skill version")

    async def _skill_form(
        self, request: web.Request
    ) -> tuple[list[tuple[str, bytes]], dict[str, str]]:
        parts: list[FormPart] = parse_multipart(
            request.headers.get("Content-Type", ""), await request.read()
        )
        files = [(p.filename or "", p.data) for p in parts if p.name == "files"]
        fields = form_fields(parts)
        if not files:
            raise bad_request("Missing required field: files", "files")
        return files, fields

    def _new_version(self, skill_id: str, files: list[tuple[str, bytes]]) -> dict[str, Any]:
        manifest = [(name, data) for name, data in files if name.rsplit("/", 1)[-1] == "SKILL.md"]
        if not manifest:
            raise bad_request("files must include a SKILL.md", "files")
        path, data = manifest[0]
        meta = _front_matter(data.decode("utf-8", errors="replace"))
        name = meta.get("name") or path.rsplit("/", 1)[0] or "skill"
        self._last_version = max(self._last_version + 1, time.time_ns() // 1000)
        version: dict[str, Any] = {
            "id": self._ids.resource("skillver"),
            "type": "skill_version",
            "skill_id": skill_id,
            "version": str(self._last_version),
            "name": name,
            "description": meta.get("description", ""),
            "directory": path.rsplit("/", 1)[0] if "/" in path else name,
            "created_at": self._ids.now(),
        }
        self.skill_versions.setdefault(skill_id, {})[version["version"]] = version
        self.skill_files[(skill_id, version["version"])] = files
        return version

    async def _create_skill(self, request: web.Request) -> web.Response:
        files, fields = await self._skill_form(request)
        metadata = form_json(fields, "metadata", {})
        check_metadata({"metadata": metadata})
        skill_id = self._ids.resource("skill")
        version = self._new_version(skill_id, files)
        skill: dict[str, Any] = {
            "id": skill_id,
            "type": "skill",
            "display_title": fields.get("display_title") or version["name"],
            "source": "custom",
            "latest_version": version["version"],
            "metadata": metadata,
            "created_at": version["created_at"],
            "updated_at": version["created_at"],
        }
        self.skills[skill_id] = skill
        return json_response(self._create_status(), skill)

    async def _list_skills(self, request: web.Request) -> web.Response:
        source = request.query.get("source")
        page = paginate(
            list(self.skills.values()),
            request.query,
            default_order="desc",
            keep=lambda it: source is None or it["source"] == source,
            aliases=True,
        )
        return json_response(200, page)

    async def _delete_skill(self, request: web.Request) -> web.Response:
        skill = self._skill(request)
        for version in self.skill_versions.pop(skill["id"], {}):
            self.skill_files.pop((skill["id"], version), None)
        del self.skills[skill["id"]]
        return json_response(200, {"id": skill["id"], "type": "skill_deleted"})

    async def _create_skill_version(self, request: web.Request) -> web.Response:
        skill = self._skill(request)
        files, _ = await self._skill_form(request)
        version = self._new_version(skill["id"], files)
        skill["latest_version"] = version["version"]
        skill["updated_at"] = version["created_at"]
        return json_response(self._create_status(), version)

    async def _delete_skill_version(self, request: web.Request) -> web.Response:
        version = self._skill_version(request)
        skill = self.skills[version["skill_id"]]
        versions = self.skill_versions[skill["id"]]
        del versions[version["version"]]
        self.skill_files.pop((skill["id"], version["version"]), None)
        if skill["latest_version"] == version["version"]:
            skill["latest_version"] = next(reversed(versions), None)
        return json_response(200, {"id": version["version"], "type": "skill_version_deleted"})

    async def _skill_content(self, request: web.Request) -> web.Response:
        version = self._skill_version(request)
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w") as archive:
            for name, data in self.skill_files[(version["skill_id"], version["version"])]:
                archive.writestr(name or "unnamed", data)
        return web.Response(
            body=buffer.getvalue(),
            content_type="application/zip",
            headers={"Content-Disposition": f'attachment; filename="{version["directory"]}.zip"'},
        )

    # ------------------------------------------------------------------ memory stores

    def _store(self, request: web.Request, *, writing: bool = False) -> dict[str, Any]:
        store = find(self.memory_stores, request.match_info["mid"], "memory store")
        if writing and store["archived_at"] is not None:
            raise bad_request("memory store is archived")
        return store

    async def _create_store(self, request: web.Request) -> web.Response:
        body = await read_body(request)
        fields = {
            "name": check_str(body, "name", required=True),
            "description": check_str(body, "description") or "",
            "status": "active",
            "entry_count": 0,
            "total_size": 0,
            "metadata": check_metadata(body) or {},
        }
        store = self._ids.stamped("memstore", "memory_store", fields)
        self.memory_stores[store["id"]] = store
        self.memories[store["id"]] = {}
        self.memory_versions[store["id"]] = {}
        return json_response(self._create_status(), store)

    async def _update_store(self, request: web.Request) -> web.Response:
        store = self._store(request)
        body = await read_body(request)
        if "name" in body:
            store["name"] = check_str(body, "name", required=True)
        if "description" in body:
            store["description"] = check_str(body, "description") or ""
        store["metadata"] = _patch_metadata(store["metadata"], body)
        store["updated_at"] = self._ids.now()
        return json_response(200, store)

    async def _delete_store(self, request: web.Request) -> web.Response:
        store = self._store(request)
        for table in (self.memory_stores, self.memories, self.memory_versions):
            del table[store["id"]]
        return json_response(200, {"id": store["id"], "type": "memory_store_deleted"})

    # ------------------------------------------------------------------ memories

    @staticmethod
    def _view(request: web.Request, default: str) -> str:
        view = request.query.get("view", default)
        if view not in ("basic", "full"):
            raise bad_request("view must be basic or full", "view")
        return view

    @staticmethod
    def _shown(obj: dict[str, Any], view: str) -> dict[str, Any]:
        return obj if view == "full" else {**obj, "content": None}

    def _memory(self, request: web.Request, store: dict[str, Any]) -> dict[str, Any]:
        return find(self.memories[store["id"]], request.match_info["mem"], "memory")

    def _check_path(self, store: dict[str, Any], path: str, memory_id: str | None = None) -> None:
        if not path.startswith("/"):
            raise bad_request("path must start with /", "path")
        for other in self.memories[store["id"]].values():
            if other["path"] == path and other["id"] != memory_id:
                raise conflict(f"a memory exists at {path}: {other['id']}")

    def _record(self, store: dict[str, Any], memory: dict[str, Any], operation: str) -> None:
        version: dict[str, Any] = {
            "id": self._ids.resource("memver"),
            "type": "memory_version",
            "memory_id": memory["id"],
            "memory_store_id": store["id"],
            "operation": operation,
            "path": memory["path"],
            "content": None if operation == "deleted" else memory["content"],
            "content_sha256": memory["content_sha256"],
            "content_size_bytes": memory["content_size_bytes"],
            "created_by": dict(_API_ACTOR),
            "created_at": self._ids.now(),
            "redacted_at": None,
            "redacted_by": None,
        }
        self.memory_versions[store["id"]][version["id"]] = version
        if operation != "deleted":
            memory["memory_version_id"] = version["id"]
        live = self.memories[store["id"]].values()
        store["entry_count"] = len(live)
        store["total_size"] = sum(m["content_size_bytes"] for m in live)

    @staticmethod
    def _set_content(memory: dict[str, Any], content: Any) -> None:
        if content is not None and not isinstance(content, str):
            raise bad_request("content must be a string", "content")
        memory["content"] = content or ""
        memory["content_sha256"] = _sha256(content)
        memory["content_size_bytes"] = len((content or "").encode())

    async def _create_memory(self, request: web.Request) -> web.Response:
        store = self._store(request, writing=True)
        view = self._view(request, "basic")
        body = await read_body(request)
        path = check_str(body, "path", required=True) or ""
        self._check_path(store, path)
        if "content" not in body:
            raise bad_request("Missing required field: content", "content")
        now = self._ids.now()
        memory: dict[str, Any] = {
            "id": self._ids.resource("mem"),
            "type": "memory",
            "memory_store_id": store["id"],
            "path": path,
            "metadata": check_metadata(body) or {},
            "created_at": now,
            "updated_at": now,
        }
        self._set_content(memory, body["content"])
        self.memories[store["id"]][memory["id"]] = memory
        self._record(store, memory, "created")
        return json_response(self._create_status(), self._shown(memory, view))

    async def _list_memories(self, request: web.Request) -> web.Response:
        store = self._store(request)
        view = self._view(request, "basic")
        prefix = request.query.get("path_prefix", "")
        depth = int_param(request.query, "depth")
        items: dict[str, dict[str, Any]] = {}
        for memory in self.memories[store["id"]].values():
            if not memory["path"].startswith(prefix):
                continue
            rest = memory["path"][len(prefix) :].lstrip("/").split("/")
            if depth is not None and len(rest) > depth:
                base = prefix.rstrip("/") + "/" + "/".join(rest[:depth]) + "/"
                items[base] = {"type": "memory_prefix", "path": base.replace("//", "/")}
            else:
                items[memory["path"]] = self._shown(memory, view)
        ordered = [items[k] for k in sorted(items)]
        page = paginate(
            ordered,
            request.query,
            default_order="asc",
            key=lambda it: it.get("id") or it["path"],
        )
        return json_response(200, page)

    async def _get_memory(self, request: web.Request) -> web.Response:
        memory = self._memory(request, self._store(request))
        return json_response(200, self._shown(memory, self._view(request, "full")))

    async def _update_memory(self, request: web.Request) -> web.Response:
        store = self._store(request, writing=True)
        memory = self._memory(request, store)
        view = self._view(request, "basic")
        body = await read_body(request)
        expected = check_str(body, "content_sha256")
        if expected is not None and expected != memory["content_sha256"]:
            raise conflict("memory precondition failed: content changed")
        if "path" in body:
            path = check_str(body, "path", required=True) or ""
            self._check_path(store, path, memory["id"])
            memory["path"] = path
        if "content" in body:
            self._set_content(memory, body["content"])
        memory["metadata"] = _patch_metadata(memory["metadata"], body)
        memory["updated_at"] = self._ids.now()
        self._record(store, memory, "modified")
        return json_response(200, self._shown(memory, view))

    async def _delete_memory(self, request: web.Request) -> web.Response:
        store = self._store(request, writing=True)
        memory = self._memory(request, store)
        expected = request.query.get("expected_content_sha256")
        if expected is not None and expected != memory["content_sha256"]:
            raise conflict("memory precondition failed: content changed")
        del self.memories[store["id"]][memory["id"]]
        self._record(store, memory, "deleted")
        return json_response(200, {"id": memory["id"], "type": "memory_deleted"})

    # ------------------------------------------------------------------ memory versions

    def _memory_version(self, request: web.Request, store: dict[str, Any]) -> dict[str, Any]:
        return find(self.memory_versions[store["id"]], request.match_info["ver"], "memory version")

    async def _list_memory_versions(self, request: web.Request) -> web.Response:
        store = self._store(request)
        view = self._view(request, "basic")
        query = request.query
        wanted = {
            name: query[name] for name in ("memory_id", "operation", "session_id") if name in query
        }

        def keep(version: dict[str, Any]) -> bool:
            actor = version["created_by"] or {}
            return all(
                (actor.get(name) if name == "session_id" else version.get(name)) == value
                for name, value in wanted.items()
            )

        versions = [self._shown(v, view) for v in self.memory_versions[store["id"]].values()]
        return json_response(200, paginate(versions, query, default_order="desc", keep=keep))

    async def _get_memory_version(self, request: web.Request) -> web.Response:
        store = self._store(request)
        version = self._memory_version(request, store)
        return json_response(200, self._shown(version, self._view(request, "full")))

    async def _redact_version(self, request: web.Request) -> web.Response:
        store = self._store(request, writing=True)
        version = self._memory_version(request, store)
        if version["redacted_at"] is None:
            version.update(content=None, redacted_at=self._ids.now(), redacted_by=dict(_API_ACTOR))
        return json_response(200, version)
