"""Teachers through a provider's batch API (models/openai_batch.py): `--teacher
openai-batch:<model>@<url>` or `openai:<model>@<url>?batch=1`.

generate hands a batch teacher every missing answer of a dataset at once (`submits_batches`,
run_batches), keyed `<instruction id>#s<sample>`, with the dataset's state file
(RUN/.batches/<dataset>.json); each collected batch comes back as Generations, an error record
for a request that ran out of retries.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Sequence

from teachfit.models.base import Generation, GenerationSettings, Messages
from teachfit.models.openai_api import completion_generation, teacher_request
from teachfit.models.openai_batch import MAX_REQUESTS_PER_BATCH, BatchClient, Reply, batch_options
from teachfit.models.registry import register
from teachfit.models.spec import ModelSpec

Item = tuple[str, Messages, int]  # (custom_id, conversation, seed)
Deliver = Callable[[list[tuple[str, Generation]]], None]


class BatchTeacher(BatchClient):
    """A teacher whose requests go through the provider's batch API."""

    submits_batches = True  # generate hands over every missing answer at once (run_batches)
    batch_size = MAX_REQUESTS_PER_BATCH

    def describe(self) -> dict[str, Any]:
        """What a record says about the backend (never the key)."""
        return {"backend": "openai-batch", "model": self.model, "base_url": self.base_url}

    def body(self, messages: Messages, settings: GenerationSettings, seed: int) -> dict[str, Any]:
        """The chat-completion request of one answer (as OpenAITeacher sends it)."""
        return teacher_request(self.model, messages, settings, seed)

    def run_batches(self, items: Sequence[Item], settings: GenerationSettings, state_path: Path | None,
                    deliver: Deliver) -> None:
        """Answer every item through batches, resuming the ones recorded in `state_path`;
        `deliver([(custom_id, Generation)])` gets each answer or final error once per batch."""
        bodies = {c: self.body(m, settings, seed) for c, m, seed in items}
        self.run_bodies(bodies, state_path, lambda pairs: deliver([(c, as_generation(r)) for c, r in pairs]))

    def generate(self, conversations: Sequence[Messages], settings: GenerationSettings,
                 seeds: Sequence[int]) -> list[Generation]:
        """One response per conversation through one round of batches (nothing recorded: callers
        that need resuming use run_batches with a state file)."""
        out: dict[str, Generation] = {}
        items = [(str(k), m, s) for k, (m, s) in enumerate(zip(conversations, seeds))]
        self.run_batches(items, settings, None, lambda pairs: out.update(pairs))
        return [out[str(k)] for k in range(len(items))]


def as_generation(reply: Reply) -> Generation:
    """A collected reply (a checked chat completion, or the error text) as a teacher's Generation."""
    return Generation(error=reply) if isinstance(reply, str) else completion_generation(reply)


@register("teacher", "openai-batch")
def load_batch_teacher(spec: ModelSpec, **options: Any) -> BatchTeacher:
    """Teacher loader for openai-batch: specs (and openai:...?batch=1)."""
    return BatchTeacher(spec, **batch_options(options))
