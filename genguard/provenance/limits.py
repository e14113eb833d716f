"""How much work one image's metadata may cost (docs/provenance.md)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class MetadataLimits:
    max_metadata_bytes: int = 4 << 20    # EXIF + XMP + text taken per image (text after inflation)
    max_xmp_bytes: int = 1 << 20         # one XMP packet (a JPEG extended one too); a larger one is skipped unparsed
    max_xmp_extension_segments: int = 32  # JPEG extended-XMP segments read per image (1 MiB takes 17)
    max_text_chunks: int = 64            # PNG tEXt/zTXt/iTXt (and JPEG comments) read per image
    max_inflated_bytes: int = 1 << 20    # one zTXt/iTXt chunk after inflation; inflation stops there
    max_blocks: int = 20_000             # container segments/chunks walked per image
    max_c2pa_bytes: int = 16 << 20       # embedded C2PA (JUMBF) bytes the manifest reader is given
    max_seconds: float = 0.5             # time per image: stages not yet run when it is spent are skipped
    max_signals: int = 64                # signals reported per image (the answer stays small)
