"""The ASGI router: route matching, body limit, timeouts, error mapping, JSON edge cases."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from streamserve.errors import NotFound
from streamserve.server.http import (
    App,
    Request,
    Response,
    compile_template,
    json_response,
    parse_json,
)

pytestmark = pytest.mark.timeout(30)


def make_app(**kwargs: object) -> App:
    app = App(**kwargs)  # type: ignore[arg-type]

    async def echo(request: Request) -> Response:
        return json_response({"params": request.path_params, "size": len(request.body)})

    async def missing(request: Request) -> Response:
        raise NotFound("no such thing")

    async def crash(request: Request) -> Response:
        raise RuntimeError("boom")

    async def slow(request: Request) -> Response:
        await asyncio.sleep(5)
        return json_response({})

    app.add_route("POST", "/v2/models/{name}/infer", echo)
    app.add_route("GET", "/missing", missing)
    app.add_route("GET", "/crash", crash)
    app.add_route("GET", "/slow", slow)
    app.add_route_regex(
        "GET", r"^/v1/models/(?P<name>[^/:]+)(?:/versions/(?P<version>\d+))?$", echo
    )
    return app


def call(app: App, method: str, path: str, **kwargs: object) -> httpx.Response:
    async def request() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return await client.request(method, path, **kwargs)  # type: ignore[arg-type]

    return asyncio.run(request())


def test_template_matches_one_segment_per_placeholder() -> None:
    pattern = compile_template("/v2/models/{name}/versions/{version}/infer")
    found = pattern.match("/v2/models/m/versions/3/infer")
    assert found is not None and found.groupdict() == {"name": "m", "version": "3"}
    assert pattern.match("/v2/models/a/b/versions/3/infer") is None


def test_routes_and_params() -> None:
    app = make_app()
    response = call(app, "POST", "/v2/models/m/infer", content=b"abc")
    assert response.status_code == 200
    assert response.json() == {"params": {"name": "m"}, "size": 3}
    response = call(app, "GET", "/v1/models/m/versions/2")
    assert response.json()["params"] == {"name": "m", "version": "2"}
    response = call(app, "GET", "/v1/models/m")
    assert response.json()["params"] == {"name": "m"}  # unmatched optional groups dropped


def test_unknown_path_is_404_and_wrong_method_405_with_allow() -> None:
    app = make_app()

    async def put(request: Request) -> Response:
        return json_response({})

    app.add_route("PUT", "/v2/models/{name}/infer", put)
    response = call(app, "GET", "/nope")
    assert response.status_code == 404 and "error" in response.json()
    response = call(app, "GET", "/v2/models/m/infer")
    assert response.status_code == 405 and "not allowed" in response.json()["error"]
    assert response.headers["allow"] == "POST, PUT"
    response = call(app, "DELETE", "/missing")
    assert (response.status_code, response.headers["allow"]) == (405, "GET")


def test_json_nested_too_deeply_is_400() -> None:
    app = make_app()

    async def parse(request: Request) -> Response:
        return json_response({"type": type(request.json()).__name__})

    app.add_route("POST", "/parse", parse)
    for body in (
        b"[" * 100_000 + b"]" * 100_000,
        b'{"a": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
    ):
        response = call(app, "POST", "/parse", content=body)
        assert response.status_code == 400, response.text
        assert "nested too deeply" in response.json()["error"]
    assert call(app, "POST", "/parse", content=b"[[1]]").json() == {"type": "list"}


def test_errors_map_to_status_and_json() -> None:
    app = make_app()
    response = call(app, "GET", "/missing")
    assert (response.status_code, response.json()) == (404, {"error": "no such thing"})
    response = call(app, "GET", "/crash")
    assert response.status_code == 500
    assert response.json() == {"error": "RuntimeError: boom"}


def test_body_over_limit_is_413() -> None:
    app = make_app(max_body_bytes=10)
    response = call(app, "POST", "/v2/models/m/infer", content=b"x" * 11)
    assert response.status_code == 413
    assert "exceeds the limit of 10 bytes" in response.json()["error"]
    response = call(app, "POST", "/v2/models/m/infer", content=b"x" * 10)
    assert response.status_code == 200


def test_timeout_is_504() -> None:
    app = make_app(timeout_seconds=0.05)
    response = call(app, "GET", "/slow")
    assert response.status_code == 504
    assert "timed out" in response.json()["error"]


def test_parse_json_accepts_nan_and_rejects_garbage() -> None:
    assert parse_json(b'{"a": 1}') == {"a": 1}
    value = parse_json(b'{"a": NaN, "b": -Infinity}')
    assert value["a"] != value["a"] and value["b"] == float("-inf")
    for bad in (b"", b"{", b"[1,", b"\xff"):
        with pytest.raises(Exception, match="JSON Parse error"):
            parse_json(bad)


def test_json_response_nan_switch() -> None:
    assert json_response({"x": float("nan")}, allow_nan=True).body == b'{"x":NaN}'
    assert json_response({"x": 1.5}).body == b'{"x":1.5}'
