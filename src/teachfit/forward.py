"""Batched forward passes over token sequences: the only place where batching lives.

Sequences are sorted by length and packed into batches under a token budget (batch size x
padded length), so padding stays small and memory stays bounded. The LM head is applied only
at the positions that predict a response token, in chunks, and the log-softmax is taken in
fp32: the batch x length x vocabulary logits tensor is never built (Gemma's 262k vocabulary
would make it gigabytes).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

from teachfit.env import require
from teachfit.template import EncodedPair

# Logit elements (rows x vocabulary) computed at once by the LM head. On a CPU 8M floats = 32 MB:
# small chunks keep the fp32 log-softmax in cache (measured here: 2950 rows/s at 160 rows of
# GPT-2's vocabulary vs 2450 at 1335 rows). On a GPU that would be 32 rows of Gemma's 262k
# vocabulary per LM-head matmul, each re-reading the 1.2 GB embedding: 256M floats (1 GiB of
# fp32 logits, 1024 rows of Gemma's vocabulary) keeps the matmul large. Not measured on a GPU here.
HEAD_CHUNK_ELEMENTS = {"cpu": 8 * 1024 * 1024, "accelerator": 256 * 1024 * 1024}


def head_chunk_rows(vocabulary: int, device: Any) -> int:
    """Rows of hidden states the LM head turns into logits at once on `device` (at least 1)."""
    kind = "cpu" if str(device).startswith("cpu") else "accelerator"
    return max(1, HEAD_CHUNK_ELEMENTS[kind] // vocabulary)
# RSR's token rank (1 + vocabulary logits strictly above the target's) is clipped here
# (arXiv 2601.14249), so one hopeless token cannot dominate a response's mean rank.
RANK_CLIP = 100


# Tokens per batch when none is given. A GPU wants large batches. On a CPU large batches are slower:
# the matmuls gain nothing from them, while a big batch's activations fall out of the caches
# (bench/score_throughput.py on 2 cores, GPT-2 size, long-tailed pairs: 215, 214 and 141 tokens/s
# at 512, 2048 and 8192 tokens a batch).
DEFAULT_TOKEN_BUDGET = {"cpu": 2048, "accelerator": 16384}


@dataclass
class BatchPlan:
    """Token budget per batch (None: DEFAULT_TOKEN_BUDGET for the device), and the most sequences
    in one batch."""

    token_budget: int | None = None
    max_batch_size: int = 64

    def on(self, device: Any) -> "BatchPlan":
        """This plan with its token budget settled for `device` ("cpu", "cuda:0", ...)."""
        if self.token_budget is not None:
            return self
        kind = "cpu" if str(device).startswith("cpu") else "accelerator"
        return BatchPlan(DEFAULT_TOKEN_BUDGET[kind], self.max_batch_size)


def plan_batches(lengths: Sequence[int], plan: BatchPlan) -> list[list[int]]:
    """Indices grouped into batches: sorted by length (longest first) so that
    batch size x longest length <= token_budget (a single over-long sequence gets its own batch)."""
    if plan.token_budget is None:
        raise ValueError("settle the plan's token budget for a device first: plan.on(device)")
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batches: list[list[int]] = []
    current: list[int] = []
    for index in order:
        longest = lengths[current[0]] if current else lengths[index]
        if current and ((len(current) + 1) * longest > plan.token_budget or len(current) >= plan.max_batch_size):
            batches.append(current)
            current = []
        current.append(index)
    if current:
        batches.append(current)
    return batches


def _pad(sequences: list[list[int]], pad_id: int, device: str) -> tuple[Any, Any]:
    """Right-padded ids [batch, longest] and their mask (1: a real token), built with one
    conversion of all the tokens (not one tensor per sequence)."""
    torch = require("torch", "hf")
    lengths = torch.tensor([len(s) for s in sequences], dtype=torch.long)
    width = int(lengths.max())
    mask = torch.arange(width)[None, :] < lengths[:, None]
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    ids[mask] = torch.tensor([token for seq in sequences for token in seq], dtype=torch.long)  # row-major: in order
    return ids.to(device), mask.long().to(device)


def _response_positions(encoded: Sequence[EncodedPair]) -> tuple[Any, Any]:
    """(row, column) of every position that predicts a response token, for a batch of sequences:
    row r's columns are max(response_start, 1) - 1 .. len - 2."""
    torch = require("torch", "hf")
    starts = torch.tensor([max(e.response_start, 1) - 1 for e in encoded], dtype=torch.long)
    counts = (torch.tensor([len(e.input_ids) - 1 for e in encoded], dtype=torch.long) - starts).clamp_(min=0)
    rows = torch.repeat_interleave(torch.arange(len(encoded)), counts)
    before = torch.cumsum(counts, 0) - counts  # positions of the rows above
    cols = torch.arange(int(counts.sum())) + torch.repeat_interleave(starts - before, counts)
    return rows, cols


