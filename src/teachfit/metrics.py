"""Pure metric functions of the paper: PPL, IFD, CAR, Spearman rho, bootstrap intervals.

Nothing here imports torch: these functions take plain numbers or arrays, so they can be used
(and tested against independent code) without any model installed.
"""
from __future__ import annotations

import math
import os
import threading
import warnings
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace
from typing import Any, Callable, Sequence

import numpy as np

REWARD_TRANSFORMS = ("raw", "shift", "sigmoid")


def ppl(loss: float) -> float:
    """Perplexity from a mean negative log-likelihood in nats per token (lower is better)."""
    return math.exp(loss)


def ifd(loss_conditional: float, loss_unconditional: float) -> float:
    """Instruction-following difficulty, PPL(y|x) / PPL(y) (Superfiltering's ratio).

    Below 1 the instruction helps predict the response; above 1 it does not.
    """
    return math.exp(loss_conditional - loss_unconditional)


def ifd_loss_ratio(loss_conditional: float, loss_unconditional: float) -> float:
    """Cherry-LLM's IFD: the ratio of losses loss(y|x) / loss(y) (not of perplexities)."""
    if loss_unconditional == 0:
        return math.inf if loss_conditional > 0 else 1.0
    return loss_conditional / loss_unconditional


def car(mean_reward: float, mean_loss: float, beta: float = 3.0) -> float:
    """Compatibility-Adjusted Reward r / (1 + beta * L) of one dataset (higher is better).

    mean_reward: the dataset's average reward; mean_loss: its average loss(y|x) on the
    student in nats per token; beta >= 0 weighs compatibility.
    """
    if beta < 0:
        raise ValueError(f"beta must be >= 0, got {beta}")
    if mean_loss < 0:
        raise ValueError(f"a mean loss in nats is never negative, got {mean_loss}")
    return mean_reward / (1.0 + beta * mean_loss)


def rsr(mean_rank: float, mean_nll: float) -> float:
    """Rank-Surprisal Ratio (arXiv 2601.14249): mean clipped token rank / mean NLL in nats (lower
    is better). For one pair the means are over its response tokens; for a teacher, over its
    pairs' per-pair means. A zero NLL (every token certain) gives inf."""
    if mean_nll <= 0:
        return math.inf
    return mean_rank / mean_nll


def transform_rewards(rewards: np.ndarray, how: str, reference: np.ndarray | None = None) -> np.ndarray:
    """Map raw rewards before CAR: `raw` keeps them, `shift` subtracts the minimum of
    `reference` (all compared datasets' rewards; defaults to `rewards`) so that every reward is
    >= 0, `sigmoid` squashes each into (0, 1)."""
    rewards = np.asarray(rewards, dtype=float)
    if how == "raw":
        return rewards
    if how == "shift":
        ref = rewards if reference is None else np.asarray(reference, dtype=float)
        return rewards - float(np.min(ref))
    if how == "sigmoid":
        return 1.0 / (1.0 + np.exp(-rewards))
    raise ValueError(f"unknown reward transform {how!r}; choose one of {', '.join(REWARD_TRANSFORMS)}")


def average_ranks(values: Sequence[float]) -> np.ndarray:
    """Ranks 1..n of `values` in ascending order, ties sharing the average of their ranks."""
    values = np.asarray(values, dtype=float)
    order = np.argsort(values, kind="mergesort")
    ranks = np.empty(len(values), dtype=float)
    sorted_values = values[order]
    start = 0
    while start < len(values):
        stop = start + 1
        while stop < len(values) and sorted_values[stop] == sorted_values[start]:
            stop += 1
        ranks[order[start:stop]] = (start + 1 + stop) / 2.0  # mean of ranks start+1 .. stop
        start = stop
    return ranks


def spearman(a: Sequence[float], b: Sequence[float]) -> float:
    """Spearman's rho: Pearson correlation of average ranks (ties allowed), in [-1, 1].

    Without ties this equals 1 - 6 sum d^2 / (n (n^2 - 1)), the paper's equation (2).
    Returns nan when either side is constant.
    """
    if len(a) != len(b):
        raise ValueError(f"spearman needs equal lengths, got {len(a)} and {len(b)}")
    if len(a) < 2:
        raise ValueError("spearman needs at least 2 observations")
    ra, rb = average_ranks(a), average_ranks(b)
    da, db = ra - ra.mean(), rb - rb.mean()
    denominator = math.sqrt(float(np.dot(da, da)) * float(np.dot(db, db)))
    if denominator == 0:
        warnings.warn("spearman: one ranking is constant; rho is undefined", RuntimeWarning, stacklevel=2)
        return math.nan
    return float(np.dot(da, db)) / denominator


