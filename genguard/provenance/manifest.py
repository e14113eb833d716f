"""C2PA manifests, read and validated with the official c2pa-python reader.

The validation state of the active manifest is reported as:
  trusted    signature and bindings valid, signer chains to a configured trust anchor
  untrusted  signature and bindings valid, signer not anchored (always the case with no anchors configured)
  invalid    the manifest fails validation (pixels changed after signing, bad signature, ...): the
             failing codes are listed
  error      the manifest store could not be read (malformed JUMBF): reported, never evidence
"""

from __future__ import annotations

import io
import json
import threading

from genguard.provenance import generators
from genguard.provenance.sourcetypes import kind_of, short_name

MIME = {"jpeg": "image/jpeg", "png": "image/png", "webp": "image/webp"}
_STATES = {"Trusted": "trusted", "Valid": "untrusted", "Invalid": "invalid"}


class ManifestReader:
    """One per model instance; a c2pa Context (with the trust anchors) per thread."""

    def __init__(self, trust_anchors: str = ""):
        self.trust_anchors = trust_anchors
        self._local = threading.local()

    def _context(self):
        import c2pa

        context = getattr(self._local, "context", None)
        if context is None:
            # offline: never fetch a remote manifest or OCSP (c2pa-rs fetches remote manifests by default)
            settings = {"verify": {"verify_trust": True, "remote_manifest_fetch": False, "ocsp_fetch": False}}
            if self.trust_anchors.strip():
                settings["trust"] = {"trust_anchors": self.trust_anchors}
            context = self._local.context = c2pa.Context.from_dict(settings)
        return context

    def read(self, data: bytes, container: str) -> dict:
        """The `c2pa` block of the answer for an image that embeds a manifest store."""
        return self.read_mime(data, MIME[container])

    def read_mime(self, data: bytes, mime: str, absent_ok: bool = False) -> dict:
        """The `c2pa` block for a file of type `mime` (images, and MP4/MOV clips). absent_ok: the caller did not
        find a manifest store first (clips), so "none found" is {"present": False}, not an error."""
        import c2pa

        try:
            with c2pa.Reader(mime, io.BytesIO(data), context=self._context()) as reader:
                store = json.loads(reader.json())
                state = reader.get_validation_state()
        except c2pa.C2paError as exc:
            kind = type(exc).__name__.lstrip("_").removeprefix("C2pa")
            if absent_ok and kind == "ManifestNotFound":
                return {"present": False}
            return {"present": True, "state": "error", "failures": [kind], "message": str(exc)[:300]}
        return summarize(store, state)


def summarize(store: dict, state: str | None) -> dict:
    manifest = store.get("manifests", {}).get(store.get("active_manifest") or "", {})
    signature = manifest.get("signature_info") or {}
    actions, source_types = [], []
    for assertion in manifest.get("assertions", []):
        if str(assertion.get("label", "")).startswith("c2pa.actions"):
            for action in (assertion.get("data") or {}).get("actions", []):
                agent = action.get("softwareAgent")
                agent = agent.get("name") if isinstance(agent, dict) else agent
                entry = {"action": action.get("action"), "software_agent": agent,
                         "digital_source_type": short_name(action["digitalSourceType"])
                         if action.get("digitalSourceType") else None}
                actions.append(entry)
                if entry["digital_source_type"]:
                    source_types.append(entry["digital_source_type"])
    generator_info = manifest.get("claim_generator_info") or []
    claim_generator = manifest.get("claim_generator") or ", ".join(
        str(g.get("name")) for g in generator_info if isinstance(g, dict) and g.get("name"))
    failures = [s.get("code") for s in store.get("validation_status", [])
                if s.get("code") and s.get("code") != "signingCredential.untrusted"]
    return {
        "present": True,
        "state": _STATES.get(state or "", "invalid"),
        "failures": failures,
        "signer": {"issuer": signature.get("issuer"), "common_name": signature.get("common_name")},
        "claim_generator": claim_generator[:200] or None,
        "actions": actions[:32],
        "digital_source_types": list(dict.fromkeys(source_types)),
    }


def signals(block: dict) -> list[dict]:
    """One signal per digital source type the active manifest declares (with its generator, if named)."""
    if block.get("state") in (None, "error"):
        return []
    agents = [a.get("software_agent") for a in block.get("actions", []) if a.get("software_agent")]
    generator = None
    for text in [*agents, block.get("claim_generator")]:
        generator = generators.identify(text)
        if generator:
            break
    out = []
    for source_type in block.get("digital_source_types", []):
        kind = kind_of(source_type)
        out.append({"source": "c2pa", "kind": kind,
                    "generator": generator if kind in ("ai_generated", "ai_composite") else None,
                    "detail": {"digital_source_type": source_type, "state": block["state"],
                               "signer": block.get("signer")}})
    return out
