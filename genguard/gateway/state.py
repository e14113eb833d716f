"""What every request reaches through `request.app.state.gateway`."""

from __future__ import annotations

from dataclasses import dataclass

from genguard import video

from . import videos
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
    jobs: object | None = None  # genguard.jobs.worker.Jobs: the store and spool of /v1/jobs

    async def answer(self, route: str, images: list[bytes], explain: bool = False,
                     explain_labels: dict | None = None, video_options: dict | None = None,
                     synchronous: bool = True) -> list[dict]:
        """Forward the images and clips (the answer cache first); one document per input (index = position),
        counted. Clips over the synchronous byte limit fail alone here (synchronous=False, the jobs API: no such
        limit, and no pointer to the jobs API); video_options (videos.options) carries the duration limit that
        genguard_video applies."""
        def forward(batch: list[bytes]):
            return self.engine.detect(batch, explain=explain, explain_labels=explain_labels,
                                      video_options=video_options)

        refused = {i: doc for i, data in enumerate(images) if synchronous
                   and (doc := videos.refusal(i, data, self.settings.video_max_bytes)) is not None}
        sent = [data for i, data in enumerate(images) if i not in refused]
        if not sent:
            answered = []
        elif self.cache is None:
            answered = await forward(sent)
        else:
            # video options key only requests with a clip: an image is the same answer from every route
            clips = video_options if any(video.is_video(data) for data in sent) else None
            answered = await self.cache.detect(sent, forward, {"explain": explain, "labels": explain_labels,
                                                               "video": clips})
        answered = iter(answered)
        hint = videos.with_jobs_hint if synchronous else (lambda doc: doc)
        docs = [refused[i] if i in refused else {**hint(next(answered)), "index": i}
                for i in range(len(images))]
        self.metrics.record_documents(route, docs)
        return docs
