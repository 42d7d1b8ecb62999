"""Stage `score`'s machinery: pairs -> one row of metrics per pair (DESIGN section 2).

  engine.py    windows, the per-scorer result cache, score_pairs / score_files, sampling
  base.py      the Scorer protocol and DeferredScorer (a model loaded on first use)
  lm.py        loss / PPL / IFD / RSR under a causal LM in process; the one LM cache-key rule; length
  reward.py    rewards: a reward model, a generative judge's expected rating, a column of the file
  served.py    students and references behind an OpenAI-compatible server (adapters.py: dialects)
  vllm.py      students and references on vLLM
  ctranslate2.py  in-process students and references on CTranslate2 (`--engine ctranslate2`, CPU)
  scorers.py   the one chooser: build_scorers(student, config, sources)
  stage.py     the Stage record: how a study splits scoring into units (one per student)

Import the submodule you need (teachfit.score.engine, teachfit.score.scorers, ...); this package
imports none of them.
"""
