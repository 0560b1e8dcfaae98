"""`softprompt serve` over loopback: the official openai client against the completions and chat endpoints,
raw HTTP for the rest. A greedy answer is the one `softprompt generate` prints, whatever shares its batch."""

from __future__ import annotations

import http.client
import json
import socket
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlsplit

import httpx2 as httpx
import openai
import pytest
import torch

from softprompt import cli
from softprompt.data import Example
from softprompt.models import load_model
from softprompt.serve import Server, parse_prompts

import _serving
from _serving import paused, serving, wait_for

TEXTS = ["name : acme | food : good", "the movie was very bad", "john lives in paris", "a place", "the film is good",
         "acme works at paris", "food : poor | area : city", "great film"]
GENERATING = ["e2e", "data2text", "names"]


@pytest.fixture(scope="module")
def gpt2(tmp_path_factory):
    """(base model folder, {run name: run folder}) on the tiny GPT-2."""
    return _serving.gpt2_runs(tmp_path_factory.mktemp("gpt2"))


@pytest.fixture(scope="module")
def server(gpt2):
    model, runs = gpt2
    base, tokenizer = load_model(str(model))
    server = Server(base, tokenizer, "gpt2", max_batch_size=16)
    for name, folder in runs.items():
        server.add(name, folder)
    return server


@pytest.fixture(scope="module")
def url(server):
    with serving(server) as url:
        yield url


@pytest.fixture(scope="module")
def client(url):
    return openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)


@pytest.fixture(scope="module")
def expected(gpt2):
    """The in-process answers: `softprompt generate`'s (the run's Collator.predict) and the base model's own generate."""
    model, runs = gpt2
    answers = {}
    for name in [*GENERATING, "sentiment"]:
        collator = _serving.run_collator(runs[name])
        for text in TEXTS:
            answers[name, text] = collator.predict([Example(text=text)], max_new_tokens=10)[0]
    base, tokenizer = load_model(str(model))
    for text in TEXTS:
        batch = tokenizer(text, return_tensors="pt")
        out = base.generate(**batch, max_new_tokens=10, do_sample=False)
        answers["gpt2", text] = tokenizer.decode(out[0, batch["input_ids"].shape[1]:], skip_special_tokens=True)
    return answers


def post(url: str, path: str, body, headers: dict | None = None) -> httpx.Response:
    content = body if isinstance(body, str) else json.dumps(body)
    return httpx.post(url + path, content=content, headers={"Content-Type": "application/json", **(headers or {})}, timeout=60)


# -- the tasks ------------------------------------------------------------------------------------
def test_models_lists_every_task_with_its_method_and_use(client):
    models = {m.id: m.model_dump() for m in client.models.list().data}
    assert set(models) == {"gpt2", "e2e", "data2text", "names", "sentiment"}
    assert models["gpt2"]["method"] is None and models["gpt2"]["serves"] == "generate" and models["gpt2"]["chat"]
    assert (models["e2e"]["method"], models["data2text"]["method"], models["names"]["method"]) == (
        "prompt-tuning", "prefix-tuning", "p-tuning-v2")
    assert models["sentiment"]["serves"] == "classify" and models["sentiment"]["labels"] == ["neg", "pos"]
    assert {m["base_model"] for m in models.values()} == {"gpt2"}
    assert client.models.retrieve("sentiment").model_dump() == models["sentiment"]
    with pytest.raises(openai.NotFoundError, match="not served here"):
        client.models.retrieve("nope")


def test_sixteen_concurrent_clients_get_the_answers_softprompt_generate_gives(client, server, expected):
    """3 prompts and the bare model in shared batches: every greedy answer equals the in-process one."""
    jobs = [(task, text) for text in TEXTS for task in [*GENERATING, "gpt2"]]  # 32 requests

    def ask(job):
        task, text = job
        return client.completions.create(model=task, prompt=text, max_tokens=10, temperature=0).choices[0].text

    shared_before = shared_steps(server)
    with ThreadPoolExecutor(16) as pool:
        with paused(server.engine):  # the first 16 arrive together; the others join while those decode
            answering = pool.map(ask, jobs)
            wait_for(lambda: server.engine.waiting == 16, what="16 queued requests")
        answers = list(answering)
    assert answers == [expected[job] for job in jobs]
    # The prompts change the answers (else rows routed to the wrong task could go unseen) ...
    assert all(len({expected[task, text] for task in [*GENERATING, "gpt2"]}) >= 3 for text in TEXTS)
    # ... and rows did share forwards.
    assert shared_steps(server) > shared_before


