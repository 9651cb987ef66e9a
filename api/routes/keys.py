"""Keys: a project's admin key makes, lists and revokes the project's keys. A revoked key is refused from
the next request on, on every API process (each keeps a key's caller a moment, and the revocation is pushed to them
all: api/lookup_cache.py)."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.concurrency import run_in_threadpool

from api.deps import AdminDep, LimitQuery, OffsetQuery, StateDep
from api.schemas import KeyCreate, KeyCreated, KeysPublic
from api.services import keys as service

router = APIRouter(prefix="/keys", tags=["keys"])


@router.post("", status_code=201)
async def create_key(state: StateDep, admin: AdminDep, body: KeyCreate) -> KeyCreated:
    """A new key for this project; the answer holds the key itself, shown this once."""
    return await run_in_threadpool(service.create, state, admin, body)


@router.get("")
async def list_keys(state: StateDep, admin: AdminDep, offset: OffsetQuery = 0, limit: LimitQuery = 100) -> KeysPublic:
    """This project's keys, a page at a time (never the keys themselves: their prefixes)."""
    return await run_in_threadpool(service.list_all, state, admin, offset, limit)


@router.delete("/{key_id}")
async def revoke_key(state: StateDep, admin: AdminDep, key_id: str) -> KeysPublic:
    """Revoke a key of this project at once (every API replica refuses it from then on); answers the project's keys
    as they now are."""
    return await run_in_threadpool(service.revoke, state, admin, key_id)
