"""What every request reaches through `request.app.state.gateway`."""

from __future__ import annotations

from dataclasses import dataclass

from .cache import AnswerCache
from .engine import Engine
from .limits import ApiKeys, Limiter
from .metrics import Metrics
from .settings import Settings


@dataclass
class GatewayState:
    settings: Settings
    keys: ApiKeys
    limiter: Limiter
    engine: Engine
    metrics: Metrics
    cache: AnswerCache | None = None

    async def answer(self, route: str, images: list[bytes], explain: bool = False,
                     explain_labels: dict | None = None) -> list[dict]:
        """Forward the images (the answer cache first); one document per image (index = position), counted."""
        def forward(batch: list[bytes]):
            return self.engine.detect(batch, explain=explain, explain_labels=explain_labels)

        if self.cache is None:
            docs = await forward(images)
        else:
            docs = await self.cache.detect(images, forward, {"explain": explain, "labels": explain_labels})
        self.metrics.record_documents(route, docs)
        return docs