def spearman_from_rank_differences(d: Sequence[float]) -> float:
    """The paper's equation (2), rho = 1 - 6 sum d^2 / (n (n^2 - 1)), for untied ranks."""
    d = np.asarray(d, dtype=float)
    n = len(d)
    return 1.0 - 6.0 * float(np.sum(d * d)) / (n * (n * n - 1))


def bootstrap_draws(statistic: Callable[[np.ndarray], float], n_items: int, n_resamples: int = 1000,
                    seed: int = 0) -> np.ndarray:
    """statistic(indices) for `n_resamples` resamples of range(n_items) with replacement: the one
    bootstrap of teachfit (CIs of means, of rho over teachers, of Arena-Hard win rates)."""
    rng = np.random.default_rng(seed)
    return np.array([statistic(rng.integers(0, n_items, n_items)) for _ in range(n_resamples)], dtype=float)


def percentile_interval(draws: np.ndarray, confidence: float = 0.95) -> tuple[float, float]:
    """The central `confidence` percentile interval of the finite draws (NaN, NaN if none)."""
    draws = np.asarray(draws, dtype=float)
    draws = draws[np.isfinite(draws)]
    if len(draws) == 0:
        return math.nan, math.nan
    alpha = (1.0 - confidence) / 2.0
    return float(np.quantile(draws, alpha)), float(np.quantile(draws, 1.0 - alpha))


