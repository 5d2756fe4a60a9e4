"""The official `openai` client against `gorae serve`: chat and completions, whole and
streamed, usage, logprobs, stop strings, seeds, model listing, and the mapping of our error
statuses onto the client's exception classes. Generations stay at a few tokens."""

import json
import urllib.request
from typing import Literal, Optional

import openai
import pydantic
import pytest

from conftest import API_KEY, MODEL_ID

MESSAGES = [{"role": "user", "content": "What is the capital city of France? Answer in one sentence."}]


def test_models(client):
    models = client.models.list()
    assert [m.id for m in models.data] == [MODEL_ID]
    assert client.models.retrieve(MODEL_ID).id == MODEL_ID
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("gpt-4o")


def test_chat_whole_and_streamed(client):
    whole = client.chat.completions.create(
        model=MODEL_ID, messages=MESSAGES, max_tokens=12, temperature=0
    )
    choice = whole.choices[0]
    assert choice.message.role == "assistant"
    assert "Paris" in choice.message.content
    assert choice.finish_reason in ("stop", "length")
    u = whole.usage
    assert u.total_tokens == u.prompt_tokens + u.completion_tokens
    assert u.completion_tokens_details.reasoning_tokens == 0
    assert u.prompt_tokens_details.cached_tokens >= 0

    stream = client.chat.completions.create(
        model=MODEL_ID, messages=MESSAGES, max_tokens=12, temperature=0,
        stream=True, stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == choice.message.content
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == [choice.finish_reason]
    assert len({c.id for c in chunks}) == 1
    last = chunks[-1]
    assert last.choices == []
    assert last.usage.completion_tokens == u.completion_tokens
    assert last.usage.prompt_tokens == u.prompt_tokens
    assert all(c.usage is None for c in chunks[:-1])


def test_seeded_sampling_streams_what_it_returns(client):
    kw = dict(model=MODEL_ID, messages=[{"role": "user", "content": "Tell me a joke."}],
              max_tokens=10, temperature=1.0, top_p=0.95, seed=42)
    a = client.chat.completions.create(**kw).choices[0].message.content
    b = client.chat.completions.create(**kw).choices[0].message.content
    assert a == b
    streamed = "".join(c.choices[0].delta.content or ""
                       for c in client.chat.completions.create(stream=True, **kw) if c.choices)
    assert streamed == a


def test_completions_whole_and_streamed(client):
    whole = client.completions.create(model=MODEL_ID, prompt="The quick brown fox",
                                      max_tokens=5, temperature=0, logprobs=2)
    c = whole.choices[0]
    assert whole.object == "text_completion"
    assert c.text
    assert len(c.logprobs.tokens) == whole.usage.completion_tokens
    assert all(lp <= 0 for lp in c.logprobs.token_logprobs)
    streamed = "".join(ch.choices[0].text for ch in client.completions.create(
        model=MODEL_ID, prompt="The quick brown fox", max_tokens=5, temperature=0, stream=True)
        if ch.choices)
    assert streamed == c.text


def test_chat_logprobs_and_stop(client):
    r = client.chat.completions.create(model=MODEL_ID, messages=MESSAGES, max_tokens=6,
                                       temperature=0, logprobs=True, top_logprobs=2)
    content = r.choices[0].logprobs.content
    assert len(content) == r.usage.completion_tokens
    for t in content:
        assert t.logprob <= 0 and len(t.top_logprobs) == 2
        assert abs(t.logprob - t.top_logprobs[0].logprob) < 1e-4  # greedy picks the top one
    full = r.choices[0].message.content
    word = full.split()[1]
    cut = client.chat.completions.create(model=MODEL_ID, messages=MESSAGES, max_tokens=6,
                                         temperature=0, stop=[word])
    assert cut.choices[0].message.content == full[: full.index(word)]
    assert cut.choices[0].finish_reason == "stop"


def test_wrong_key_is_authentication_error(server):
    bad = openai.OpenAI(base_url=server + "/v1", api_key="sk-wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.models.list()
    with pytest.raises(openai.AuthenticationError):
        bad.chat.completions.create(model=MODEL_ID, messages=MESSAGES, max_tokens=2)


BAD_CHAT = [
    ("empty messages", dict(messages=[])),
    ("unknown role", dict(messages=[{"role": "wizard", "content": "hi"}])),
    ("image part", dict(messages=[{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]}])),
    ("max_tokens 0", dict(max_tokens=0)),
    ("temperature 3", dict(temperature=3)),
    ("top_p 2", dict(top_p=2)),
    ("top_logprobs 21", dict(logprobs=True, top_logprobs=21)),
    ("n 2", dict(n=2)),
    ("five stops", dict(stop=["a", "b", "c", "d", "e"])),
    ("empty stop", dict(stop=[""])),
    ("logit_bias id", dict(logit_bias={"99999999": 1})),
    ("logit_bias value", dict(logit_bias={"5": 101})),
    ("stream_options without stream", dict(stream_options={"include_usage": True})),
    ("wrong type", dict(extra_body={"max_tokens": "ten"})),
    ("json_schema without a name", dict(response_format={"type": "json_schema", "json_schema": {
        "schema": {"type": "object"}}})),
    ("json_schema with a keyword not enforced", dict(response_format={
        "type": "json_schema", "json_schema": {"name": "x", "schema": {
            "type": "object", "properties": {"a": {"type": "string", "pattern": "^a+$"}}}}})),
    ("tool of an unknown type", dict(tools=[{"type": "retrieval"}])),
    ("tool_choice naming no offered tool", dict(
        tools=[{"type": "function", "function": {"name": "a"}}],
        tool_choice={"type": "function", "function": {"name": "b"}})),
    ("tool_choice required without tools", dict(tool_choice="required")),
    ("json_schema whose root is no object", dict(response_format={
        "type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "array"}}})),
]


@pytest.mark.parametrize("what,kw", BAD_CHAT, ids=[c[0] for c in BAD_CHAT])
def test_bad_chat_requests_are_bad_request_errors(client, what, kw):
    args = dict(model=MODEL_ID, messages=MESSAGES, max_tokens=2)
    args.update(kw)
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(**args)
    assert e.value.status_code == 400
    assert e.value.type == "invalid_request_error"
    assert e.value.message


def test_context_overflow(client):
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=MODEL_ID, messages=MESSAGES, max_tokens=100000)
    assert e.value.code == "context_length_exceeded"
    assert e.value.body["n_ctx"] == 512
    with pytest.raises(openai.BadRequestError):
        client.completions.create(model=MODEL_ID, prompt="word " * 600, max_tokens=1)


def test_unknown_model_is_not_found(client):
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="gpt-4o", messages=MESSAGES, max_tokens=2)


def test_invalid_json_and_non_object_bodies(server):
    for raw in (b"{not json", b"[1, 2]", b"null"):
        req = urllib.request.Request(server + "/v1/chat/completions", data=raw, method="POST",
                                     headers={"Authorization": f"Bearer {API_KEY}",
                                              "Content-Type": "application/json"})
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(req)
        assert e.value.code == 400
        body = json.loads(e.value.read())
        assert set(body["error"]) >= {"message", "type", "param", "code"}


def post_json(url, body, key=API_KEY):
    req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                 headers={"Authorization": f"Bearer {key}",
                                          "Content-Type": "application/json"})
    with urllib.request.urlopen(req) as r:
        return json.loads(r.read())


def test_tokenize_and_detokenize(server, client):
    text = "Tokens, please: 고래 and whales."
    t = post_json(server + "/tokenize", {"model": MODEL_ID, "prompt": text})
    assert t["count"] == len(t["tokens"]) > 0 and t["max_model_len"] == 512
    # The same ids the completions endpoint feeds (its usage counts them).
    r = client.completions.create(model=MODEL_ID, prompt=text, max_tokens=1)
    assert r.usage.prompt_tokens == t["count"]
    assert post_json(server + "/tokenize", {"content": text})["tokens"] == t["tokens"]
    d = post_json(server + "/detokenize", {"model": MODEL_ID, "tokens": t["tokens"]})
    assert d["prompt"] == d["content"] == text
    # A chat is counted as the chat endpoint renders it.
    c = post_json(server + "/tokenize", {"model": MODEL_ID, "messages": MESSAGES})
    r = client.chat.completions.create(model=MODEL_ID, messages=MESSAGES, max_tokens=1)
    assert r.usage.prompt_tokens == c["count"]
    for path, body in (("/detokenize", {"tokens": [10 ** 9]}), ("/tokenize", {"prompt": 5}),
                       ("/tokenize", {})):
        with pytest.raises(urllib.error.HTTPError) as e:
            post_json(server + path, body)
        assert e.value.code == 400
    with pytest.raises(urllib.error.HTTPError) as e:
        post_json(server + "/tokenize", {"prompt": "x"}, key="wrong")
    assert e.value.code == 401


def test_ignore_eos_and_min_tokens(client):
    # The answer to this ends early at temperature 0; without its end token it runs to the limit.
    kw = dict(model=MODEL_ID, messages=[{"role": "user", "content": "Say OK."}], temperature=0)
    short = client.chat.completions.create(max_tokens=60, **kw)
    assert short.choices[0].finish_reason == "stop" and short.usage.completion_tokens < 60
    long = client.chat.completions.create(max_tokens=60, extra_body={"ignore_eos": True}, **kw)
    assert long.choices[0].finish_reason == "length" and long.usage.completion_tokens == 60
    n = short.usage.completion_tokens + 5
    at_least = client.chat.completions.create(max_tokens=60, extra_body={"min_tokens": n}, **kw)
    assert at_least.usage.completion_tokens >= n
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(max_tokens=5, extra_body={"min_tokens": 6}, **kw)


def test_json_object_output_parses(client):
    msgs = [{"role": "user", "content": "Describe a cat as a JSON object with keys name and age."}]
    r = client.chat.completions.create(model=MODEL_ID, messages=msgs, max_tokens=100,
                                       temperature=0, response_format={"type": "json_object"})
    assert r.choices[0].finish_reason == "stop"
    assert isinstance(json.loads(r.choices[0].message.content), dict)
    streamed = "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(
        model=MODEL_ID, messages=msgs, max_tokens=100, temperature=0.7, seed=3, stream=True,
        response_format={"type": "json_object"}) if c.choices)
    assert isinstance(json.loads(streamed), dict)