def shared_steps(server) -> float:
    """Decoding steps that held two rows or more."""
    sample = server.metrics.registry.get_sample_value
    return (sample("softprompt_batch_rows_count", {"kind": "decode"}) or 0) - (
        sample("softprompt_batch_rows_bucket", {"kind": "decode", "le": "1.0"}) or 0)


def test_the_answer_is_the_one_the_generate_command_prints(gpt2, client, capsys):
    _, runs = gpt2
    for task in GENERATING:
        assert cli.main(["generate", "--prompt", str(runs[task]), "--max-new-tokens", "10", TEXTS[0]]) == 0
        printed = capsys.readouterr().out.rstrip("\n")
        served = client.completions.create(model=task, prompt=TEXTS[0], max_tokens=10, temperature=0).choices[0].text
        assert served == printed


def test_a_stream_sends_the_same_text_in_pieces_with_usage_last(client):
    whole = client.completions.create(model="names", prompt=TEXTS[1], max_tokens=10, temperature=0)
    chunks = list(client.completions.create(model="names", prompt=TEXTS[1], max_tokens=10, temperature=0, stream=True,
                                            stream_options={"include_usage": True}))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == whole.choices[0].text
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == whole.choices[0].finish_reason
    assert chunks[-1].choices == [] and chunks[-1].usage.model_dump() == whole.usage.model_dump()
    assert len([c for c in chunks if c.choices and c.choices[0].text]) > 1


def test_usage_counts_the_input_and_generated_tokens(client, gpt2):
    collator = _serving.run_collator(gpt2[1]["e2e"])
    for text in TEXTS[:4]:
        ids = collator._source_ids(Example(text=text))
        with torch.no_grad():
            new = collator.pm.generate(input_ids=torch.tensor([ids]), max_new_tokens=5, do_sample=False)[0, len(ids):]
        out = client.completions.create(model="e2e", prompt=text, max_tokens=5, temperature=0)
        assert out.usage.prompt_tokens == len(ids)  # the real tokens (text and separator), not the soft ones
        assert out.usage.completion_tokens == len(new)  # the stop token included, as generate returns it
        assert out.usage.total_tokens == len(ids) + len(new)


def test_a_list_of_prompts_gets_one_choice_each(client, expected):
    out = client.completions.create(model="data2text", prompt=TEXTS[:3], max_tokens=10, temperature=0)
    assert [c.index for c in out.choices] == [0, 1, 2]
    assert [c.text for c in out.choices] == [expected["data2text", t] for t in TEXTS[:3]]


def test_a_stop_string_ends_the_text_before_it(client, server):
    server.engine.eos, eos = set(), server.engine.eos  # let the row run long enough to meet the stop string
    try:
        full = client.completions.create(model="gpt2", prompt=TEXTS[2], max_tokens=30, temperature=0).choices[0].text
        words = full.split()
        stop = words[len(words) // 2]
        cancelled = cancellations(server)
        cut = client.completions.create(model="gpt2", prompt=TEXTS[2], max_tokens=30, temperature=0, stop=[stop, "zzz"])
        streamed = client.completions.create(model="gpt2", prompt=TEXTS[2], max_tokens=30, temperature=0, stop=stop,
                                             stream=True)
        pieces = [c.choices[0] for c in streamed]
    finally:
        server.engine.eos = eos
    assert cancellations(server) == cancelled  # a row cut at a stop string ended by "stop" in the metrics
    assert cut.choices[0].text == full[: full.index(stop)]
    assert cut.choices[0].finish_reason == "stop" and cut.usage.completion_tokens < 30
    assert "".join(p.text for p in pieces) == cut.choices[0].text and pieces[-1].finish_reason == "stop"


def test_sampling_with_a_seed_repeats_and_other_seeds_differ(client):
    def sample(seed):
        return client.completions.create(model="e2e", prompt=TEXTS[4], max_tokens=12, temperature=1.5, top_p=0.95,
                                         seed=seed).choices[0].text
    first = sample(3)
    assert sample(3) == first
    assert len({first, sample(4), sample(5), sample(6)}) > 1


def test_chat_completions_apply_the_chat_template(client, server):
    messages = [{"role": "user", "content": "the movie was good"}]
    tokenizer = server.tokenizer
    ids = tokenizer(tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False),
                    add_special_tokens=False, return_tensors="pt")
    with torch.no_grad():
        out = server.pm.base_model.generate(**ids, max_new_tokens=8, do_sample=False)
    want = tokenizer.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)
    chat = client.chat.completions.create(model="gpt2", messages=messages, max_tokens=8, temperature=0)
    assert chat.choices[0].message.role == "assistant" and chat.choices[0].message.content == want
    assert chat.usage.prompt_tokens == ids["input_ids"].shape[1]
    stream = list(client.chat.completions.create(model="gpt2", messages=messages, max_tokens=8, temperature=0, stream=True))
    assert stream[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in stream) == want
    prompted = client.chat.completions.create(model="names", messages=messages, max_tokens=8, temperature=0)
    assert prompted.model == "names"
    tokenizer.chat_template, template = None, tokenizer.chat_template
    try:
        with pytest.raises(openai.BadRequestError, match="has no chat template; POST /v1/completions"):
            client.chat.completions.create(model="gpt2", messages=messages, max_tokens=8)
        assert not {m.id: m.model_dump() for m in client.models.list().data}["gpt2"]["chat"]
    finally:
        tokenizer.chat_template = template


