"""What calls leave behind (CDRs, traces) and the dialplans' key/value store."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from engine.records import KV_FORBIDDEN, KV_MAX_KEY, KV_MAX_KEYS, KV_MAX_VALUE
from engine.web.context import (
    Api,
    Fields,
    Principal,
    equal_filters,
    json_body,
    page_json,
    paging,
    time_filters,
)
from engine.web.errors import ApiError, not_found
from engine.web.repository import Filter


async def list_cdrs(api: Api, request: Request, who: Principal) -> Response:
    limit, offset = paging(request)
    where = Filter().owner(api.owner_filter(who, request))
    where = time_filters(request, equal_filters(request, where, ("call_id", "bridge_id", "direction", "leg")))
    return JSONResponse(page_json(api.repo.cdrs(where, limit, offset), limit, offset))


async def get_cdr(api: Api, request: Request, who: Principal) -> Response:
    return JSONResponse(api.visible(who, api.repo.cdr(str(request.path_params["id"]), None), "CDR"))


async def list_traces(api: Api, request: Request, who: Principal) -> Response:
    limit, offset = paging(request)
    where = Filter().owner(api.owner_filter(who, request))
    where = time_filters(request, equal_filters(request, where, ("call_id", "dialplan")))
    return JSONResponse(page_json(api.repo.traces(where, limit, offset), limit, offset))


async def get_trace(api: Api, request: Request, who: Principal) -> Response:
    return JSONResponse(api.visible(who, api.repo.trace(str(request.path_params["id"]), None), "trace"))


async def list_kv(api: Api, request: Request, who: Principal) -> Response:
    limit, offset = paging(request)
    where = Filter().owner(api.owner_filter(who, request))
    prefix = request.query_params.get("prefix")
    if prefix:
        # substr() rather than LIKE: keys may contain % and _.
        where = where.add("substr(key, 1, ?) = ?", len(prefix), prefix)
    return JSONResponse(page_json(api.repo.kv_items(where, limit, offset), limit, offset))


def _key(request: Request) -> str:
    key = str(request.path_params["key"])
    if not 1 <= len(key) <= KV_MAX_KEY:
        raise not_found("key")
    return key


async def get_kv(api: Api, request: Request, who: Principal) -> Response:
    row = api.repo.kv_item(api.target_owner(who, request), _key(request))
    if row is None:
        raise not_found("key")
    return JSONResponse(row)


async def put_kv(api: Api, request: Request, who: Principal) -> Response:
    body = await json_body(request)
    owner = api.target_owner(who, request, body)
    key = str(request.path_params["key"])
    fields = Fields(body, ("customer_id", "value"))
    if not 1 <= len(key) <= KV_MAX_KEY:
        fields.problem("key", f"must be 1-{KV_MAX_KEY} characters")
    elif KV_FORBIDDEN.search(key):
        fields.problem("key", "must not contain CR, LF or NUL")
    value = fields.text("value", required=True, max_len=KV_MAX_VALUE)
    if value is not None and KV_FORBIDDEN.search(value):
        fields.problem("value", "must not contain CR, LF or NUL")
    fields.check()
    assert value is not None
    created = await api.repo.kv_put(owner, key, value, api.now())
    if created is None:
        raise ApiError(409, "store_full", f"the store holds at most {KV_MAX_KEYS} keys; delete some first")
    return JSONResponse(api.repo.kv_item(owner, key), status_code=201 if created else 200)


async def delete_kv(api: Api, request: Request, who: Principal) -> Response:
    owner = api.target_owner(who, request)
    key = _key(request)
    if api.repo.kv_item(owner, key) is None:
        raise not_found("key")
    await api.repo.kv_delete(owner, key)
    return Response(status_code=204)