class Owner(pydantic.BaseModel):
    name: str
    city: str


class Pet(pydantic.BaseModel):
    name: str
    age: int
    kind: Literal["cat", "dog", "fish"]
    toys: list[str] = pydantic.Field(max_length=2)
    owner: Optional[Owner]
    weight_kg: float
    indoor: bool


def test_json_schema_output_conforms(client):
    # The client turns the pydantic model into a strict json_schema ($defs, $ref, anyOf with
    # null, enum, maxItems) and parses the answer back into the model.
    msgs = [{"role": "user", "content": "Invent a pet and describe it."}]
    r = client.chat.completions.parse(model=MODEL_ID, messages=msgs, max_tokens=160,
                                      temperature=0, response_format=Pet)
    assert r.choices[0].finish_reason == "stop"
    assert isinstance(r.choices[0].message.parsed, Pet)
    schema = {"type": "object", "properties": {"n": {"type": "integer"},
                                               "tags": {"type": "array", "items": {"enum": ["a", "b"]},
                                                        "minItems": 1, "maxItems": 3}},
              "required": ["n", "tags"], "additionalProperties": False}
    fmt = {"type": "json_schema", "json_schema": {"name": "counts", "schema": schema, "strict": True}}
    streamed = "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(
        model=MODEL_ID, messages=[{"role": "user", "content": "Count to three."}], max_tokens=60,
        temperature=0.7, seed=5, stream=True, response_format=fmt) if c.choices)
    doc = json.loads(streamed)
    assert set(doc) == {"n", "tags"} and isinstance(doc["n"], int)
    assert 1 <= len(doc["tags"]) <= 3 and set(doc["tags"]) <= {"a", "b"}


WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city now.",
    "parameters": {"type": "object", "properties": {
        "city": {"type": "string"}, "unit": {"enum": ["celsius", "fahrenheit"]}},
        "required": ["city", "unit"], "additionalProperties": False}}}
SEARCH = {"type": "function", "function": {"name": "search", "description": "Web search.",
                                           "parameters": {"type": "object", "properties": {
                                               "query": {"type": "string"}}}}}
ASK = [{"role": "user", "content": "What is the weather in Seoul?"}]


def test_forced_tool_calls(client):
    # A named function: the call is that function's, with arguments that follow its schema.
    r = client.chat.completions.create(
        model=MODEL_ID, messages=ASK, tools=[WEATHER, SEARCH], max_tokens=80, temperature=0,
        tool_choice={"type": "function", "function": {"name": "get_weather"}})
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    (call,) = choice.message.tool_calls
    assert call.type == "function" and call.id
    assert call.function.name == "get_weather"
    args = json.loads(call.function.arguments)
    assert set(args) == {"city", "unit"} and args["unit"] in ("celsius", "fahrenheit")
    # "required", streamed: one call, to one of the tools, whose arguments parse.
    chunks = list(client.chat.completions.create(
        model=MODEL_ID, messages=ASK, tools=[WEATHER, SEARCH], tool_choice="required",
        max_tokens=80, temperature=0.7, seed=11, stream=True))
    deltas = [c.choices[0].delta for c in chunks if c.choices]
    calls = [tc for d in deltas for tc in (d.tool_calls or [])]
    assert len(calls) == 1 and calls[0].index == 0
    assert calls[0].function.name in ("get_weather", "search")
    assert isinstance(json.loads(calls[0].function.arguments), dict)
    assert not "".join(d.content or "" for d in deltas)
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "tool_calls"


