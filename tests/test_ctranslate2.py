"""--engine ctranslate2 against teachfit's torch fp32 scorer, on tiny models built here and converted
for real: the same response tokens, the same losses (fp32 within 1e-4 nats per token), RSR from
forward_batch, no silent truncation, the conversion made once."""
import math
import random

import pytest

pytest.importorskip("ctranslate2")

from conftest import PAIRS, build_tokenizer, write_pairs  # noqa: E402
from teachfit.config import ScoreConfig  # noqa: E402
from teachfit.files import read_table  # noqa: E402
from teachfit.models import load  # noqa: E402
from teachfit.models.spec import ModelSpec, ModelSpecError  # noqa: E402
from teachfit.records import Pair  # noqa: E402
from teachfit.score.ctranslate2 import CT2Scorer, converted_copy, load_ct2  # noqa: E402
from teachfit.score.engine import score_files  # noqa: E402
from teachfit.score.lm import LMScorer  # noqa: E402
from teachfit.score.scorers import lm_scorer  # noqa: E402

WORDS = "the sea is wide and blue waves come and go recursion is when a function calls itself".split()


def pairs(n=10, seed=0, longest=60):
    """Pairs of varied lengths (so batches mix lengths and pad)."""
    rng = random.Random(seed)
    return [Pair(str(i), " ".join(rng.choices(WORDS, k=rng.randint(2, 20))),
                 " ".join(rng.choices(WORDS, k=rng.randint(1, longest))), "t") for i in range(n)]


def torch_rows(folder, items, options):
    return LMScorer(load("causal_lm", f"hf:{folder}", dtype="float32", device="cpu"), "self", options).compute(items)


def ct2_rows(folder, items, options):
    spec = ModelSpec.parse(f"hf:{folder}")
    return CT2Scorer(load_ct2(spec, options.compute_type), "self", options).compute(items)


@pytest.mark.parametrize("fixture", ["tiny_gpt2", "tiny_llama"])
@pytest.mark.parametrize("metrics", [["ppl_self", "ifd_self"], []])  # score_batch; forward_batch (RSR asked for)
def test_fp32_matches_torch_fp32(request, fixture, metrics):
    folder = request.getfixturevalue(fixture)
    options = ScoreConfig(engine="ctranslate2", compute_type="float32", metrics=metrics, token_budget=256)
    items = pairs()
    expected, got = torch_rows(folder, items, options), ct2_rows(folder, items, options)
    for want, have in zip(expected, got):
        assert have["n_response_tokens"] == want["n_response_tokens"]
        assert have["truncated"] == want["truncated"] is False
        assert have["loss_self"] == pytest.approx(want["loss_self"], abs=1e-4)
        assert have["loss_self_uncond"] == pytest.approx(want["loss_self_uncond"], abs=1e-4)
        if metrics:  # score_batch gives no ranks: RSR is left out, not made up
            assert "rsr_self" not in have and "mean_rank_self" not in have
        else:
            assert have["mean_rank_self"] == pytest.approx(want["mean_rank_self"], abs=1e-9)
            assert have["rsr_self"] == pytest.approx(want["rsr_self"], rel=1e-4)


def test_int8_is_close_and_keyed_apart(tiny_llama):
    items = pairs(6)
    fp32 = ct2_rows(tiny_llama, items, ScoreConfig(engine="ctranslate2", metrics=["ppl_self"]))
    int8 = ct2_rows(tiny_llama, items, ScoreConfig(engine="ctranslate2", compute_type="int8", metrics=["ppl_self"]))
    gaps = [abs(a["loss_self"] - b["loss_self"]) for a, b in zip(fp32, int8)]
    assert all(math.isfinite(g) for g in gaps) and max(gaps) < 0.05 and max(gaps) > 0  # quantized, not the same
    keys = {repr(lm_scorer(f"hf:{tiny_llama}", "self", ScoreConfig(engine=e, compute_type=c)).key_material())
            for e, c in (("torch", "float32"), ("ctranslate2", "float32"), ("ctranslate2", "int8"))}
    assert len(keys) == 3  # results of different engines and compute types never mix in the cache
    with_ranks = lm_scorer(f"hf:{tiny_llama}", "self", ScoreConfig(engine="ctranslate2")).key_material()
    without = lm_scorer(f"hf:{tiny_llama}", "self", ScoreConfig(engine="ctranslate2", metrics=["ppl_self"])).key_material()
    assert with_ranks != without  # a result without RSR is never served to a run that wants it
    on = {d: lm_scorer(f"hf:{tiny_llama}", "self", ScoreConfig(engine="ctranslate2", device=d)).key_material()
          for d in ("auto", "cpu", "cuda", "cuda:1")}
    assert on["auto"] == on["cpu"] != on["cuda"] == on["cuda:1"]  # CPU and CUDA kernels: other int8 losses


