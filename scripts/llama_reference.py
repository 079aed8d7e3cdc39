#!/usr/bin/env python3
"""llama.cpp's figure for llm-bench: the same prompt texts, the same GGUF file, the same threads.

    cargo run --release -p agent-learning-llm --bin llm-bench -- --prompts /tmp/prompts.json
    python3 scripts/llama_reference.py /tmp/prompts.json [GGUF] [--threads 1,2] [--rounds 3]

GGUF defaults to the Q8_0 file the local model loads (written beside the package's Q4_1 file
by `agent-learning models fetch`):
~/.cache/agent-learning/models/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q8_0.v2.gguf.
Needs `pip install llama-cpp-python` (PyPI; it builds llama.cpp from source for this machine).

For each thread count it prints prefill tokens/s of each prompt (the whole prompt evaluated
in one batch on an empty cache, best of the rounds) and decode tokens/s (128 tokens after the
short prompt, greedy, one token a step, the prompt's time taken off), as llm-bench does.
"""

import argparse
import json
import os
import time


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("prompts")
    p.add_argument(
        "gguf",
        nargs="?",
        default=os.path.join(
            os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")),
            "agent-learning", "models", "smollm2-135m-instruct",
            "SmolLM2-135M-Instruct.Q8_0.v2.gguf",
        ),
    )
    p.add_argument("--threads", default="1,2")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--decode", type=int, default=128)
    a = p.parse_args()

    import llama_cpp
    import numpy as np

    with open(a.prompts, encoding="utf-8") as f:
        prompts = json.load(f)
    print(f"llama-cpp-python {llama_cpp.__version__}, {a.gguf}")
    for threads in [int(t) for t in a.threads.split(",")]:
        llm = llama_cpp.Llama(
            model_path=a.gguf,
            n_ctx=2048,
            n_batch=2048,
            n_ubatch=2048,
            n_threads=threads,
            n_threads_batch=threads,
            logits_all=False,
            verbose=False,
        )
        line = [f"llama.cpp, {threads} thread(s):"]
        secs = {}
        for name in sorted(prompts, key=lambda n: n != "short"):
            tokens = llm.tokenize(prompts[name].encode("utf-8"), add_bos=False, special=True)
            best = float("inf")
            for _ in range(a.rounds):
                llm.reset()
                t = time.perf_counter()
                llm.eval(tokens)
                best = min(best, time.perf_counter() - t)
            secs[name] = (tokens, best)
            line.append(f"prefill {name} {len(tokens) / best:.0f} tok/s ({len(tokens)} tokens);")
        tokens, prefill = secs["short"]
        llm.reset()
        t = time.perf_counter()
        llm.eval(tokens)
        for _ in range(a.decode):
            nxt = int(np.argmax(llm.scores[llm.n_tokens - 1]))
            llm.eval([nxt])
        decode = a.decode / (time.perf_counter() - t - prefill)
        line.append(f"decode {decode:.1f} tok/s ({a.decode} tokens)")
        print(" ".join(line), flush=True)
        del llm


if __name__ == "__main__":
    main()