def test_a_stream_is_framed_as_openai_sends_it(url):
    """Each event one `data: JSON` line and a blank line; with include_usage, "usage": null on every chunk but
    the last, which has no choices and the usage; then `data: [DONE]`."""
    for path, body in (("/v1/completions", {"model": "names", "prompt": TEXTS[1]}),
                       ("/v1/chat/completions", {"model": "gpt2", "messages": [{"role": "user", "content": TEXTS[1]}]})):
        body = {**body, "max_tokens": 6, "temperature": 0, "stream": True, "stream_options": {"include_usage": True}}
        with httpx.stream("POST", url + path, json=body, timeout=60) as reply:
            assert reply.status_code == 200 and reply.headers["content-type"].startswith("text/event-stream")
            raw = reply.read().decode()
        assert raw.endswith("\n\n") and "\r" not in raw
        events = raw[:-2].split("\n\n")
        assert all(e.startswith("data: ") and "\n" not in e for e in events)
        assert events[-1] == "data: [DONE]"
        chunks = [json.loads(e[len("data: "):]) for e in events[:-1]]
        assert len({c["id"] for c in chunks}) == 1
        assert all(c["usage"] is None and len(c["choices"]) == 1 for c in chunks[:-1])
        assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 6
        assert chunks[-2]["choices"][0]["finish_reason"] == "length"
    plain = httpx.post(url + "/v1/completions", json={"model": "names", "prompt": "a", "max_tokens": 2, "stream": True},
                       timeout=60).text
    assert '"usage"' not in plain and plain.endswith("data: [DONE]\n\n")


