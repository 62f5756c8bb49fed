"""Vaults (with credentials), skills (with versions) and memory stores (with memories and
memory versions): the captured answers decode exactly, our client and the official SDK
(``qca``) both drive the fake through them, and a credential's secret stays secret."""

from __future__ import annotations

import io
import json
import logging
import zipfile
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path
from typing import Any

import attrs
import pytest
from qca import AsyncManaged, ConflictError, NotFoundError

from qoder_async import BadRequestError, QoderClient
from qoder_async import ConflictError as QoderConflictError
from qoder_async import NotFoundError as QoderNotFoundError
from qoder_async._core.convert import (
    ShapeError,
    structure_credential,
    structure_credential_validation,
    structure_deleted,
    structure_memory_item,
    structure_skill,
    structure_skill_version,
    structure_vault,
)
from qoder_async.testing import FakeQoderServer
from qoder_async.types import (
    CredentialAuth,
    Deleted,
    Memory,
    MemoryPrefix,
    Skill,
    SkillVersion,
    Vault,
    VaultCredential,
)

FIXTURE = Path(__file__).parent / "fixtures" / "managed" / "vaults-skills-memory.json"
CANARY = "sk-canary-7f3a91-never-shown"
SKILL_MD = b"---\nname: my-custom-skill\ndescription: Custom skill example\n---\nDo it well.\n"

DECODERS: dict[str, Callable[[Any], Any]] = {
    "vaults": structure_vault,
    "vaults.credentials": structure_credential,
    "skills": structure_skill,
    "skills.versions": structure_skill_version,
}


def answers() -> list[dict[str, Any]]:
    doc = json.loads(FIXTURE.read_text())
    assert "api-contracts.json" in doc["_comment"]
    out: list[dict[str, Any]] = doc["answers"]
    return out


def assert_typed(model: Any, raw: Mapping[str, Any], where: str) -> None:
    """Every field of ``raw`` is reachable, equal, on ``model`` (not only through ``.raw``)."""
    for key, value in raw.items():
        assert hasattr(model, key), f"{where}.{key} is only in .raw"
        got = getattr(model, key)
        if isinstance(value, Mapping) and attrs.has(type(got)):
            assert_typed(got, value, f"{where}.{key}")
        elif isinstance(value, list):
            assert len(got) == len(value), f"{where}.{key}"
            for i, (g, v) in enumerate(zip(got, value, strict=True)):
                if attrs.has(type(g)):
                    assert_typed(g, v, f"{where}.{key}[{i}]")
                else:
                    assert g == v, f"{where}.{key}[{i}]"
        else:
            assert got == value, f"{where}.{key}: {got!r} != {value!r}"


def decoder(answer_id: str) -> Callable[[Any], Any]:
    resource, _, method = answer_id.rpartition(".")
    if method == "delete":
        return structure_deleted("")
    if method == "mcpOAuthValidate":
        return structure_credential_validation
    return DECODERS[resource]


def test_every_captured_answer_decodes_exactly() -> None:
    empty = set()
    decoded = 0
    for answer in answers():
        response, answer_id = answer["response"], answer["id"]
        if response == {}:
            empty.add(answer_id)
            continue
        decode = decoder(answer_id)
        items = response["data"] if answer_id.endswith(".list") else [response]
        for item in items:
            assert_typed(decode(item), item, answer_id)
            decoded += 1
    assert decoded == 21
    # Empty captures (the SDK's types shape those models) and the raw zip download:
    assert empty == {a["id"] for a in answers() if a["id"].startswith("memoryStores.")} | {
        "skills.versions.download"
    }


def test_deleted_answers_name_their_type() -> None:
    kinds = {
        a["id"]: structure_deleted("")(a["response"]).type
        for a in answers()
        if a["id"].endswith(".delete") and a["response"]
    }
    assert kinds == {
        "vaults.delete": "vault_deleted",
        "vaults.credentials.delete": "vault_credential_deleted",
        "skills.delete": "skill_deleted",
        "skills.versions.delete": "skill_version_deleted",
    }


