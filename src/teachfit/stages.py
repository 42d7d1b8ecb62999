"""The one list of stages, in data-flow order. Each Stage record is declared in its stage's module
(teachfit.stage explains the record); the CLI, the study file and `teachfit run` are made from
this list, so adding a stage touches its module and this list."""
from __future__ import annotations

from teachfit import correlate, generate, rank, report, select, train
from teachfit.evaluate.stage import STAGE as EVALUATE
from teachfit.score.stage import STAGE as SCORE
from teachfit.stage import Stage

STAGES: list[Stage] = [generate.STAGE, SCORE, select.STAGE, rank.STAGE, train.STAGE, EVALUATE, correlate.STAGE,
                       report.STAGE]
BY_NAME: dict[str, Stage] = {stage.name: stage for stage in STAGES}