@pytest.mark.parametrize(("path", "extra", "says"), [
    ("/v1/completions", {"logprobs": 2}, "logprobs is not supported"),
    ("/v1/completions", {"logprobs": 0}, "logprobs is not supported"),
    ("/v1/completions", {"echo": True}, "echo is not supported"),
    ("/v1/completions", {"best_of": 3}, "best_of is not supported"),
    ("/v1/completions", {"suffix": "x"}, "suffix is not supported"),
    ("/v1/completions", {"logit_bias": {"5": 10}}, "logit_bias is not supported"),
    ("/v1/completions", {"frequency_penalty": 0.5}, "frequency_penalty is not supported"),
    ("/v1/completions", {"presence_penalty": -1}, "presence_penalty is not supported"),
    ("/v1/completions", {"stream_options": {"include_usage": True}}, "stream_options is only allowed with"),
    ("/v1/chat/completions", {"logprobs": True}, "logprobs is not supported"),
    ("/v1/chat/completions", {"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools is not supported"),
    ("/v1/chat/completions", {"response_format": {"type": "json_object"}}, "response_format is not supported"),
    ("/v1/chat/completions", {"messages": [{"role": "tool", "content": "x"}]}, "messages.0.role"),
])
def test_openai_parameters_the_server_lacks_are_a_400_naming_them(url, path, extra, says):
    body = {"model": "gpt2", "max_tokens": 2, **({"prompt": "a"} if path == "/v1/completions" else
                                                 {"messages": [{"role": "user", "content": "a"}]}), **extra}
    reply = post(url, path, body)
    assert reply.status_code == 400, reply.text
    assert says in reply.json()["error"]["message"]


def test_openai_parameters_at_their_neutral_values_are_taken(client):
    """What clients send by default (null logprobs, zero penalties, best_of 1) asks for nothing and is accepted."""
    plain = client.completions.create(model="e2e", prompt=TEXTS[0], max_tokens=6, temperature=0).choices[0].text
    same = client.completions.create(model="e2e", prompt=TEXTS[0], max_tokens=6, temperature=0, echo=False, best_of=1,
                                     frequency_penalty=0, presence_penalty=0.0, logit_bias={},
                                     extra_body={"logprobs": None})
    assert same.choices[0].text == plain
    chat = client.chat.completions.create(model="gpt2", messages=[{"role": "user", "content": "a"}], max_tokens=2,
                                          logprobs=False, frequency_penalty=0, tool_choice="none")
    assert chat.choices[0].message.role == "assistant"


def test_n_gives_n_choices_per_prompt_in_openais_order(client, expected):
    greedy = client.completions.create(model="data2text", prompt=TEXTS[:2], max_tokens=10, temperature=0, n=3)
    assert [c.index for c in greedy.choices] == list(range(6))
    assert [c.text for c in greedy.choices] == [expected["data2text", t] for t in TEXTS[:2] for _ in range(3)]
    alone = client.completions.create(model="data2text", prompt=TEXTS[:2], max_tokens=10, temperature=0)
    assert greedy.usage.prompt_tokens == alone.usage.prompt_tokens  # the prompts are counted once, as OpenAI does

    def sample():
        return [c.text for c in client.completions.create(model="e2e", prompt=TEXTS[4], max_tokens=12, temperature=1.5,
                                                          seed=3, n=4).choices]
    first = sample()
    assert sample() == first and len(set(first)) > 1  # each choice its own draw, the same ones again for the seed
    single = client.completions.create(model="e2e", prompt=TEXTS[4], max_tokens=12, temperature=1.5, seed=3).choices
    assert single[0].text == first[0]
    chat = client.chat.completions.create(model="gpt2", messages=[{"role": "user", "content": "a"}], max_tokens=4,
                                          temperature=0, n=2)
    assert [c.index for c in chat.choices] == [0, 1] and chat.choices[0].message.content == chat.choices[1].message.content
    streamed = list(client.chat.completions.create(model="gpt2", messages=[{"role": "user", "content": "a"}],
                                                   max_tokens=4, temperature=0, n=2, stream=True))
    for i in (0, 1):
        mine = [c.choices[0] for c in streamed if c.choices[0].index == i]
        assert mine[0].delta.role == "assistant"
        assert "".join(c.delta.content or "" for c in mine) == chat.choices[i].message.content


def test_chat_takes_text_parts_and_the_developer_role(client):
    plain = [{"role": "system", "content": "be good"}, {"role": "user", "content": "the movie was good"}]
    parts = [{"role": "developer", "content": "be good"},
             {"role": "user", "content": [{"type": "text", "text": "the movie"}, {"type": "text", "text": "was good"}]}]
    plain[1]["content"] = "the movie\nwas good"  # parts are joined by a line break
    answers = [client.chat.completions.create(model="gpt2", messages=m, max_tokens=6, temperature=0) for m in (plain, parts)]
    assert answers[0].choices[0].message.content == answers[1].choices[0].message.content
    assert answers[0].usage.prompt_tokens == answers[1].usage.prompt_tokens


def test_classify_gives_the_runs_label_and_scores_per_text(url, expected):
    reply = post(url, "/v1/classify", {"model": "sentiment", "input": TEXTS[:4]})
    assert reply.status_code == 200, reply.text
    rows = reply.json()["data"]
    assert [r["label"] for r in rows] == [expected["sentiment", t] for t in TEXTS[:4]]
    for row in rows:
        assert set(row["scores"]) == {"neg", "pos"} and abs(sum(row["scores"].values()) - 1) < 1e-5
        assert row["label"] == max(row["scores"], key=row["scores"].get)
    assert post(url, "/v1/classify", {"model": "sentiment", "input": "great film"}).json()["data"][0]["index"] == 0


# -- bad input --------------------------------------------------------------------------------------
@pytest.mark.parametrize(("body", "status", "says"), [
    ("{not json", 400, "not valid JSON"),
    ({"model": "e2e", "prompt": 5}, 400, "prompt: Input should be a valid string"),
    ({"model": "e2e", "prompt": "a", "max_tokens": "5"}, 400, "max_tokens: Input should be a valid integer"),
    ({"model": "e2e", "prompt": "a", "max_tokens": 0}, 400, "max_tokens: Input should be greater than or equal to 1"),
    ({"model": "e2e", "prompt": "a", "max_tokens": 1000}, 400, "ask for at most"),
    ({"model": "e2e", "prompt": "a", "max_token": 5}, 400, "max_token: Extra inputs are not permitted"),
    ({"model": "e2e", "prompt": "a", "temperature": 3}, 400, "temperature: Input should be less than or equal to 2"),
    ({"model": "e2e"}, 400, "prompt: Field required"),
    ({"model": "e2e", "prompt": ""}, 400, "prompt is empty"),
    ({"model": "e2e", "prompt": []}, 400, "prompt is empty"),
    ({"model": "e2e", "prompt": "a", "n": 0}, 400, "n: Input should be greater than or equal to 1"),
    ({"model": "e2e", "prompt": " ".join(["good"] * 40)}, 400, "takes at most 16 (half its run's max_length 32)"),
    ({"model": "gpt2", "prompt": " ".join(["good"] * 130)}, 400, "but the model has 128"),
    ({"model": "nope", "prompt": "a"}, 404, "model 'nope' is not served here"),
    ({"model": "sentiment", "prompt": "a"}, 400, "POST /v1/classify"),
])
def test_bad_completion_requests_get_a_one_line_error(url, body, status, says):
    reply = post(url, "/v1/completions", body)
    assert reply.status_code == status, reply.text
    message = reply.json()["error"]["message"]
    assert says in message and "\n" not in message


def test_unknown_routes_and_methods_answer_in_openais_error_shape(url):
    for reply, status in ((httpx.get(f"{url}/v1/nothing"), 404), (httpx.get(f"{url}/v1/completions"), 405)):
        assert reply.status_code == status and set(reply.json()["error"]) == {"message", "type", "param", "code"}


def test_classify_refuses_generation_tasks_and_long_inputs(url):
    assert "POST /v1/completions" in post(url, "/v1/classify", {"model": "e2e", "input": "a"}).json()["error"]["message"]
    long = post(url, "/v1/classify", {"model": "sentiment", "input": " ".join(["good"] * 40)})
    assert long.status_code == 400 and "takes at most 32" in long.json()["error"]["message"]


def test_the_openai_client_sees_the_errors_as_its_own(client):
    with pytest.raises(openai.NotFoundError, match="not served here"):
        client.completions.create(model="nope", prompt="a")
    with pytest.raises(openai.BadRequestError, match="max_tokens"):
        client.completions.create(model="e2e", prompt="a", max_tokens=0)


def test_a_full_queue_answers_429_with_retry_after(gpt2):
    model, runs = gpt2
    base, tokenizer = load_model(str(model))
    server = Server(base, tokenizer, "gpt2", max_batch_size=1, max_queue=2)
    with serving(server) as url, paused(server.engine):
        first = post_async(url, {"model": "gpt2", "prompt": "a place", "max_tokens": 2})
        second = post_async(url, {"model": "gpt2", "prompt": "a place", "max_tokens": 2})
        wait_for(lambda: server.engine.waiting == 2, what="two queued rows")
        third = post(url, "/v1/completions", {"model": "gpt2", "prompt": "a place", "max_tokens": 2})
    assert third.status_code == 429 and third.headers["Retry-After"] == "1"
    assert "busy" in third.json()["error"]["message"]
    assert first.result().status_code == 200 and second.result().status_code == 200
    with serving(server) as url:  # more rows than the queue ever holds: retrying cannot help, so a 400
        big = post(url, "/v1/completions", {"model": "gpt2", "prompt": "a place", "max_tokens": 2, "n": 3})
    assert big.status_code == 400 and "queues at most 2" in big.json()["error"]["message"]


def test_a_stopping_server_answers_503_with_retry_after(gpt2):
    model, _ = gpt2
    base, tokenizer = load_model(str(model))
    server = Server(base, tokenizer, "gpt2")
    with serving(server) as url:
        server.engine.stop()  # what the lifespan does on SIGTERM once the connections are done
        reply = post(url, "/v1/completions", {"model": "gpt2", "prompt": "a place", "max_tokens": 2})
        health = httpx.get(f"{url}/health")
    assert reply.status_code == 503 and reply.headers["Retry-After"] == "5"
    assert "shutting down" in reply.json()["error"]["message"]
    assert health.status_code == 503 and health.json()["status"] == "engine stopped"


def post_async(url: str, body: dict):
    return ThreadPoolExecutor(1).submit(post, url, "/v1/completions", body)


def test_the_api_key_guards_every_v1_route(gpt2):
    from softprompt._http import create_app

    model, runs = gpt2
    base, tokenizer = load_model(str(model))
    server = Server(base, tokenizer, "gpt2", api_key="s3cret")
    server.add("e2e", runs["e2e"])
    # Every route of the app under /v1, whatever its method: none answers without the key.
    routes = [(method, route.path.replace("{name:path}", "e2e")) for route in create_app(server).routes
              if route.path.startswith("/v1") for method in getattr(route, "methods", ())]
    assert {path for _, path in routes} == {"/v1/models", "/v1/models/e2e", "/v1/completions", "/v1/chat/completions",
                                            "/v1/classify", "/v1/prompts", "/v1/prompts/e2e"}
    with serving(server) as url:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret"}, {"Authorization": "Basic s3cret"}):
            for method, path in routes:
                reply = httpx.request(method, url + path, content="{not even json", headers=headers, timeout=30)
                assert reply.status_code == 401, (method, path, headers, reply.text)
                assert reply.headers["WWW-Authenticate"] == "Bearer" and "API key" in reply.json()["error"]["message"]
        assert "e2e" in server.tasks  # the refused DELETE did nothing
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=f"{url}/v1", api_key="wrong", max_retries=0).models.list()
        good = openai.OpenAI(base_url=f"{url}/v1", api_key="s3cret", max_retries=0)
        assert good.completions.create(model="gpt2", prompt="a place", max_tokens=2).choices
        assert good.chat.completions.create(model="e2e", messages=[{"role": "user", "content": "a"}], max_tokens=2).choices
        for path in ("/health", "/metrics", "/"):  # health, metrics and the page stay open
            assert httpx.get(url + path).status_code == 200


