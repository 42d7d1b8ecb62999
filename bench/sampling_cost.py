"""What per-row seeded sampling (models.hf.seeded_sampler) costs beside transformers' own sampling.

transformers' `do_sample` draws every row of a batch from torch's one shared generator, so a
sampled answer depends on its batch; teachfit draws each row by inverting its cumulative
distribution with one number from the row's own generator. This times one decoding step's
sampling, both ways, on logits of Gemma's vocabulary (262,144) for a batch of 32, and prints
the ratio (teachfit / transformers). Run: python bench/sampling_cost.py [--vocab N] [--batch B]
"""
from __future__ import annotations

import argparse
import time

import torch
import transformers

from teachfit.models.hf import seeded_sampler


def per_step(function, repeats: int) -> float:
    """Median seconds of one call."""
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        function()
        times.append(time.perf_counter() - started)
    return sorted(times)[len(times) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vocab", type=int, default=262_144)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args()
    logits = torch.randn(args.batch, args.vocab)
    warpers = transformers.LogitsProcessorList([transformers.TemperatureLogitsWarper(0.8),
                                                transformers.TopPLogitsWarper(0.95)])
    teachfit = seeded_sampler(0.8, 0.95, range(args.batch), "cpu")

    def shared_generator() -> None:  # what do_sample does after its warpers
        torch.multinomial(torch.softmax(warpers(None, logits), -1), 1)

    def per_row() -> None:
        teachfit(None, logits).argmax(-1)

    base, ours = per_step(shared_generator, args.repeats), per_step(per_row, args.repeats)
    print(f"torch threads {torch.get_num_threads()}, batch {args.batch}, vocabulary {args.vocab}")
    print(f"transformers do_sample (shared generator): {base * 1e3:.1f} ms per step")
    print(f"teachfit per-row seeded draw:              {ours * 1e3:.1f} ms per step")
    print(f"ratio teachfit / transformers: {ours / base:.2f}")


if __name__ == "__main__":
    main()