def test_tokenized_ahead_like_torch(tiny_gpt2):
    """The CTranslate2 scorer tokenizes in prepare() (the engine's background thread), as torch's
    does, and the forward pass on what was prepared gives compute()'s rows, equal to torch's."""
    items, options = pairs(4), ScoreConfig(engine="ctranslate2", metrics=["ppl_self"])
    scorer = CT2Scorer(load_ct2(ModelSpec.parse(f"hf:{tiny_gpt2}")), "self", options)
    prepared = scorer.prepare(items)
    assert prepared is not None and len(prepared) == len(items)
    rows, want = scorer.compute_prepared(items, prepared), torch_rows(tiny_gpt2, items, options)
    assert rows == scorer.compute(items)
    assert [r["loss_self"] for r in rows] == pytest.approx([r["loss_self"] for r in want], abs=1e-4)


@pytest.fixture(scope="module")
def long_gpt2(tmp_path_factory):
    """A tiny GPT-2 with 2048 positions: room past CTranslate2's default max_input_length of 1024."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(4)
    folder = tmp_path_factory.mktemp("long_gpt2")
    tokenizer = build_tokenizer(bos=False)
    GPT2LMHeadModel(GPT2Config(vocab_size=len(tokenizer), n_positions=2048, n_embd=32, n_layer=2, n_head=4,
                               bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id)
                    ).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


def test_no_silent_truncation(long_gpt2):
    long = Pair("long", "Write a short poem.", " ".join(["the sea is wide"] * 400), "t")  # ~1200 tokens
    options = ScoreConfig(engine="ctranslate2", metrics=["ppl_self"])
    model = load_ct2(ModelSpec.parse(f"hf:{long_gpt2}"))
    tokens = model.tokenizer.convert_ids_to_tokens(
        model.tokenizer(" ".join(["the sea is wide"] * 400))["input_ids"])
    assert len(tokens) > 1100
    assert len(model.generator.score_batch([tokens])[0].log_probs) == 1023  # the trap: cut at 1024, silently
    want, have = torch_rows(long_gpt2, [long], options)[0], ct2_rows(long_gpt2, [long], options)[0]
    assert have["n_response_tokens"] == want["n_response_tokens"] > 1024
    assert have["loss_self"] == pytest.approx(want["loss_self"], abs=1e-4)
    # over --max-length: cut by teachfit's template and flagged, exactly as the torch scorer does
    short = ScoreConfig(engine="ctranslate2", metrics=["ppl_self"], max_length=300)
    want, have = torch_rows(long_gpt2, [long], short)[0], ct2_rows(long_gpt2, [long], short)[0]
    assert have["truncated"] is want["truncated"] is True
    assert have["n_response_tokens"] == want["n_response_tokens"]
    assert have["loss_self"] == pytest.approx(want["loss_self"], abs=1e-4)


def test_conversion_is_cached(tiny_gpt2):
    spec = ModelSpec.parse(f"hf:{tiny_gpt2}")
    folder = converted_copy(spec)
    weights = folder / "model.bin"
    stamp = weights.stat().st_mtime_ns
    again = load_ct2(spec)  # a second load converts nothing: the same file, untouched
    assert converted_copy(spec) == folder and weights.stat().st_mtime_ns == stamp
    assert sorted(p.name for p in folder.parent.iterdir()) == [folder.name]  # no leftover temporary folder
    assert again.strings[again.tokenizer.eos_token_id] == again.tokenizer.eos_token


def test_two_workers_converting_at_once(tiny_gpt2, monkeypatch):
    """Two workers converting one model at the same time (each waits after converting until the other
    has converted too): each in its own temporary folder, both end with the whole conversion, and
    no temporary folder is left. (Threads stand in for processes: the converter itself, which
    patches torch while it loads, runs one at a time.)"""
    import threading

    import ctranslate2

    spec, both, one = ModelSpec.parse(f"hf:{tiny_gpt2}"), threading.Barrier(2, timeout=60), threading.Lock()
    convert = ctranslate2.converters.TransformersConverter.convert

    def convert_then_wait(self, output_dir, *args, **kwargs):
        with one:
            done = convert(self, output_dir, *args, **kwargs)
        both.wait()
        return done

    monkeypatch.setattr(ctranslate2.converters.TransformersConverter, "convert", convert_then_wait)
    folders, errors = [], []

    def worker():
        try:
            folders.append(converted_copy(spec))
        except BaseException as error:  # noqa: BLE001 - reported below
            errors.append(error)

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors and len(folders) == 2 and folders[0] == folders[1]
    assert sorted(p.name for p in folders[0].parent.iterdir()) == [folders[0].name]
    model = load_ct2(spec)
    assert model.strings[model.tokenizer.eos_token_id] == model.tokenizer.eos_token


def test_unsupported_architecture_is_one_line(tmp_path):
    from transformers import GPTNeoConfig, GPTNeoForCausalLM

    tokenizer = build_tokenizer()
    GPTNeoForCausalLM(GPTNeoConfig(vocab_size=len(tokenizer), hidden_size=32, num_layers=2, num_heads=4,
                                   attention_types=[[["global"], 2]], max_position_embeddings=64)
                      ).save_pretrained(tmp_path / "neo")
    tokenizer.save_pretrained(tmp_path / "neo")
    with pytest.raises(ModelSpecError) as error:
        converted_copy(ModelSpec.parse(f"hf:{tmp_path / 'neo'}"))
    assert "cannot convert GPTNeoConfig" in str(error.value) and "--engine torch" in str(error.value)
    assert "\n" not in str(error.value)


def test_score_files_with_the_engine(tmp_path, tiny_llama):
    data = write_pairs(tmp_path / "teacher.jsonl", PAIRS)
    score_files([data], tmp_path / "torch.parquet", f"hf:{tiny_llama}", config=ScoreConfig(dtype="float32"))
    config = ScoreConfig(engine="ctranslate2")
    meta = score_files([data], tmp_path / "ct2.parquet", f"hf:{tiny_llama}", config=config)
    (torch_table, _), (ct2_table, _) = read_table(tmp_path / "torch.parquet"), read_table(tmp_path / "ct2.parquet")
    for want, have in zip(torch_table, ct2_table):
        assert have["id"] == want["id"] and have["loss_self"] == pytest.approx(want["loss_self"], abs=1e-4)
        assert have["rsr_self"] == pytest.approx(want["rsr_self"], rel=1e-4)
    model = meta["scorers"][0]["model"]
    assert model["engine"] == "ctranslate2" and model["compute_type"] == "float32"
    again = score_files([data], tmp_path / "ct2-again.parquet", f"hf:{tiny_llama}", config=config)
    assert again["counts"]["computed"] == 0  # cached under the engine's own key


@pytest.fixture(scope="module")
def tiny_gemma3(tmp_path_factory):
    """A tiny Gemma 3 (the packaged student's architecture): sliding-window layers of 128 tokens."""
    import torch
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    torch.manual_seed(5)
    folder = tmp_path_factory.mktemp("tiny_gemma3")
    tokenizer = build_tokenizer()
    config = Gemma3TextConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                              num_attention_heads=2, num_key_value_heads=1, head_dim=16, query_pre_attn_scalar=16,
                              sliding_window=128, layer_types=["sliding_attention", "full_attention"],
                              max_position_embeddings=512, bos_token_id=tokenizer.bos_token_id,
                              eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    Gemma3ForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


@pytest.mark.parametrize("metrics", [["ppl_self"], []])
def test_sliding_window_model(tiny_gemma3, metrics):
    """Gemma 3: batches of one length, pairs cut at the window; within it the same losses as torch."""
    items = pairs(12, seed=1, longest=8)  # mixed lengths, all within the 128-token window
    options = ScoreConfig(engine="ctranslate2", metrics=metrics)
    model = load_ct2(ModelSpec.parse(f"hf:{tiny_gemma3}"))
    assert model.max_positions == 128 and model.one_length_batches
    got, expected = CT2Scorer(model, "self", options).compute(items), torch_rows(tiny_gemma3, items, options)
    for want, have in zip(expected, got):
        assert have["n_response_tokens"] == want["n_response_tokens"] and have["truncated"] is want["truncated"] is False
        assert have["loss_self"] == pytest.approx(want["loss_self"], abs=1e-4)
        if not metrics:
            assert have["mean_rank_self"] == pytest.approx(want["mean_rank_self"], abs=1e-9)
    long = [Pair("long", "Write a short poem.", " ".join(["the sea is wide"] * 60), "t")]
    have = CT2Scorer(model, "self", options).compute(long)[0]
    want = torch_rows(tiny_gemma3, long, ScoreConfig(metrics=metrics, max_length=128))[0]
    assert have["truncated"] is want["truncated"] is True  # cut at the window, flagged: never silent
    assert have["loss_self"] == pytest.approx(want["loss_self"], abs=1e-4)