# -- streams, prompts, health -------------------------------------------------------------------------
def test_a_client_that_leaves_mid_stream_frees_its_row(url, server):
    server.engine.eos, eos = set(), server.engine.eos  # the row would run its 100 tokens unless cancelled
    cancelled = cancellations(server)
    try:
        address = urlsplit(url)
        connection = http.client.HTTPConnection(address.hostname, address.port, timeout=30)
        body = json.dumps({"model": "names", "prompt": "a place", "max_tokens": 100, "temperature": 0, "stream": True})
        with paused(server.engine):  # hold the row so it is certainly running when the client leaves
            connection.request("POST", "/v1/completions", body, {"Content-Type": "application/json"})
            wait_for(lambda: server.engine.waiting == 1, what="the queued row")
        response = connection.getresponse()
        assert response.status == 200
        assert response.read(6) == b"data: "  # the first token's chunk
        connection.sock.close()  # the client goes away with 99 tokens to come
        connection.close()
        wait_for(lambda: cancellations(server) == cancelled + 1, what="the cancellation")
        wait_for(lambda: server.engine.active == 0, what="an empty batch")
    finally:
        server.engine.eos = eos


def test_a_client_that_leaves_before_a_whole_answer_frees_its_row(url, server):
    server.engine.eos, eos = set(), server.engine.eos
    cancelled = cancellations(server)
    try:
        address = urlsplit(url)
        connection = http.client.HTTPConnection(address.hostname, address.port, timeout=30)
        body = json.dumps({"model": "names", "prompt": "a place", "max_tokens": 100, "temperature": 0})
        with paused(server.engine):
            connection.request("POST", "/v1/completions", body, {"Content-Type": "application/json"})
            wait_for(lambda: server.engine.waiting == 1, what="the queued row")
            connection.sock.close()  # gone before its first token
            connection.close()
        wait_for(lambda: cancellations(server) == cancelled + 1, what="the cancellation")
        wait_for(lambda: server.engine.active == 0 and server.engine.waiting == 0, what="an empty batch")
        assert server.metrics.registry.get_sample_value("softprompt_generated_tokens_total") is not None
    finally:
        server.engine.eos = eos