def bootstrap_ci(
    values: Sequence[float],
    statistic: Callable[[np.ndarray], float] = np.mean,
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap interval of `statistic` over `values` resampled with replacement."""
    values = np.asarray(values, dtype=float)
    if len(values) == 0:
        raise ValueError("bootstrap_ci needs at least one value")
    draws = bootstrap_draws(lambda idx: statistic(values[idx]), len(values), n_resamples, seed)
    return percentile_interval(draws, confidence)


BOOTSTRAP_BLOCK = 1 << 18  # pair indices drawn at once by car_bootstrap (1 MB of int32)


def car_bootstrap(rewards: Sequence[np.ndarray], losses: Sequence[np.ndarray], beta: float, n_resamples: int = 1000,
                  seed: int = 0) -> np.ndarray:
    """(n_resamples, datasets) CAR draws, each dataset's pairs resampled with replacement
    (reward and loss of a pair stay together).

    The resamples are drawn in blocks of about BOOTSTRAP_BLOCK indices: the same draws as one
    rng.integers call for all of them (the generator's stream goes on from block to block, and
    int32 indices are the same numbers as int64 ones), in flat memory at any size. Drawing is
    sequential; the means of the blocks drawn are taken meanwhile on worker threads (numpy lets
    go of the GIL there), into buffers of their own. The draws are the same whatever the threads."""
    rng = np.random.default_rng(seed)
    draws = np.empty((n_resamples, len(rewards)))
    work = n_resamples * sum(len(r) for r in rewards)
    workers = min(3, _cpus() - 1) if work > 16 * BOOTSTRAP_BLOCK else 0  # the drawing thread is one more
    pool = ThreadPoolExecutor(workers) if workers else None
    pending: deque = deque()
    own = SimpleNamespace()  # this thread's buffers, when it takes the means itself
    try:
        for j, (r, l) in enumerate(zip(rewards, losses)):
            r, l = np.asarray(r, dtype=float), np.asarray(l, dtype=float)
            step = max(1, BOOTSTRAP_BLOCK // max(1, len(r)))
            kind = np.int32 if len(r) < 2**31 else np.int64
            for start in range(0, n_resamples, step):
                stop = min(n_resamples, start + step)
                idx = rng.integers(0, len(r), size=(stop - start, len(r)), dtype=kind)
                if pool is None:
                    _car_means(draws, j, start, r, l, idx, beta, own)
                    continue
                pending.append(pool.submit(_car_means, draws, j, start, r, l, idx, beta, _THREAD))
                while len(pending) > 2 * workers:  # a few blocks wait at most: memory stays flat
                    pending.popleft().result()
        while pending:
            pending.popleft().result()
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    return draws


_THREAD = threading.local()  # a worker's buffers, freed with its thread


def _car_means(draws: np.ndarray, j: int, start: int, r: np.ndarray, l: np.ndarray, idx: np.ndarray, beta: float,
               local: Any) -> None:
    """draws[start:start + len(idx), j]: CAR of the resamples whose pair indices are the rows of
    `idx` (in range: take's `clip` mode, which checks nothing, gathers fastest), in the buffers
    kept on `local` (a thread's own)."""
    space = getattr(local, "space", None)
    if space is None or space[0].shape != idx.shape:
        space = local.space = (np.empty(idx.shape, dtype=np.intp), np.empty(idx.shape))
    index, values = space
    np.copyto(index, idx)
    mean_reward = np.take(r, index, mode="clip", out=values).mean(axis=1)
    mean_loss = np.take(l, index, mode="clip", out=values).mean(axis=1)
    draws[start:start + len(idx), j] = mean_reward / (1.0 + beta * mean_loss)


def _cpus() -> int:
    """The CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def average_performance(ae2_lc: float, ah_wr: float) -> float:
    """AP = (AlpacaEval-2 LC + Arena-Hard WR) / 2, in the units given (the paper uses %)."""
    return (ae2_lc + ah_wr) / 2.0


def win_rate(preferences: Sequence[float]) -> tuple[float, float]:
    """AlpacaEval-style win rate and its standard error, in %: the mean preference for the model
    over the baseline, where each preference is in [0, 1] (1 win, 0 loss, 0.5 tie, or a
    judge's probability)."""
    p = np.asarray(preferences, dtype=float)
    if len(p) == 0:
        raise ValueError("win_rate needs at least one preference")
    se = float(np.std(p, ddof=1) / math.sqrt(len(p))) if len(p) > 1 else math.nan
    return 100.0 * float(p.mean()), 100.0 * se


def _logistic_fit(features: np.ndarray, targets: np.ndarray, l2: float = 1e-3, iterations: int = 100) -> np.ndarray:
    """Weights of a logistic regression with soft targets in [0, 1] (Newton's method, light L2)."""
    weights = np.zeros(features.shape[1])
    for _ in range(iterations):
        prob = 1.0 / (1.0 + np.exp(-features @ weights))
        gradient = features.T @ (prob - targets) + l2 * weights
        hessian = features.T @ (features * (prob * (1 - prob))[:, None]) + l2 * np.eye(len(weights))
        step = np.linalg.solve(hessian, gradient)
        weights -= step
        if np.max(np.abs(step)) < 1e-10:
            break
    return weights


def length_controlled_win_rate(
    preferences: Sequence[float], model_lengths: Sequence[float], baseline_lengths: Sequence[float],
    instruction_difficulty: Sequence[float] | None = None,
) -> tuple[float, str]:
    """AlpacaEval-2 length-controlled win rate (Dubois et al. 2024), in %, and the formula used.

    Fits preference ~ sigmoid(gamma + theta * tanh(delta_len / std(delta_len)) [+ psi * difficulty_x])
    and predicts it with the length difference set to zero, averaged over instructions. Without
    instruction difficulties (AlpacaEval's per-instruction gamma_x, fitted on its leaderboard)
    the instruction term is dropped: 'glm_without_instruction_term'.
    """
    p = np.asarray(preferences, dtype=float)
    delta = np.asarray(model_lengths, dtype=float) - np.asarray(baseline_lengths, dtype=float)
    std = float(np.std(delta))
    length_term = np.tanh(delta / std) if std > 0 else np.zeros_like(delta)
    columns = [np.ones_like(p), length_term]
    formula = "glm_without_instruction_term"
    if instruction_difficulty is not None:
        columns.append(np.asarray(instruction_difficulty, dtype=float))
        formula = "glm_with_instruction_term"
    weights = _logistic_fit(np.stack(columns, axis=1), p)
    logits = weights[0] + (weights[2] * columns[2] if len(weights) > 2 else 0.0)
    return 100.0 * float(np.mean(1.0 / (1.0 + np.exp(-np.broadcast_to(logits, p.shape))))), formula


def arena_hard_win_rate(scores: Sequence[Sequence[float]], weights: Sequence[Sequence[float]],
                        n_resamples: int = 1000, seed: int = 0) -> tuple[float, float, float]:
    """Arena-Hard-style win rate against the baseline, in %, with a 95% bootstrap interval over
    questions. Each question has its games (both orders): the model's score per game (1 win,
    0.5 tie, 0 loss) and its weight (3 for a strong verdict, else 1). With two players the
    Bradley-Terry estimate Arena-Hard fits is exactly this weighted win fraction."""
    s = [np.asarray(x, dtype=float) for x in scores]
    w = [np.asarray(x, dtype=float) for x in weights]
    if not s:
        raise ValueError("arena_hard_win_rate needs at least one judged question")

    def rate(indices: Sequence[int]) -> float:
        total = sum(float(w[i].sum()) for i in indices)
        return 100.0 * sum(float((s[i] * w[i]).sum()) for i in indices) / total if total else math.nan

    return (rate(range(len(s))),) + percentile_interval(bootstrap_draws(rate, len(s), n_resamples, seed))