def _pad_id(tokenizer: Any) -> int:
    for token_id in (tokenizer.pad_token_id, tokenizer.eos_token_id, 0):
        if token_id is not None:
            return int(token_id)
    return 0


def hidden_states(model: Any, ids: Any, mask: Any | None) -> Any:
    """Final hidden states [batch, length, hidden] of a causal LM's backbone (no LM head).

    Batches are right-padded, so under causal attention a real token never sees a pad token
    (pads come after it) and positions are 0..n-1 as without padding: the mask can be left out
    (`mask=None`), which lets SDPA take its fused causal path (measured here: 1400 vs 1010
    tokens/s for a GPT-2-size model in bf16).
    """
    backbone = model.base_model
    return backbone(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state


def compiled(model: Any) -> Any:
    """The model with its body under torch.compile, shapes dynamic (batches differ in length, so a
    static graph would recompile for each). The first batches pay the compilation: see
    bench/score_throughput.py --compile for what it costs and gains on your hardware."""
    torch = require("torch", "hf")
    backbone = model.base_model
    backbone.forward = torch.compile(backbone.forward, dynamic=True)
    return model


def head_logits(model: Any, hidden: Any) -> Any:
    """The LM head on selected hidden states [rows, hidden] -> fp32 logits [rows, vocab],
    with the final logit soft-capping of models that use it (Gemma 2)."""
    torch = require("torch", "hf")
    logits = model.get_output_embeddings()(hidden).float()
    config = getattr(model.config, "get_text_config", lambda: model.config)()
    cap = getattr(config, "final_logit_softcapping", None)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    return logits


def _target_logprobs(model: Any, hidden: Any, targets: Any, ranks: bool = False) -> Any:
    """log p(target) for each row of hidden [rows, hidden], chunked over rows; with `ranks`, the
    pair (log p(target), clipped rank of the target) where rank = 1 + the number of vocabulary
    logits strictly greater than the target's, at most RANK_CLIP. The rank is counted on the
    logits (not the log-probs: subtracting the log-sum-exp could round two close values into a tie)
    of the chunk already in hand, so it costs one comparison pass over the chunk and no memory
    beyond a boolean chunk."""
    torch = require("torch", "hf")
    vocab = model.get_output_embeddings().weight.shape[0]
    step = head_chunk_rows(vocab, hidden.device)
    out, out_ranks = [], []
    for start in range(0, hidden.shape[0], step):
        logits = head_logits(model, hidden[start : start + step])
        chunk_targets = targets[start : start + step, None]
        if ranks:
            target_logits = logits.gather(1, chunk_targets)
            # summed as int32: the default int64 reduction of a boolean took 1.6x as long here
            out_ranks.append(((logits > target_logits).sum(dim=-1, dtype=torch.int32) + 1).clamp_(max=RANK_CLIP))
        logprobs = torch.log_softmax(logits, dim=-1)
        out.append(logprobs.gather(1, chunk_targets).squeeze(1))
    logprobs = torch.cat(out) if out else torch.zeros(0)
    if not ranks:
        return logprobs
    return logprobs, torch.cat(out_ranks) if out_ranks else torch.zeros(0, dtype=torch.int32)


def response_nll(
    model: Any, tokenizer: Any, encoded: Sequence[EncodedPair], plan: BatchPlan,
    device: str, on_batch: Callable[[int], None] | None = None, ranks: bool = False,
) -> list[tuple[float, int]] | list[tuple[float, int, int]]:
    """(sum of -log p over response tokens in nats, number of response tokens) per sequence;
    with `ranks`, (sum of -log p, number of tokens, sum of the tokens' clipped ranks), the ranks
    of RSR (see _target_logprobs), from the same forward pass.

    Token t is predicted from position t - 1, so the response tokens ids[s:] are scored from
    hidden states at positions s-1 .. len-2.
    """
    torch = require("torch", "hf")
    results: list[Any] = [(0.0, 0, 0) if ranks else (0.0, 0)] * len(encoded)
    pad_id = _pad_id(tokenizer)
    for batch in plan_batches([len(e.input_ids) for e in encoded], plan.on(device)):
        ids, mask = _pad([encoded[i].input_ids for i in batch], pad_id, device)
        rows, cols = _response_positions([encoded[i] for i in batch])
        with torch.inference_mode():
            hidden = hidden_states(model, ids, None)  # right padding + causal attention: see hidden_states
            rows_t, cols_t = rows.to(hidden.device), cols.to(hidden.device)
            logprobs = _target_logprobs(model, hidden[rows_t, cols_t], ids[rows_t, cols_t + 1], ranks)
            logprobs, token_ranks = logprobs if ranks else (logprobs, None)
            # per sequence of the batch, summed on the device: one copy to the host per batch
            per_row = torch.zeros(3, len(batch), dtype=torch.float64, device=hidden.device)
            per_row[0].index_add_(0, rows_t, -logprobs.double())
            per_row[1].index_add_(0, rows_t, torch.ones_like(logprobs, dtype=torch.float64))
            if token_ranks is not None:
                per_row[2].index_add_(0, rows_t, token_ranks.double())
        sums, counts, rank_sums = per_row.cpu().tolist()
        for row, index in enumerate(batch):
            results[index] = (sums[row], int(counts[row])) + ((int(rank_sums[row]),) if ranks else ())
        if on_batch:
            on_batch(sum(len(encoded[i].input_ids) for i in batch))
    return results


def next_token_logprobs(
    model: Any, tokenizer: Any, prompts: Sequence[list[int]], candidate_ids: Sequence[int],
    plan: BatchPlan, device: str,
) -> list[list[float]]:
    """log p(candidate | prompt) for each prompt and each candidate token (fp32, full softmax)."""
    torch = require("torch", "hf")
    results: list[list[float]] = [[]] * len(prompts)
    candidates = torch.tensor(list(candidate_ids), dtype=torch.long, device=device)
    for batch in plan_batches([len(p) for p in prompts], plan.on(device)):
        ids, mask = _pad([prompts[i] for i in batch], _pad_id(tokenizer), device)
        last = mask.sum(dim=1) - 1
        with torch.inference_mode():
            hidden = hidden_states(model, ids, None)  # right padding + causal attention: see hidden_states
            rows = torch.arange(len(batch), device=hidden.device)
            logprobs = torch.log_softmax(head_logits(model, hidden[rows, last]), dim=-1)
        for row, index in enumerate(batch):
            results[index] = logprobs[row, candidates].double().cpu().tolist()
    return results


def sequence_scores(model: Any, tokenizer: Any, sequences: Sequence[list[int]], plan: BatchPlan, device: str) -> list[float]:
    """Scalar output of a sequence-classification reward model per sequence.

    Batches only when the tokenizer has a real pad token (otherwise a pad equal to EOS would
    hide the last token from the model's pooling).
    """
    torch = require("torch", "hf")
    scores: list[float] = [0.0] * len(sequences)
    plan = plan.on(device)
    batch_plan = plan if tokenizer.pad_token_id is not None else BatchPlan(plan.token_budget, 1)
    for batch in plan_batches([len(s) for s in sequences], batch_plan):
        ids, mask = _pad([sequences[i] for i in batch], _pad_id(tokenizer), device)
        with torch.inference_mode():
            output = model(input_ids=ids, attention_mask=mask)
        values = getattr(output, "score", None)
        values = output.logits[:, 0] if values is None else values.reshape(len(batch), -1)[:, 0]
        for row, index in enumerate(batch):
            scores[index] = float(values[row].float())
    return scores

