"""Anthropic request → chat request (pure translation, no server): the conversation Anthropic
describes is the conversation the chat path renders."""

from __future__ import annotations

import pytest

from ferry.errors import InvalidRequest
from ferry.protocol.anthropic import CountTokensRequest, MessagesRequest
from ferry.services.messages_input import messages_to_chat

TOOL = {"name": "get_weather", "input_schema": {"type": "object"}}


def chat_of(**body):
    req = MessagesRequest.model_validate({"model": "m", "max_tokens": 5, **body})
    return messages_to_chat(req)


def test_system_blocks_become_one_system_message():
    c = chat_of(system=[{"type": "text", "text": "A"}, {"type": "text", "text": "B"}],
                messages=[{"role": "user", "content": "hi"}])
    assert [(m.role, m.text()) for m in c.messages] == [("system", "A\n\nB"), ("user", "hi")]


def test_consecutive_turns_of_one_role_are_joined():
    c = chat_of(messages=[{"role": "user", "content": "a"},
                          {"role": "user", "content": [{"type": "text", "text": "b"}]}])
    assert [(m.role, m.text()) for m in c.messages] == [("user", "a\n\nb")]


def test_tool_use_and_tool_result_become_tool_calls_and_tool_messages():
    c = chat_of(tools=[TOOL], messages=[
        {"role": "user", "content": "weather?"},
        {"role": "assistant", "content": [
            {"type": "text", "text": "Let me look."},
            {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Oslo"}}]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "toolu_1", "content": "cold"},
            {"type": "text", "text": "thanks"}]}])
    roles = [m.role for m in c.messages]
    assert roles == ["user", "assistant", "tool", "user"]
    call = c.messages[1].tool_calls[0]
    assert (call.id, call.function.name, call.function.arguments) == (
        "toolu_1", "get_weather", '{"city": "Oslo"}')
    assert c.messages[1].text() == "Let me look."
    assert (c.messages[2].tool_call_id, c.messages[2].text()) == ("toolu_1", "cold")
    assert c.tools[0]["function"]["parameters"] == {"type": "object"}


@pytest.mark.parametrize(("choice", "expected", "parallel"), [
    ({"type": "auto"}, "auto", True),
    ({"type": "any", "disable_parallel_tool_use": True}, "required", False),
    ({"type": "none"}, "none", True),
    ({"type": "tool", "name": "get_weather"},
     {"type": "function", "function": {"name": "get_weather"}}, True),
])
def test_tool_choice_maps_to_the_chat_tool_choice(choice, expected, parallel):
    c = chat_of(tools=[TOOL], tool_choice=choice, messages=[{"role": "user", "content": "x"}])
    assert c.tool_choice == expected and c.parallel_tool_calls is parallel


def test_final_assistant_message_is_a_prefill():
    c = chat_of(messages=[{"role": "user", "content": "x"},
                          {"role": "assistant", "content": "The answer is"}])
    assert c.continue_final_message and c.messages[-1].text() == "The answer is"
    assert not chat_of(messages=[{"role": "user", "content": "x"}]).continue_final_message


def test_sampling_is_carried_over():
    c = chat_of(messages=[{"role": "user", "content": "x"}], temperature=0.2, top_p=0.5,
                top_k=7, stop_sequences=["END"], metadata={"user_id": "u"})
    assert (c.temperature, c.top_p, c.top_k, c.stop, c.user) == (0.2, 0.5, 7, ["END"], "u")
    assert c.max_tokens is None and c.include_usage  # the cap is applied after tokenising


def test_count_tokens_request_translates_without_sampling():
    req = CountTokensRequest.model_validate({"model": "m", "messages": [
        {"role": "user", "content": "x"}]})
    assert messages_to_chat(req).messages[0].text() == "x"


def test_thinking_blocks_are_left_out():
    c = chat_of(messages=[{"role": "user", "content": "x"},
                          {"role": "assistant", "content": [
                              {"type": "thinking", "thinking": "hmm", "signature": "s"},
                              {"type": "text", "text": "Yes."}]},
                          {"role": "user", "content": "ok"}])
    assert c.messages[1].text() == "Yes."


def test_unanswered_tool_use_is_refused():
    with pytest.raises(InvalidRequest, match="without `tool_result`"):
        chat_of(tools=[TOOL], messages=[
            {"role": "user", "content": "x"},
            {"role": "assistant", "content": [
                {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {}}]},
            {"role": "user", "content": "y"}])
