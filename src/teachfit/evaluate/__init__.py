"""Stage `evaluate`'s machinery: how good a trained student is.

  bench.py       benchmark prompts and baseline answers (offline, AlpacaEval, Arena-Hard, files)
  answers.py     the answers under test: generated once, or read from a file
  judging.py     judge configs as data, verdict and preference parsing
  pairwise.py    AE2- and AH-style pairwise judgments (cached), WR, LC, AP
  ifeval.py      IFEval: verifiable instruction following, judge-free
  rating.py      the absolute rating of the answers by a reward scorer
  judge_free.py  the dispatcher of the judge-free benches (ifeval, rating)
  results.py     results.csv rows, per-prompt JSONL, scores-<model>--<bench>.json
  stage.py       the Stage record: one unit per (bench, checkpoint) of a study

Import the submodule you need; this package imports none of them. Judge backends (the models
that judge) live in teachfit.models.judges.
"""
