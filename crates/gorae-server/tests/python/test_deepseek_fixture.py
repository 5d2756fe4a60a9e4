"""The same client against a DeepSeek-architecture model (the tiny random DeepSeek-V3 fixture:
absorbed MLA over the latent cache, routed experts). Its weights are random, so the tests check
the protocol and consistency, not the words: streamed equals whole, seeds reproduce, usage
adds up, and streams served side by side equal their solo runs."""

import concurrent.futures

from conftest import MODEL_ID

MESSAGES = [{"role": "user", "content": "Write a short poem about whales."}]


def test_chat_whole_streamed_and_usage(deepseek_client):
    c = deepseek_client
    whole = c.chat.completions.create(model=MODEL_ID, messages=MESSAGES, max_tokens=16,
                                      temperature=0)
    choice = whole.choices[0]
    assert choice.finish_reason in ("stop", "length")
    u = whole.usage
    assert u.total_tokens == u.prompt_tokens + u.completion_tokens
    assert 0 < u.completion_tokens <= 16
    chunks = list(c.chat.completions.create(
        model=MODEL_ID, messages=MESSAGES, max_tokens=16, temperature=0,
        stream=True, stream_options={"include_usage": True}))
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert text == choice.message.content
    assert chunks[-1].usage.completion_tokens == u.completion_tokens
    # The same conversation again reuses the cached prompt.
    again = c.chat.completions.create(model=MODEL_ID, messages=MESSAGES, max_tokens=16,
                                      temperature=0)
    assert again.choices[0].message.content == choice.message.content
    assert again.usage.prompt_tokens_details.cached_tokens > 0


def test_completions_seed_and_logprobs(deepseek_client):
    c = deepseek_client
    kw = dict(model=MODEL_ID, prompt="Once upon a time", max_tokens=12, temperature=0.9,
              seed=7, logprobs=3)
    a = c.completions.create(**kw).choices[0]
    b = c.completions.create(**kw).choices[0]
    assert a.text == b.text
    assert len(a.logprobs.tokens) == len(a.logprobs.token_logprobs)
    assert all(lp <= 0 for lp in a.logprobs.token_logprobs)
    assert all(len(top) <= 3 for top in a.logprobs.top_logprobs)


def test_concurrent_streams_equal_their_solo_runs(deepseek_client):
    c = deepseek_client
    prompts = [f"Story number {i}:" for i in range(8)]

    def run(p, stream):
        kw = dict(model=MODEL_ID, prompt=p, max_tokens=12, temperature=0.8, seed=11)
        if not stream:
            return c.completions.create(**kw).choices[0].text
        return "".join(ch.choices[0].text for ch in c.completions.create(stream=True, **kw)
                       if ch.choices)

    solo = [run(p, False) for p in prompts]
    with concurrent.futures.ThreadPoolExecutor(len(prompts)) as pool:
        together = list(pool.map(lambda p: run(p, True), prompts))
    assert together == solo