def cancellations(server) -> float:
    return server.metrics.registry.get_sample_value("softprompt_rows_finished_total", {"reason": "cancelled"}) or 0


def test_prompts_load_and_unload_while_serving(url, gpt2, server, expected, tmp_path):
    _, runs = gpt2
    added = post(url, "/v1/prompts", {"name": "e2e-copy", "path": str(runs["e2e"])})
    assert added.status_code == 201, added.text
    assert added.json()["id"] == "e2e-copy" and added.json()["method"] == "prompt-tuning"
    answer = post(url, "/v1/completions", {"model": "e2e-copy", "prompt": TEXTS[0], "max_tokens": 10, "temperature": 0})
    assert answer.json()["choices"][0]["text"] == expected["e2e", TEXTS[0]]
    assert post(url, "/v1/prompts", {"name": "e2e-copy", "path": str(runs["e2e"])}).status_code == 409
    missing = post(url, "/v1/prompts", {"name": "other", "path": str(tmp_path / "nowhere")})
    assert missing.status_code == 400 and "no such folder" in missing.json()["error"]["message"]
    bert = post(url, "/v1/prompts", {"name": "other", "path": str(_serving.bert_runs(tmp_path)[1]["polarity"])})
    assert bert.status_code == 400 and "another base model" in bert.json()["error"]["message"]

    # Unloading: requests already taken finish; new ones get 404; the prompt leaves the model after.
    key = server.tasks["e2e-copy"].key
    with paused(server.engine):
        running = post_async(url, {"model": "e2e-copy", "prompt": TEXTS[0], "max_tokens": 10, "temperature": 0})
        wait_for(lambda: server.engine.waiting == 1, what="the queued row")
        deleted = httpx.delete(f"{url}/v1/prompts/e2e-copy")
        assert deleted.status_code == 200 and deleted.json()["deleted"] is True
        assert post(url, "/v1/completions", {"model": "e2e-copy", "prompt": "a"}).status_code == 404
        assert key in server.pm.tasks
    assert running.result().json()["choices"][0]["text"] == expected["e2e", TEXTS[0]]
    wait_for(lambda: key not in server.pm.tasks, what="the prompt to leave the model")
    assert httpx.delete(f"{url}/v1/prompts/e2e-copy").status_code == 404
    assert httpx.delete(f"{url}/v1/prompts/gpt2").status_code == 400  # the base model itself