def test_auto_tools_and_a_tool_round_trip(client):
    # "auto": the answer is text, or calls that parse; streamed and whole agree.
    kw = dict(model=MODEL_ID, messages=ASK, tools=[WEATHER], max_tokens=40, temperature=0)
    r = client.chat.completions.create(**kw)
    msg = r.choices[0].message
    if msg.tool_calls:
        assert r.choices[0].finish_reason == "tool_calls"
        assert all(isinstance(json.loads(c.function.arguments), dict) for c in msg.tool_calls)
    else:
        assert msg.content
    streamed = "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(
        stream=True, **kw) if c.choices)
    assert streamed == (msg.content or "")
    # The call and its result go back in the next turn (a template that knows no tool calls
    # gets them as text).
    turn = ASK + [
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function",
             "function": {"name": "get_weather", "arguments": '{"city": "Seoul", "unit": "celsius"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": '{"temperature": 18}'},
    ]
    r = client.chat.completions.create(model=MODEL_ID, messages=turn, tools=[WEATHER],
                                       max_tokens=8, temperature=0)
    assert r.choices[0].finish_reason in ("stop", "length", "tool_calls")


def test_reasoning_split_when_the_template_opens_think(think_client):
    # End-of-turn tokens banned, so all six tokens are generated inside the open <think>.
    kw = dict(model=MODEL_ID, messages=[{"role": "user", "content": "Hi"}], max_tokens=6,
              temperature=0, logit_bias={"0": -100, "2": -100})
    r = think_client.chat.completions.create(**kw)
    msg = r.choices[0].message
    assert msg.reasoning_content
    assert msg.reasoning == msg.reasoning_content
    if "</think>" not in msg.reasoning_content and not msg.content:
        details = r.usage.completion_tokens_details
        assert details.reasoning_tokens == r.usage.completion_tokens
    chunks = list(think_client.chat.completions.create(stream=True, **kw))
    reasoning = "".join(getattr(c.choices[0].delta, "reasoning_content", None) or ""
                        for c in chunks if c.choices)
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert reasoning == msg.reasoning_content
    assert content == (msg.content or "")
