#!/usr/bin/env python3
"""sentence-transformers' figure for embed-bench: the same texts, the same MiniLM files.

    cargo run --release -p agent-learning-cli --features bench --bin embed-bench -- --texts /tmp/texts
    python3 scripts/minilm_reference.py /tmp/texts [MODEL_DIR] [--threads N] [--rounds N]

MODEL_DIR defaults to the directory `agent-learning models fetch` fills
(~/.cache/agent-learning/models/all-minilm-l6-v2). Needs `pip install sentence-transformers`
(PyPI; it brings torch). The model is built as all-MiniLM-L6-v2 is published: the transformer
(at most 256 tokens), mean pooling, normalisation. It prints sentences/s at batch 1 and 32 for
each set (best of the rounds), and the lowest cosine between its vectors and embed-bench's.
"""

import argparse
import json
import os
import time


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("texts")
    p.add_argument(
        "model_dir",
        nargs="?",
        default=os.path.join(
            os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")),
            "agent-learning", "models", "all-minilm-l6-v2",
        ),
    )
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--rounds", type=int, default=3)
    a = p.parse_args()

    import torch
    from sentence_transformers import SentenceTransformer, models

    torch.set_num_threads(a.threads)
    word = models.Transformer(a.model_dir, max_seq_length=256)
    dim = getattr(word, "get_embedding_dimension", None) or word.get_word_embedding_dimension
    pool = models.Pooling(dim(), pooling_mode="mean")
    model = SentenceTransformer(modules=[word, pool, models.Normalize()], device="cpu")
    print(f"sentence-transformers (torch {torch.__version__}), {a.threads} threads, "
          f"best of {a.rounds} rounds")
    for name in ("short", "states"):
        with open(os.path.join(a.texts, f"{name}.txt")) as f:
            texts = [line.rstrip("\n") for line in f if line.strip()]
        with open(os.path.join(a.texts, f"{name}.vectors.json")) as f:
            theirs = json.load(f)
        ours = model.encode(texts[: len(theirs)], batch_size=32, normalize_embeddings=True)
        cos = min(
            sum(x * y for x, y in zip(o, t)) / (sum(y * y for y in t) ** 0.5)
            for o, t in zip(ours.tolist(), theirs)
        )
        mean_chars = sum(len(t) for t in texts) // len(texts)
        for batch in (1, 32):
            model.encode(texts[:8], batch_size=batch)
            best = 0.0
            for _ in range(a.rounds):
                t = time.perf_counter()
                model.encode(texts, batch_size=batch)
                best = max(best, len(texts) / (time.perf_counter() - t))
            print(f"  {name:<6} ({len(texts)} texts, {mean_chars} chars on average) "
                  f"batch {batch:>2}: {best:.0f} sentences/s")
        print(f"  {name:<6} lowest cosine to embed-bench's first {len(theirs)} vectors: {cos:.5f}")


if __name__ == "__main__":
    main()
