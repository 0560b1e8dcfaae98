"""`softprompt serve` on SmolLM2-135M-Instruct (real weights, Llama with grouped-query attention and RoPE):
16 concurrent clients over two prompts, the bare model and its chat template each get the in-process answer."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import openai
import pytest
import torch

import softprompt
from softprompt._collate import Collator
from softprompt.data import Example
from softprompt.models import ModelError, load_model
from softprompt.serve import Server

import _serving

pytestmark = pytest.mark.slow

TEXTS = ["name : The Eagle | food : French", "The capital of France is", "a gorgeous , witty film",
         "Write a haiku about tea.", "name : Acme | area : riverside", "the plot is a tired mess", "2 + 2 =",
         "Once upon a time"]


def load():
    try:
        return load_model("smollm2")
    except ModelError as error:
        pytest.skip(str(error))


def test_sixteen_clients_on_smollm2_get_the_in_process_answers(tmp_path: Path) -> None:
    base, tokenizer = load()
    folders = {}
    for seed, config in enumerate([softprompt.PromptTuningConfig(num_virtual_tokens=8),
                                   softprompt.PTuningV2Config(num_virtual_tokens=8, prefix_dropout=0.0)]):
        torch.manual_seed(seed)
        pm = softprompt.attach(base, config, tokenizer)
        _serving.perturb(pm, seed)
        pm.eval().export(tmp_path / config.method)
        folders[config.method] = tmp_path / config.method
        pm.detach()
    expected = {}
    for method, folder in folders.items():
        collator = Collator(softprompt.load(base, folder, tokenizer=tokenizer).eval(), "generation", [])
        for text in TEXTS:
            expected[method, text] = collator.predict([Example(text=text)], max_new_tokens=12)[0]
    for text in TEXTS:
        ids = tokenizer(text, return_tensors="pt")
        out = base.generate(**ids, max_new_tokens=12, do_sample=False)
        expected["smollm2", text] = tokenizer.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)
    messages = [{"role": "user", "content": "What is a soft prompt?"}]
    ids = tokenizer(tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False),
                    add_special_tokens=False, return_tensors="pt")
    out = base.generate(**ids, max_new_tokens=12, do_sample=False)
    chat_answer = tokenizer.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)

    server = Server(base, tokenizer, "smollm2", max_batch_size=16)
    for method, folder in folders.items():
        server.add(method, folder)
    jobs = [(task, text) for text in TEXTS for task in [*folders, "smollm2"]]
    with _serving.serving(server) as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=600)

        def ask(job):
            task, text = job
            return client.completions.create(model=task, prompt=text, max_tokens=12, temperature=0).choices[0].text

        with ThreadPoolExecutor(16) as pool:
            chat = pool.submit(lambda: client.chat.completions.create(model="smollm2", messages=messages, max_tokens=12,
                                                                      temperature=0))
            answers = list(pool.map(ask, jobs))
    assert answers == [expected[job] for job in jobs]
    assert chat.result().choices[0].message.content == chat_answer
    assert all(len({expected[task, text] for task in [*folders, "smollm2"]}) >= 2 for text in TEXTS)
