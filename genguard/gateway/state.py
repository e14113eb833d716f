"""What every request reaches through `request.app.state.gateway`."""

from __future__ import annotations

from dataclasses import dataclass

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

    async def answer(self, route: str, images: list[bytes], explain: bool = False,
                     explain_labels: dict | None = None) -> list[dict]:
        """Forward the images; one document per image (index = position), counted in the metrics."""
        docs = await self.engine.detect(images, explain=explain, explain_labels=explain_labels)
        self.metrics.record_documents(route, docs)
        return docs