def test_a_credential_secret_never_shows_in_its_model() -> None:
    raw = {
        "id": "vcred_1",
        "type": "vault_credential",
        "auth": {
            "type": "mcp_oauth",
            "access_token": CANARY,
            "mcp_server_url": "https://mcp.example.com",
            "refresh": {"refresh_token": CANARY, "token_endpoint_auth": {"client_secret": CANARY}},
        },
    }
    cred = structure_credential(raw)
    assert isinstance(cred.auth, CredentialAuth)
    assert cred.auth.refresh == {"token_endpoint_auth": {}}
    typed = attrs.asdict(cred, filter=lambda a, _: a.name != "raw")
    for shown in (repr(cred), str(cred), repr(cred.auth), str(typed)):
        assert CANARY not in shown
    assert cred.raw is raw  # the answer as received: not in the repr


def test_the_wire_variants_of_the_rule_table() -> None:
    assert structure_skill({"id": "skill_1", "source": {"type": "qoder"}}).source == "qoder"
    assert structure_skill({"id": "skill_1", "source": "custom"}).source == "custom"
    prefix = {"type": "memory_prefix", "path": "/projects/"}
    assert structure_memory_item(prefix) == MemoryPrefix(path="/projects/")
    memory = structure_memory_item({"id": "mem_1", "type": "memory", "path": "/a.md"})
    assert isinstance(memory, Memory)
    with pytest.raises(ShapeError, match="path"):
        structure_memory_item({"type": "memory_prefix"})


def test_a_wrong_nested_field_is_named() -> None:
    bad = {"credential_id": "c", "mcp_probe": {"http_response": {"status_code": "401"}}}
    with pytest.raises(ShapeError, match=r"mcp_probe\.http_response\.status_code"):
        structure_credential_validation(bad)
    with pytest.raises(ShapeError, match="auth"):
        structure_credential({"id": "vcred_1", "auth": "static_bearer"})


# --------------------------------------------------------------------------- our client


@pytest.fixture
async def server() -> AsyncIterator[FakeQoderServer]:
    async with FakeQoderServer() as srv:
        yield srv


@pytest.fixture
async def client(server: FakeQoderServer) -> AsyncIterator[QoderClient]:
    async with QoderClient(token=server.token, base_url=server.base_url) as c:
        yield c


