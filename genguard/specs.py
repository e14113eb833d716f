"""Declarative detector specs: the one place that says what each detector is.

Export, reference pipelines, preprocessing, repository rendering and postprocessing all read
these specs; adding a detector means adding a spec here. Nothing here imports torch.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Literal

from genguard.protocol import NSFW_LEVELS

# Mean/std constants as the libraries spell them (timm.data.constants, transformers.image_utils).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
HALF = (0.5, 0.5, 0.5)


@dataclass(frozen=True)
class InputSpec:
    """How one model input is made from a decoded image.

    name:          preprocess output tensor suffix; detectors with equal specs share one tensor.
    size:          (height, width) of the model input.
    resize:        "squash" resizes straight to `size` (aspect ratio lost); "shorter_crop" resizes the
                   shorter side to floor(size / crop_pct) and center-crops `size` (timm "center" mode).
    interpolation: Pillow filter used for the resize (Pillow always antialiases when shrinking).
    crop_pct:      only for "shorter_crop".
    arithmetic:    which library's float arithmetic to reproduce bit for bit: "torchvision"
                   (float32 x/255, then (x-mean)/std, as ToTensor+Normalize) or "transformers"
                   (float64 x*(1/255) cast to float32, then (x-mean)/std, as its Pillow backend).
    alpha:         "drop" = Pillow convert("RGB") (timm/torchvision datasets, and the cards' own
                   `.convert("RGB")`); "white" = composite onto white (transformers convert_to_rgb);
                   "drop_then_white" = both in turn, as the OpenSDI card does (convert("RGB"), then
                   its processor, which whitens the colour a palette image marks transparent).
    exif_transpose: apply EXIF orientation. The references don't (PIL.Image.open ignores it), so
                   parity needs False; DALI applies it by default (see genguard/dali.py).
    """

    name: str
    size: tuple[int, int]
    resize: Literal["squash", "shorter_crop"]
    interpolation: Literal["bilinear", "bicubic"]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    crop_pct: float = 1.0
    arithmetic: Literal["torchvision", "transformers"] = "torchvision"
    alpha: Literal["drop", "white", "drop_then_white"] = "drop"
    exif_transpose: bool = False

    @property
    def shape(self) -> tuple[int, int, int]:
        return (3, *self.size)


HeadRole = Literal["binary", "source", "nsfw"]


@dataclass(frozen=True)
class Head:
    """One classifier head = one named ONNX output of logits.

    role:       "binary" (AI-generated vs real), "source" (which generator), "nsfw" (ordered levels).
    activation: "softmax" over len(labels) logits, or "sigmoid" of a single logit whose probability is
                that of labels[1] (labels[0] gets 1 - p).
    positive:   for binary heads, the label meaning "AI-generated".
    generator:  for binary heads, the generator family a positive answer names in `possible_sources`
                (None: the head says "AI" but not which generator).
    real_label: for source heads, the label meaning "not generated" (maps to `none`).
    """

    name: str
    role: HeadRole
    labels: tuple[str, ...]
    activation: Literal["softmax", "sigmoid"] = "softmax"
    positive: str | None = None
    generator: str | None = None
    real_label: str | None = None

    @property
    def num_logits(self) -> int:
        return 1 if self.activation == "sigmoid" else len(self.labels)


# The checkpoint families (genguard.export.families): what each format loads.
CheckpointFormat = Literal["transformers_siglip", "transformers_timm_wrapper", "timm_hub", "imagetrust_resnet18_mlp",
                           "timm_two_head_state_dict"]


@dataclass(frozen=True)
class DetectorSpec:
    """Everything GenGuard knows about one detector.

    source:        where real weights come from: a Hugging Face hub id, or None when only a local path
                   can supply them (ImageTrust ships its .pth in a GitHub repo; Hive's are proprietary).
    format:        the checkpoint's native format: its family (genguard.export.families) loads it, builds
                   random checkpoints of it and knows the card's reference preprocessing.
    architecture:  the architecture the checkpoint must have (timm name, transformers model_type,
                   or torchvision builder); the loader refuses anything else.
    timm_pretrained_cfg: transformers_timm_wrapper: the timm pretrained config the card builds its
                   transform from (and random checkpoints are made of); None: the checkpoint's own.
    gpu_precision: TensorRT precision on the GPU targets when the card advises one (None: the family's).
    cpu_arena:     the cpu target's default for ONNX Runtime's CPU memory arena (make serve ARENA=auto),
                   chosen by measurement (benchmarks/results/arena-full-random.md).
    cpu_run_batch: the cpu target runs a batch through the engine at most this many images at a time (0: the
                   whole batch at once): bounds a detector whose working memory grows with the batch
                   (benchmarks/results/memory-budget.md).
    optional:      exported and served only when a checkpoint is given (or WEIGHTS=random).
    prob_atol:     parity tolerance on probabilities (FP32 ONNX Runtime vs PyTorch).
    tiny:          architecture overrides for reduced-depth test builds (same code path, fewer layers).
    """

    name: str
    description: str
    source: str | None
    format: CheckpointFormat
    architecture: str
    input: InputSpec
    heads: tuple[Head, ...]
    card: str
    optional: bool = False
    prob_atol: float = 1e-4
    timm_pretrained_cfg: str | None = None
    gpu_precision: Literal["fp32", "fp16", "bf16"] | None = None
    cpu_arena: bool = True
    cpu_run_batch: int = 0
    tiny: dict = field(default_factory=dict, hash=False, compare=False)

    def head(self, role: HeadRole) -> Head | None:
        return next((h for h in self.heads if h.role == role), None)


SIGLIP_224 = InputSpec(
    name="siglip224",
    size=(224, 224),
    resize="squash",
    interpolation="bilinear",  # the checkpoint's preprocessor_config.json: resample=2
    mean=HALF,
    std=HALF,
    arithmetic="transformers",
    alpha="drop_then_white",
)
TF_INCEPTION_224 = InputSpec(
    name="tfmnv3_224",
    size=(224, 224),
    resize="shorter_crop",
    crop_pct=0.875,
    interpolation="bilinear",
    mean=HALF,
    std=HALF,
)
EVA02_448 = InputSpec(
    name="eva02_448",
    size=(448, 448),
    resize="squash",
    interpolation="bicubic",
    mean=OPENAI_CLIP_MEAN,
    std=OPENAI_CLIP_STD,
)
IMAGENET_224_SQUASH = InputSpec(
    name="imagenet224",
    size=(224, 224),
    resize="squash",  # ImageTrust src/data/transforms.py: Resize((224, 224))
    interpolation="bilinear",
    mean=IMAGENET_MEAN,
    std=IMAGENET_STD,
)
EFFNET_B4_320 = InputSpec(
    name="effb4_320",
    size=(320, 320),
    resize="shorter_crop",
    crop_pct=0.875,
    interpolation="bicubic",
    mean=IMAGENET_MEAN,
    std=IMAGENET_STD,
)

IMAGETRUST_SOURCES = ("Real", "GAN", "Diffusion", "Other")
# Hive's NIM names generators in `possible_sources`; a user-supplied two-head checkpoint declares its
# own list with --labels. This default is the shape, not Hive's actual list (which is not public).
HIVE_SOURCES = ("none", "dalle", "midjourney", "stable_diffusion", "flux", "gan", "other")

DETECTORS: dict[str, DetectorSpec] = {
    spec.name: spec
    for spec in (
        DetectorSpec(
            name="opensdi_flux",
            description="SigLIP2-base classifier: real photo vs Flux.1-generated (OpenSDI)",
            source="prithivMLmods/OpenSDI-Flux.1-SigLIP2",
            format="transformers_siglip",
            architecture="siglip",
            input=SIGLIP_224,
            heads=(
                Head(
                    "flux",
                    "binary",
                    ("Real_Image", "Flux.1_Generated"),
                    positive="Flux.1_Generated",
                    generator="flux",
                ),
            ),
            card="https://huggingface.co/prithivMLmods/OpenSDI-Flux.1-SigLIP2",
            tiny={"num_hidden_layers": 2},
        ),
        DetectorSpec(
            name="sumsub_sd",
            description="Sumsub For Fake's Sake MobileNetV3: real vs Stable Diffusion 1.4/1.5/2.1",
            source="Sumsub/Sumsub-ffs-synthetic-1.0_sd_5",
            format="timm_hub",
            architecture="tf_mobilenetv3_large_100",
            input=TF_INCEPTION_224,
            # The checkpoint's pipeline.py (label order) can't be read here: override with --labels.
            heads=(
                Head(
                    "sd",
                    "binary",
                    ("real", "stable_diffusion"),
                    positive="stable_diffusion",
                    generator="stable_diffusion",
                ),
            ),
            card="https://huggingface.co/Sumsub/Sumsub-ffs-synthetic-1.0_sd_5",
        ),
        DetectorSpec(
            name="freepik_nsfw",
            description="Freepik EVA02-base-448 NSFW levels: neutral, low, medium, high",
            source="Freepik/nsfw_image_detector",
            format="transformers_timm_wrapper",
            architecture="eva02_base_patch14_448",
            timm_pretrained_cfg="eva02_base_patch14_448.mim_in22k_ft_in22k_in1k",  # the card's create_transform
            gpu_precision="bf16",  # the card: trained in BF16, run it in BF16
            # its arena held ~2.8 GB after batch-8 runs against ~0.26 GB without, at the same speed (the
            # CNNs' and SigLIP's held 40-600 MB and were as fast or faster with it)
            cpu_arena=False,
            # ~165 MB of working memory per image (ort-fp32; ~420 MB in OpenVINO BF16) up to 3.1 GB (7.1 GB) at a
            # batch of 16, at the same images/s as 4 at a time (benchmarks/results/memory-budget.md)
            cpu_run_batch=4,
            input=EVA02_448,
            heads=(Head("nsfw", "nsfw", NSFW_LEVELS),),
            card="https://huggingface.co/Freepik/nsfw_image_detector",
            tiny={"depth": 2},
        ),
        DetectorSpec(
            name="imagetrust_binary",
            description="ImageTrust-AI ResNet18: real vs AI-generated (one logit, sigmoid)",
            source=None,  # saved_models/best_model.pth in github.com/SiemonCha/ImageTrust-AI
            format="imagetrust_resnet18_mlp",
            architecture="resnet18",
            input=IMAGENET_224_SQUASH,
            heads=(
                Head(
                    "ai",
                    "binary",
                    ("Real", "AI-Generated"),
                    activation="sigmoid",
                    positive="AI-Generated",
                ),
            ),
            card="https://github.com/SiemonCha/ImageTrust-AI",
        ),
        DetectorSpec(
            name="imagetrust_source",
            description="ImageTrust-AI ResNet18 generator type: Real, GAN, Diffusion, Other",
            source=None,  # saved_models/generator_model.pth in github.com/SiemonCha/ImageTrust-AI
            format="imagetrust_resnet18_mlp",
            architecture="resnet18",
            input=IMAGENET_224_SQUASH,
            heads=(Head("source", "source", IMAGETRUST_SOURCES, real_label="Real"),),
            card="https://github.com/SiemonCha/ImageTrust-AI",
        ),
        DetectorSpec(
            name="hive_effb4",
            description="EfficientNet-B4 two-head slot shaped like Hive's NIM (user-supplied weights)",
            source=None,
            format="timm_two_head_state_dict",
            architecture="efficientnet_b4",
            input=EFFNET_B4_320,
            heads=(
                Head(
                    "ai",
                    "binary",
                    ("not_ai_generated", "ai_generated"),
                    positive="ai_generated",
                ),
                Head("source", "source", HIVE_SOURCES, real_label="none"),
            ),
            card="https://build.nvidia.com/hive/ai-generated-image-detection",
            optional=True,
        ),
    )
}


def get(name: str) -> DetectorSpec:
    try:
        return DETECTORS[name]
    except KeyError:
        raise KeyError(f"unknown detector {name!r}; known: {', '.join(DETECTORS)}") from None


def with_labels(spec: DetectorSpec, head_name: str, labels: tuple[str, ...]) -> DetectorSpec:
    """The spec with one head's labels put in another order (e.g. Sumsub's, whose pipeline.py can't be
    read here). Label names keep their meaning: `positive`/`real_label` must still be among them."""
    heads = []
    for head in spec.heads:
        if head.name == head_name:
            if len(labels) != len(head.labels):
                raise ValueError(
                    f"{spec.name}.{head_name} has {len(head.labels)} labels, got {len(labels)}: {labels}"
                )
            for kept in (head.positive, head.real_label):
                if kept is not None and kept not in labels:
                    raise ValueError(f"{spec.name}.{head_name}: labels {labels} lack {kept!r}")
            head = dataclasses.replace(head, labels=tuple(labels))
        heads.append(head)
    if heads == list(spec.heads) and all(h.name != head_name for h in spec.heads):
        raise KeyError(f"{spec.name} has no head {head_name!r}")
    return dataclasses.replace(spec, heads=tuple(heads))


def as_exported(spec: DetectorSpec, heads: dict[str, list[str] | tuple[str, ...]]) -> DetectorSpec:
    """The spec with each head's labels in the order an export recorded (its ONNX metadata)."""
    for head, labels in heads.items():
        spec = with_labels(spec, head, tuple(labels))
    return spec


def distinct_inputs(specs) -> dict[str, InputSpec]:
    """Input specs by name, each once; two different specs under one name is a bug."""
    inputs: dict[str, InputSpec] = {}
    for spec in specs:
        seen = inputs.setdefault(spec.input.name, spec.input)
        if seen != spec.input:
            raise ValueError(f"input spec name {spec.input.name!r} is used for two different specs")
    return inputs