def test_a_peft_adapter_is_served_as_a_prompt(url, gpt2, tmp_path):
    """A folder in PEFT's format (no run beside it) serves with the training defaults, as `softprompt.load` reads it."""
    import softprompt
    from softprompt._collate import Collator

    model, runs = gpt2
    base, tokenizer = load_model(str(model))
    softprompt.load(base, runs["e2e"] / "best", tokenizer=tokenizer).export(tmp_path / "peft", format="peft")
    assert (tmp_path / "peft" / "adapter_config.json").is_file()
    added = post(url, "/v1/prompts", {"name": "peft-e2e", "path": str(tmp_path / "peft")})
    assert added.status_code == 201, added.text
    assert added.json()["method"] == "prompt-tuning" and added.json()["serves"] == "generate"
    base, tokenizer = load_model(str(model))
    collator = Collator(softprompt.load(base, tmp_path / "peft", tokenizer=tokenizer).eval(), "generation", [])
    for text in TEXTS[:3]:
        want = collator.predict([Example(text=text)], max_new_tokens=10)[0]
        got = post(url, "/v1/completions", {"model": "peft-e2e", "prompt": text, "max_tokens": 10, "temperature": 0})
        assert got.json()["choices"][0]["text"] == want
    assert httpx.delete(f"{url}/v1/prompts/peft-e2e").status_code == 200


def test_health_metrics_and_the_page(url, client):
    from prometheus_client.parser import text_string_to_metric_families

    before = httpx.get(f"{url}/metrics").text
    client.completions.create(model="e2e", prompt="a place", max_tokens=3, temperature=0)
    post(url, "/v1/classify", {"model": "sentiment", "input": ["good", "bad"]})
    health = httpx.get(f"{url}/health").json()
    assert health["status"] == "ok" and health["models"] >= 5
    assert {"active_rows", "waiting_rows"} <= set(health)
    metrics = httpx.get(f"{url}/metrics")
    assert metrics.headers["content-type"].startswith("text/plain; version=")
    families = {f.name: f for f in text_string_to_metric_families(metrics.text)}  # Prometheus' own text format parser
    assert {name: families[name].type for name in (
        "softprompt_requests", "softprompt_queue_length", "softprompt_active_rows", "softprompt_batch_rows",
        "softprompt_generated_tokens", "softprompt_tokens_per_second", "softprompt_rows_finished")} == {
        "softprompt_requests": "counter", "softprompt_queue_length": "gauge", "softprompt_active_rows": "gauge",
        "softprompt_batch_rows": "histogram", "softprompt_generated_tokens": "counter",
        "softprompt_tokens_per_second": "gauge", "softprompt_rows_finished": "counter"}

    def value(text: str, name: str, **labels) -> float:
        return sum(s.value for f in text_string_to_metric_families(text) for s in f.samples
                   if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()))

    assert value(metrics.text, "softprompt_requests_total", route="/v1/completions", status="200") == value(
        before, "softprompt_requests_total", route="/v1/completions", status="200") + 1
    assert value(metrics.text, "softprompt_generated_tokens_total") - value(before, "softprompt_generated_tokens_total") >= 3
    assert value(metrics.text, "softprompt_batch_rows_sum", kind="classify") - value(
        before, "softprompt_batch_rows_sum", kind="classify") == 2
    assert value(metrics.text, "softprompt_tokens_per_second") > 0  # tokens within the last 10 s
    assert value(metrics.text, "softprompt_queue_length") == 0 and value(metrics.text, "softprompt_active_rows") == 0
    page = httpx.get(url + "/")
    assert page.status_code == 200 and "softprompt playground" in page.text