async def test_vaults_and_credentials_round_trip(
    client: QoderClient, server: FakeQoderServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    vaults = [await client.vaults.create(display_name=f"v{i}") for i in range(3)]
    assert all(isinstance(v, Vault) for v in vaults)
    assert vaults[0].raw["credentials"] == []  # only the create answer lists them
    listed = [v.id async for v in client.vaults.list(limit=1)]  # three pages
    assert listed == [v.id for v in reversed(vaults)]
    vault = vaults[0]
    cred = await client.vaults.credentials.create(
        vault.id,
        auth={"type": "static_bearer", "token": CANARY, "mcp_server_url": "https://x.example"},
        metadata={"team": "docs"},
    )
    assert isinstance(cred, VaultCredential)
    assert cred.vault_id == vault.id
    assert cred.auth == CredentialAuth(type="static_bearer", mcp_server_url="https://x.example")
    assert server.managed.secrets[cred.id] == {"token": CANARY}
    rotated = await client.vaults.credentials.update(
        vault.id, cred.id, auth={"type": "static_bearer", "token": "new"}, metadata={"team": None}
    )
    assert rotated.metadata == {}
    assert server.managed.secrets[cred.id] == {"token": "new"}
    assert (await client.vaults.credentials.retrieve(vault.id, cred.id)).id == cred.id
    assert [c.id async for c in client.vaults.credentials.list(vault.id)] == [cred.id]
    archived = await client.vaults.credentials.archive(vault.id, cred.id)
    assert archived.archived_at is not None
    assert [c async for c in client.vaults.credentials.list(vault.id)] == []
    deleted = await client.vaults.credentials.delete(vault.id, cred.id)
    assert deleted == Deleted(id=cred.id, type="vault_credential_deleted")
    assert (await client.vaults.archive(vault.id)).archived_at is not None
    assert await client.vaults.delete(vault.id) == Deleted(id=vault.id, type="vault_deleted")
    # The secret went out once, in the create's body, and nowhere else.
    for request in server.requests:
        if request.method != "POST" or not request.path.endswith("/credentials"):
            assert CANARY.encode() not in request.body
    assert CANARY not in caplog.text
    assert CANARY not in repr(cred) + str(rotated)


async def test_mcp_oauth_validate(client: QoderClient) -> None:
    vault = await client.vaults.create(display_name="v")
    cred = await client.vaults.credentials.create(
        vault.id,
        auth={
            "type": "mcp_oauth",
            "access_token": CANARY,
            "mcp_server_url": "https://mcp.example",
            "expires_at": "2026-08-20T08:00:00Z",
        },
    )
    assert cred.auth is not None
    assert cred.auth.expires_at == "2026-08-20T08:00:00Z"
    check = await client.vaults.credentials.mcp_oauth_validate(vault.id, cred.id)
    assert (check.credential_id, check.status, check.has_refresh_token) == (cred.id, "valid", False)
    assert check.mcp_probe is not None
    assert check.mcp_probe.http_response is not None
    assert check.mcp_probe.http_response.status_code == 200


async def test_skills_and_versions_round_trip(client: QoderClient, tmp_path: Path) -> None:
    skill = await client.skills.create(
        files=[("my-custom-skill/SKILL.md", SKILL_MD), ("my-custom-skill/run.py", b"print(1)")],
        display_title="My Custom Skill",
        metadata={"team": "docs"},
    )
    assert isinstance(skill, Skill)
    assert (skill.source, skill.display_title, skill.metadata) == (
        "custom",
        "My Custom Skill",
        {"team": "docs"},
    )
    second = await client.skills.versions.create(
        skill.id, files=[("my-custom-skill/SKILL.md", SKILL_MD.replace(b"example", b"v2"))]
    )
    assert isinstance(second, SkillVersion)
    assert (second.name, second.description, second.directory) == (
        "my-custom-skill",
        "Custom skill v2",
        "my-custom-skill",
    )
    assert second.version is not None
    assert (await client.skills.retrieve(skill.id)).latest_version == second.version
    versions = [v async for v in client.skills.versions.list(skill.id)]
    assert [v.version for v in versions] == [second.version, skill.latest_version]
    assert (await client.skills.versions.retrieve(skill.id, second.version)).id == second.id
    first = versions[1].version
    assert first is not None
    target = await client.skills.versions.download(skill.id, first, to=tmp_path / "s.zip")
    with zipfile.ZipFile(io.BytesIO(target.read_bytes())) as archive:
        assert sorted(archive.namelist()) == ["my-custom-skill/SKILL.md", "my-custom-skill/run.py"]
    gone = await client.skills.versions.delete(skill.id, second.version)
    assert gone == Deleted(id=second.version, type="skill_version_deleted")
    assert (await client.skills.retrieve(skill.id)).latest_version == first
    assert [s.id async for s in client.skills.list(source="custom")] == [skill.id]
    assert await client.skills.delete(skill.id) == Deleted(id=skill.id, type="skill_deleted")


async def test_skill_files_must_be_a_list(client: QoderClient, server: FakeQoderServer) -> None:
    for files in ([], ("SKILL.md", SKILL_MD), b"SKILL.md"):
        with pytest.raises(TypeError, match="files must be a non-empty list"):
            await client.skills.create(files=files)  # type: ignore[arg-type]
    assert server.requests == []


async def test_memory_stores_memories_and_versions(client: QoderClient) -> None:
    store = await client.memory_stores.create(name="prefs", description="d", metadata={"a": "1"})
    assert (store.status, store.entry_count) == ("active", 0)
    memories = client.memory_stores.memories
    note = await memories.create(store.id, path="/projects/foo/notes.md", content="hello")
    assert isinstance(note, Memory)
    assert note.content is None  # basic view unless asked
    await memories.create(store.id, path="/top.md", content="t", view="full")
    full = await memories.retrieve(store.id, note.id)
    assert full.content == "hello"
    assert full.content_size_bytes == 5
    listed = [m async for m in memories.list(store.id, depth=1)]
    assert listed[0] == MemoryPrefix(path="/projects/")
    assert isinstance(listed[1], Memory)
    assert listed[1].path == "/top.md"
    with pytest.raises(QoderConflictError, match="precondition"):
        await memories.update(store.id, note.id, content="x", content_sha256="0" * 64)
    changed = await memories.update(
        store.id, note.id, content="changed", content_sha256=full.content_sha256, view="full"
    )
    assert changed.content == "changed"
    assert changed.memory_version_id != note.memory_version_id
    versions = [v async for v in client.memory_stores.memory_versions.list(store.id)]
    assert [v.operation for v in versions] == ["modified", "created", "created"]
    oldest = versions[-1]
    assert oldest.created_by is not None
    assert oldest.created_by.type == "api_actor"
    assert (await client.memory_stores.memory_versions.retrieve(store.id, oldest.id)).content
    redacted = await client.memory_stores.memory_versions.redact(store.id, oldest.id)
    assert (redacted.content, redacted.redacted_at is not None) == (None, True)
    assert (await client.memory_stores.retrieve(store.id)).entry_count == 2
    deleted = await memories.delete(
        store.id, note.id, expected_content_sha256=changed.content_sha256
    )
    assert deleted == Deleted(id=note.id, type="memory_deleted")
    updated = await client.memory_stores.update(store.id, name="renamed", metadata={"a": None})
    assert (updated.name, updated.metadata) == ("renamed", {})
    assert (await client.memory_stores.archive(store.id)).status == "archived"
    assert [s async for s in client.memory_stores.list()] == []
    assert [s.id async for s in client.memory_stores.list(include_archived=True)] == [store.id]
    gone = await client.memory_stores.delete(store.id)
    assert gone == Deleted(id=store.id, type="memory_store_deleted")


async def test_the_fake_refuses_what_the_api_refuses(client: QoderClient) -> None:
    vault = await client.vaults.create(display_name="v")
    bearer = {"type": "static_bearer", "token": "t", "mcp_server_url": "https://x.example"}
    cred = await client.vaults.credentials.create(vault.id, auth=bearer)
    with pytest.raises(BadRequestError, match="cannot change"):
        await client.vaults.credentials.update(vault.id, cred.id, auth={"type": "mcp_oauth"})
    with pytest.raises(BadRequestError, match=r"SKILL\.md"):
        await client.skills.create(files=[("notes.txt", b"no manifest")])
    skill = await client.skills.create(files=[("s/SKILL.md", SKILL_MD)])
    assert skill.latest_version is not None
    await client.skills.delete(skill.id)
    with pytest.raises(QoderNotFoundError):
        await client.skills.versions.retrieve(skill.id, skill.latest_version)
    store = await client.memory_stores.create(name="m")
    memories = client.memory_stores.memories
    with pytest.raises(BadRequestError, match="path"):
        await memories.create(store.id, path="relative.md", content="x")
    note = await memories.create(store.id, path="/a.md", content="x")
    with pytest.raises(QoderConflictError, match=r"/a\.md"):
        await memories.create(store.id, path="/a.md", content="y")
    with pytest.raises(QoderConflictError, match="precondition"):
        await memories.delete(store.id, note.id, expected_content_sha256="0" * 64)
    await client.memory_stores.archive(store.id)
    with pytest.raises(BadRequestError, match="archived"):
        await memories.update(store.id, note.id, content="z")
    assert (await memories.retrieve(store.id, note.id)).content == "x"


# --------------------------------------------------------------------------- the official SDK


@pytest.fixture
async def qca(server: FakeQoderServer) -> AsyncIterator[AsyncManaged]:
    async with AsyncManaged(
        access_token=server.token, base_url=server.base_url, max_retries=0, timeout=10.0
    ) as managed:
        yield managed


async def test_qca_drives_vaults_and_credentials(qca: AsyncManaged) -> None:
    vault = await qca.vaults.create(display_name="my-mcp-vault", metadata={"team": "docs"})
    assert vault.id is not None
    assert vault.type == "vault"
    cred = await qca.vaults.credentials.create(
        vault.id,
        auth={"type": "static_bearer", "token": CANARY, "mcp_server_url": "https://x.example"},
    )
    assert cred.id is not None
    assert cred.auth is not None
    assert (cred.auth.type, cred.auth.mcp_server_url) == ("static_bearer", "https://x.example")
    updated = await qca.vaults.credentials.update(
        cred.id, vault_id=vault.id, metadata={"rotated_by": "ops"}
    )
    assert updated.metadata == {"rotated_by": "ops"}
    got = await qca.vaults.credentials.retrieve(cred.id, vault_id=vault.id)
    assert got.vault_id == vault.id
    assert [c.id async for c in qca.vaults.credentials.list(vault.id)] == [cred.id]
    assert (await qca.vaults.credentials.archive(cred.id, vault_id=vault.id)).archived_at
    removed = await qca.vaults.credentials.delete(cred.id, vault_id=vault.id)
    assert removed.type == "vault_credential_deleted"
    assert [v.id async for v in qca.vaults.list()] == [vault.id]
    assert (await qca.vaults.retrieve(vault.id)).display_name == "my-mcp-vault"
    assert (await qca.vaults.archive(vault.id)).archived_at is not None
    assert (await qca.vaults.delete(vault.id)).type == "vault_deleted"
    with pytest.raises(NotFoundError):
        await qca.vaults.retrieve(vault.id)


async def test_qca_drives_skills_and_versions(qca: AsyncManaged) -> None:
    skill = await qca.skills.create(
        files=[("my-custom-skill/SKILL.md", SKILL_MD)], display_title="My Custom Skill"
    )
    assert skill.id is not None
    assert (skill.type, skill.source, skill.display_title) == ("skill", "custom", "My Custom Skill")
    version = await qca.skills.versions.create(
        skill.id, files=[("my-custom-skill/SKILL.md", SKILL_MD)]
    )
    assert version.version is not None
    assert version.skill_id == skill.id
    got = await qca.skills.versions.retrieve(version.version, skill_id=skill.id)
    assert got.name == "my-custom-skill"
    assert len([v async for v in qca.skills.versions.list(skill.id)]) == 2
    removed = await qca.skills.versions.delete(version.version, skill_id=skill.id)
    assert (removed.id, removed.type) == (version.version, "skill_version_deleted")
    assert [s.id async for s in qca.skills.list()] == [skill.id]
    assert (await qca.skills.retrieve(skill.id)).latest_version == skill.latest_version
    assert (await qca.skills.delete(skill.id)).type == "skill_deleted"


async def test_qca_drives_memory_stores(qca: AsyncManaged) -> None:
    store = await qca.memory_stores.create(name="prefs", description="what the user likes")
    assert store.id is not None
    assert store.type == "memory_store"
    memory = await qca.memory_stores.memories.create(
        store.id, path="/preferences.md", content="tabs", view="full"
    )
    assert memory.id is not None
    assert memory.content == "tabs"
    got = await qca.memory_stores.memories.retrieve(memory.id, memory_store_id=store.id)
    assert got.content_sha256 == memory.content_sha256
    with pytest.raises(ConflictError):
        await qca.memory_stores.memories.update(
            memory.id,
            memory_store_id=store.id,
            content="spaces",
            precondition={"type": "content_sha256", "content_sha256": "0" * 64},
        )
    changed = await qca.memory_stores.memories.update(
        memory.id,
        memory_store_id=store.id,
        content="spaces",
        precondition={"type": "content_sha256", "content_sha256": memory.content_sha256},
    )
    assert changed.content_size_bytes == 6
    assert [m.path async for m in qca.memory_stores.memories.list(store.id)] == ["/preferences.md"]
    versions = [v async for v in qca.memory_stores.memory_versions.list(store.id)]
    assert [v.operation for v in versions] == ["modified", "created"]
    assert versions[0].id is not None
    one = await qca.memory_stores.memory_versions.retrieve(versions[0].id, memory_store_id=store.id)
    assert one.content == "spaces"
    redacted = await qca.memory_stores.memory_versions.redact(
        versions[1].id or "", memory_store_id=store.id
    )
    assert redacted.redacted_at is not None
    gone = await qca.memory_stores.memories.delete(memory.id, memory_store_id=store.id)
    assert gone.type == "memory_deleted"
    assert (await qca.memory_stores.update(store.id, name="renamed")).name == "renamed"
    assert [s.id async for s in qca.memory_stores.list()] == [store.id]
    assert (await qca.memory_stores.archive(store.id)).archived_at is not None
    assert (await qca.memory_stores.delete(store.id)).type == "memory_store_deleted"
