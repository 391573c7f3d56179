"""llama.cpp's prefill and decode speed on one GGUF file, run by a Python that has
llama-cpp-python (benchmarks/peers.py starts it; it imports nothing of pybitnet), printing one
JSON line: pp<P>_tok_s for each prompt length P and tg<N>_tok_s (medians of --reps runs, each
run's figure in *_samples), as decode.py measures pybitnet: a prompt of random ids in one eval
for prefill; 16 random ids, then N greedy steps of one token for decode.

    PEER_PYTHON benchmarks/peer_llama_cpp.py MODEL.gguf --threads 2 [--reps 3]
        [--prompts 128,512] [--decode 128] [--max-seconds 30]

--max-seconds bounds each decode run: it stops after that long, and its figure is the steps
done over the time they took (tg<N>_steps records how many), so a run starved of CPU ends.
"""

import argparse
import json
import statistics
import time

import llama_cpp
import numpy as np
from llama_cpp import Llama

DECODE_PROMPT = 16


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("--threads", type=int, required=True)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--prompts", default="128,512", help="prefill lengths ('' for none)")
    parser.add_argument("--decode", type=int, default=128, help="decode steps (0 for none)")
    parser.add_argument("--max-seconds", type=float, default=float("inf"))
    args = parser.parse_args()
    prompts = [int(n) for n in args.prompts.split(",") if n]
    # llama-cpp-python keeps the logits of the last n_batch positions (scores), so a batch
    # covers the whole decode run
    longest = max([*prompts, DECODE_PROMPT + args.decode + 1])
    llm = Llama(
        args.model,
        n_threads=args.threads,
        n_threads_batch=args.threads,
        n_ctx=max(1024, longest),
        n_batch=max(512, longest),
        verbose=False,
    )
    rng = np.random.default_rng(0)
    out = {"version": llama_cpp.__version__, "threads": args.threads}
    for n in prompts:
        samples = []
        for _ in range(args.reps):
            llm.reset()
            ids = rng.integers(0, llm.n_vocab(), n).tolist()
            start = time.perf_counter()
            llm.eval(ids)
            samples.append(n / (time.perf_counter() - start))
        out[f"pp{n}_tok_s"] = statistics.median(samples)
        out[f"pp{n}_samples"] = samples
    if args.decode:
        runs = [decode(llm, rng, args.decode, args.max_seconds) for _ in range(args.reps)]
        samples = [steps / seconds for steps, seconds in runs]
        out[f"tg{args.decode}_tok_s"] = statistics.median(samples)
        out[f"tg{args.decode}_samples"] = samples
        out[f"tg{args.decode}_steps"] = [steps for steps, _ in runs]
    print(json.dumps(out))


def decode(llm: Llama, rng: np.random.Generator, steps: int, max_seconds: float):
    """(steps done, seconds) of greedy decoding after a random 16-token prompt."""
    llm.reset()
    llm.eval(rng.integers(0, llm.n_vocab(), DECODE_PROMPT).tolist())
    token = int(np.argmax(llm.scores[llm.n_tokens - 1]))
    start = time.perf_counter()
    done = 0
    while done < steps and time.perf_counter() - start < max_seconds:
        llm.eval([token])
        token = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        done += 1
    return done, time.perf_counter() - start


if __name__ == "__main__":
    main()
