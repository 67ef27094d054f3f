"""Every client mistake gets the OpenAI error envelope and the right status; never a 500."""

from __future__ import annotations

import httpx
import pytest
from conftest import FerryServer
from openai_spec import validate

MSG = [{"role": "user", "content": "hi"}]


def check(r: httpx.Response, status: int, param: str | None = "any", code: str | None = None):
    assert r.status_code == status, r.text
    body = r.json()
    validate(body, "ErrorResponse")
    err = body["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]
    if param != "any":
        assert err["param"] == param, err
    if code is not None:
        assert err["code"] == code, err
    return err


def test_invalid_json_is_400(http):
    r = http.post("/v1/chat/completions", content=b"{not json",
                  headers={"content-type": "application/json"})
    assert "JSON" in check(r, 400)["message"]


def test_non_object_body_is_400(http):
    check(http.post("/v1/chat/completions", json=[1, 2]), 400)


@pytest.mark.parametrize(("body", "param"), [
    ({"messages": MSG, "temperature": -0.1}, "temperature"),
    ({"messages": MSG, "temperature": 2.5}, "temperature"),
    ({"messages": MSG, "top_p": 0}, "top_p"),
    ({"messages": MSG, "top_p": 1.5}, "top_p"),
    ({"messages": MSG, "n": 0}, "n"),
    ({"messages": MSG, "max_tokens": -5}, "max_tokens"),
    ({"messages": MSG, "max_completion_tokens": 0}, "max_completion_tokens"),
    ({"messages": MSG, "presence_penalty": 3}, "presence_penalty"),
    ({"messages": MSG, "frequency_penalty": -3}, "frequency_penalty"),
    ({"messages": MSG, "logit_bias": {"abc": 1}}, "logit_bias"),
    ({"messages": MSG, "logit_bias": {"5": 500}}, "logit_bias"),
    ({"messages": MSG, "top_logprobs": 30, "logprobs": True}, "top_logprobs"),
    ({"messages": MSG, "stop": ["x"] * 17}, "stop"),
    ({"messages": MSG, "top_k": -1}, "top_k"),
    ({"messages": MSG, "min_p": 2}, "min_p"),
    ({"messages": MSG, "repeat_penalty": 0}, "repeat_penalty"),
    ({"messages": [{"role": "wizard", "content": "x"}]}, "messages.0.role"),
    ({"messages": []}, "messages"),
    ({}, "messages"),
    ({"messages": "hello"}, "messages"),
    ({"messages": [{"role": "user"}]}, "messages.0"),
    ({"messages": MSG, "stream": "yes"}, "stream"),
])
def test_bad_chat_values_are_400_naming_the_parameter(http, body, param):
    check(http.post("/v1/chat/completions", json=body), 400, param)


@pytest.mark.parametrize(("body", "param"), [
    ({"prompt": "x", "max_tokens": 0}, "max_tokens"),
    ({"prompt": []}, "prompt"),
    ({"prompt": "x", "logprobs": 50}, "logprobs"),
    ({"prompt": [10**9]}, None),
    ({"prompt": "x", "best_of": 3}, "best_of"),
])
def test_bad_completion_values_are_400(http, body, param):
    check(http.post("/v1/completions", json=body), 400, param)


def test_n_above_the_limit_is_400(http):
    check(http.post("/v1/chat/completions", json={"messages": MSG, "n": 17}), 400, "n")


def test_logit_bias_outside_vocabulary_is_400(http):
    check(http.post("/v1/chat/completions", json={"messages": MSG, "logit_bias": {"999999": 1}}),
          400, "logit_bias")


def test_unknown_model_is_404_model_not_found(http):
    check(http.post("/v1/chat/completions", json={"model": "gpt-9", "messages": MSG}), 404,
          "model", "model_not_found")
    check(http.get("/v1/models/gpt-9"), 404, "model", "model_not_found")


def test_prompt_beyond_context_is_400_stating_both_numbers(http):
    long = "word " * 3000
    err = check(http.post("/v1/chat/completions",
                          json={"messages": [{"role": "user", "content": long}],
                                "max_tokens": 100}), 400, code="context_length_exceeded")
    assert "2048" in err["message"] and "100" in err["message"]


def test_max_tokens_beyond_context_is_400(http):
    err = check(http.post("/v1/chat/completions", json={"messages": MSG, "max_tokens": 5000}),
                400, "max_tokens", "context_length_exceeded")
    assert "5000" in err["message"]


def test_image_part_on_text_model_is_400_saying_it_cannot_see(http):
    body = {"messages": [{"role": "user", "content": [
        {"type": "text", "text": "what is this?"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}]}]}
    assert "cannot see images" in check(http.post("/v1/chat/completions", json=body), 400)["message"]


def test_text_part_arrays_work(http):
    body = {"messages": [{"role": "user", "content": [{"type": "text", "text": "Hi"},
                                                      {"type": "text", "text": " there"}]}],
            "max_tokens": 4}
    assert http.post("/v1/chat/completions", json=body).status_code == 200


def test_unknown_route_is_404_and_wrong_method_is_405(http):
    check(http.get("/v1/nothing"), 404)
    check(http.get("/v1/chat/completions"), 405)


def test_oversize_body_is_413(server):
    srv = FerryServer("--max-body-size", "2048")
    try:
        r = httpx.post(srv.url + "/v1/chat/completions",
                       json={"messages": [{"role": "user", "content": "x" * 5000}]})
        check(r, 413, code="payload_too_large")
    finally:
        srv.stop()


def test_api_key_is_required_except_for_health_and_preflight():
    srv = FerryServer("--api-key", "k1", "--api-key", "k2")
    try:
        url = srv.url
        check(httpx.get(url + "/v1/models"), 401, code="invalid_api_key")
        err = check(httpx.get(url + "/v1/models", headers={"Authorization": "Bearer nope"}), 401)
        assert err["type"] == "authentication_error"
        assert httpx.get(url + "/v1/models", headers={"Authorization": "Bearer k1"}).status_code == 200
        assert httpx.get(url + "/v1/models", headers={"X-Api-Key": "k2"}).status_code == 200
        assert httpx.get(url + "/health").status_code == 200
        pre = httpx.options(url + "/v1/chat/completions", headers={
            "Origin": "http://example.test", "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization,content-type"})
        assert pre.status_code == 200 and pre.headers["access-control-allow-origin"]
    finally:
        srv.stop()


def test_request_id_is_echoed_or_generated(http):
    r = http.get("/v1/models", headers={"X-Request-Id": "abc-123"})
    assert r.headers["x-request-id"] == "abc-123"
    assert len(http.get("/v1/models").headers["x-request-id"]) >= 16


def test_json_is_gzipped_when_accepted_but_streams_are_not(http):
    r = http.post("/v1/completions", json={"prompt": "Hi", "max_tokens": 60, "n": 4},
                  headers={"Accept-Encoding": "gzip"})
    assert r.headers.get("content-encoding") == "gzip"
    with http.stream("POST", "/v1/completions", headers={"Accept-Encoding": "gzip"},
                     json={"prompt": "Hi", "max_tokens": 60, "stream": True}) as s:
        assert "content-encoding" not in s.headers
        s.read()


def test_queue_timeout_is_503_or_an_error_event_once_streaming():
    srv = FerryServer("--parallel", "1", "--queue-timeout", "0.5")
    try:
        with httpx.Client(base_url=srv.url, timeout=60) as c:
            import threading

            blocker = threading.Thread(target=c.post, args=("/v1/completions",), kwargs={
                "json": {"prompt": "x", "max_tokens": 400, "ignore_eos": True}})
            blocker.start()
            import time

            time.sleep(0.3)
            check(c.post("/v1/completions", json={"prompt": "y", "max_tokens": 4}), 503,
                  code="queue_timeout")
            with c.stream("POST", "/v1/completions",
                          json={"prompt": "y", "max_tokens": 4, "stream": True}) as s:
                assert s.status_code == 200
                text = s.read().decode()
            import json as _json

            data = [ln[6:] for ln in text.splitlines() if ln.startswith("data: ")]
            err = _json.loads(data[-1])
            validate(err, "ErrorResponse")
            assert err["error"]["code"] == "queue_timeout"
            blocker.join()
            assert c.get("/health").status_code == 200
    finally:
        srv.stop()