# -- encoders ---------------------------------------------------------------------------------------
def test_an_encoder_serves_classification_and_tagging(tmp_path):
    model, runs = _serving.bert_runs(tmp_path)
    base, tokenizer = load_model(str(model))
    server = Server(base, tokenizer, str(model))
    for name, folder in runs.items():
        server.add(name, folder)
    assert set(server.tasks) == {"polarity", "ner"}  # an encoder is not served bare: it cannot generate
    texts = ["john lives in paris", "the film is good", "john works at acme"]
    with serving(server) as url:
        polarity = post(url, "/v1/classify", {"model": "polarity", "input": texts}).json()["data"]
        ner = post(url, "/v1/classify", {"model": "ner", "input": texts}).json()["data"]
        refused = post(url, "/v1/completions", {"model": "polarity", "prompt": "a"})
    for name, rows in (("polarity", polarity), ("ner", ner)):
        collator = _serving.run_collator(runs[name])
        predicted = collator.predict([Example(text=t, tokens=t.split()) for t in texts])
        assert [r.get("label", r.get("tags")) for r in rows] == predicted
    assert ner[0]["words"] == texts[0].split() and len(ner[0]["tags"]) == 4
    assert refused.status_code == 400


def test_prompt_flags_parse_repeated_and_comma_separated():
    assert parse_prompts(["a=runs/a", "b=runs/b,c=x"]) == {"a": "runs/a", "b": "runs/b", "c": "x"}
    assert parse_prompts("a=runs/a") == {"a": "runs/a"}
    with pytest.raises(ValueError, match="expected NAME=FOLDER"):
        parse_prompts(["runs/a"])
    with pytest.raises(ValueError, match="given twice"):
        parse_prompts(["a=x", "a=y"])


def test_serve_is_a_command(capsys):
    with pytest.raises(SystemExit):
        cli.main(["serve", "--help"])
    help_text = capsys.readouterr().out
    for flag in ("--model", "--prompt", "--host", "--port", "--api-key", "--max-batch-size", "--max-queue"):
        assert flag.replace("-", "_").replace("__", "--") in help_text  # help spells flags with underscores


def test_bad_serve_flags_are_one_line_errors(gpt2, capsys):
    model, runs = gpt2
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        for args, says in ((["--prompt", "runs/e2e"], "expected NAME=FOLDER"),
                           (["--prompt", f"a={runs['e2e']}", "--prompt", f"a={runs['names']}"], "given twice"),
                           (["--prompt", f"{model}={runs['e2e']}"], "is served already"),
                           (["--prompt", "x=/nowhere/at/all"], "no such folder"),
                           (["--max-batch-size", "0"], "--max-batch-size 0: give at least 1"),
                           (["--max-queue", "-1"], "--max-queue -1: give at least 1"),
                           (["--port", "70000"], "give a TCP port from 0 to 65535"),
                           (["--port", port], "pick another port"),
                           (["--host", "no.such.host.invalid"], "--host no.such.host.invalid")):
            assert cli.main(["serve", "--model", str(model), *args]) == 2, args
            err = capsys.readouterr().err.strip().splitlines()
            assert says in err[-1] and err[-1].startswith("softprompt: error: "), (args, err)


def test_an_engine_not_started_runs_its_queue_in_the_callers_thread(gpt2, expected):
    """Engine.run_pending (what bench/serve_bench.py times) decodes as the engine's thread does."""
    from softprompt._engine import Generation

    model, runs = gpt2
    base, tokenizer = load_model(str(model))
    server = Server(base, tokenizer, "gpt2")
    for name in GENERATING:
        server.add(name, runs[name])
    tokens: dict[tuple[str, str], list[int]] = {}

    def row(task: str, text: str) -> Generation:
        served = server.tasks[task]
        mine = tokens.setdefault((task, text), [])
        return Generation(served.key, server.completion_ids(served, text), 10,
                          lambda event, value: mine.append(value) if event == "token" else None)

    jobs = [(task, text) for text in TEXTS[:4] for task in GENERATING]
    server.engine.submit([row(*job) for job in jobs])
    server.engine.run_pending()
    assert server.engine.active == 0 and server.engine.waiting == 0
    assert [tokenizer.decode(tokens[job], skip_special_tokens=True).strip() for job in jobs] == [expected[j] for j in jobs]
    server.engine.start()
    try:
        with pytest.raises(RuntimeError, match="thread is running"):
            server.engine.run_pending()
    finally:
        server.engine.stop()
