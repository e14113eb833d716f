"""Request and response shapes: the single source of the OpenAPI document (/openapi.json, /docs).

GenGuard's per-image document (genguard/fusion.py) is passed through as the server wrote it; only its
`index` is replaced by the image's position in the request. `Document` names the fields every
document has and lets the rest through.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

DATA_URL = "data:image/<type>;base64,<base64 of the image file>"



def _explain_labels_example() -> dict:
    """An `explain_labels` example from the specs (no detector named here): a one-head detector's first label,
    and the second head of a detector with two."""
    from genguard import specs

    one = next(s for s in specs.DETECTORS.values() if len(s.heads) == 1)
    two = next(s for s in specs.DETECTORS.values() if len(s.heads) == 2)
    return {one.name: one.heads[0].labels[0], two.name: {two.heads[1].name: two.heads[1].labels[-1]}}

class ErrorInfo(BaseModel):
    code: str = Field(description="machine-readable: body_too_large, bad_base64, queue_full ... (see docs/rest-api.md)")
    message: str = Field(description="one readable sentence saying what to do")


class ErrorResponse(BaseModel):
    error: ErrorInfo


class HiveRequest(BaseModel):
    """Hive's NIM request, as its card sends it."""

    model_config = ConfigDict(json_schema_extra={"example": {"input": ["data:image/png;base64,iVBORw0KGgo..."]}})
    input: list[str] = Field(min_length=1, description=f"images as data URLs, `{DATA_URL}`; "
                                                       "URLs and NVCF asset ids are refused (422)")


class DetectRequest(BaseModel):
    """The JSON form of /v1/detect: Hive's `input`, with optional names echoed back."""

    input: list[str] = Field(min_length=1, description=f"images as data URLs, `{DATA_URL}`")
    names: list[str] | None = Field(default=None, description="one name per input, echoed in `name` "
                                                              "(default: input[<i>])")
    explain_labels: dict[str, str | dict[str, str]] | None = Field(
        default=None, description="with explanations: the label whose map each named detector head answers "
                                  "instead of its predicted label's, `{detector: label}` (one-head detectors) or "
                                  "`{detector: {head: label}}` (implies `?explain=true`; see docs/explanations.md)",
        examples=[_explain_labels_example()])


class DetectMultipart(BaseModel):
    """The multipart form of /v1/detect: one or many `file` fields."""

    file: list[bytes] = Field(description="image files; each answer carries its file name",
                              json_schema_extra={"items": {"type": "string", "format": "binary"}})


class HiveItem(BaseModel):
    index: int = Field(description="position in `input`")
    is_ai_generated: float | None = Field(description="P(AI-generated); null on FAILURE")
    possible_sources: dict[str, float] | None = Field(description="generator -> probability ('none' included); "
                                                                  "null on FAILURE")
    status: Literal["SUCCESS", "FAILURE"]


class HiveResponse(BaseModel):
    data: list[HiveItem]


class DocumentError(BaseModel):
    reason: str = Field(description="empty, too_large, not_an_image, unsupported_format, too_many_pixels, "
                                    "truncated, corrupt, unconvertible, timeout ...")
    message: str


class Document(BaseModel):
    """GenGuard's per-image answer (docs/protocol.md, 'How answers are fused'): the fields below and more
    (verdict, source, nsfw, detectors, image, weights, fusion, warnings ...)."""

    model_config = ConfigDict(extra="allow")
    index: int = Field(description="position in the request")
    status: Literal["SUCCESS", "FAILURE"]
    error: DocumentError | None = None
    is_ai_generated: float | None = None
    possible_sources: dict[str, float] | None = None
    cached: bool | None = Field(None, description="true: answered from the gateway's answer cache (the same bytes, "
                                                   "models, fusion and options were answered before); absent when "
                                                   "the cache is off")


class ExtendedResponse(BaseModel):
    data: list[Document]


class NamedDocument(Document):
    name: str = Field(description="the uploaded file's name, or names[i], or input[<i>]")


class DetectResponse(BaseModel):
    data: list[NamedDocument]


class ModelsResponse(BaseModel):
    ensemble: str
    ready: bool
    max_batch_size: int | None = Field(description="images per Triton request (the gateway splits larger requests)")
    models: dict[str, bool] = Field(description="the ensemble and each of its steps -> ready")
    detectors: dict[str, Any] = Field(description="detector -> head -> labels")
    weights: dict[str, str] = Field(description="detector -> real | random (random: answers are meaningless)")
    served: dict[str, Any] = Field(default_factory=dict, description=(
        "detector -> what it serves: weights (real | random), revision (the checkpoint's hub commit; null: a local "
        "path or random weights), file and sha256 (the model file and the digest it was checked against at load; "
        "an OpenVINO IR's is over its .xml + .bin), engine ({option, engine, precision}; cpu target)"))
    fusion: dict[str, Any] = Field(description="the fusion rule the answers are computed with")


class HealthResponse(BaseModel):
    status: Literal["live", "ready"]
    detectors: dict[str, Any] | None = Field(default=None, description=(
        "ready only: detector -> weights, revision, file, sha256, engine, as in GET /v1/models' `served`"))


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse, "description": what}
    for status, what in [
        (401, "no API key, or a wrong one"),
        (413, "request body larger than the gateway's limit"),
        (415, "neither JSON nor multipart"),
        (422, "malformed request: bad JSON, bad data URL or base64, a URL or asset id, too many images"),
        (429, "the gateway's queue is full: retry after Retry-After seconds"),
        (503, "Triton unreachable or GenGuard not ready: retry after Retry-After seconds"),
        (504, "no answer within the gateway's deadline"),
    ]
}
