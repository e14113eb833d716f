"""XMP packets (IPTC DigitalSourceType, CreatorTool; xmpNote:HasExtendedXMP, the GUID of a JPEG's
extended packet), parsed with defusedxml: a DTD, and so entity expansion and external entities, is
refused outright."""

from __future__ import annotations

from genguard.provenance import generators
from genguard.provenance.sourcetypes import source_type_signal

IPTC_EXT = "http://iptc.org/std/Iptc4xmpExt/2008-02-29/"
XMP_BASIC = "http://ns.adobe.com/xap/1.0/"
XMP_NOTE = "http://ns.adobe.com/xmp/note/"
RDF = "http://www.w3.org/1999/02/22-rdf-syntax-ns#"
# (namespace, local name) -> field reported
FIELDS = {(IPTC_EXT, "DigitalSourceType"): "DigitalSourceType", (XMP_BASIC, "CreatorTool"): "CreatorTool",
          (XMP_NOTE, "HasExtendedXMP"): "HasExtendedXMP"}


def _split(tag: str) -> tuple[str, str]:
    if tag.startswith("{"):
        ns, _, local = tag[1:].partition("}")
        return ns, local
    return "", tag


def fields(packet: bytes) -> dict[str, list[str]]:
    """The fields of FIELDS found in one packet, as attributes or elements (plain or rdf:resource)."""
    from defusedxml import ElementTree as SafeET  # imported here: the client imports the mapping table only

    root = SafeET.fromstring(packet, forbid_dtd=True, forbid_entities=True, forbid_external=True)
    found: dict[str, list[str]] = {}
    for element in root.iter():
        for name, value in element.attrib.items():
            field = FIELDS.get(_split(name))
            if field:
                found.setdefault(field, []).append(value.strip())
        field = FIELDS.get(_split(element.tag))
        if field:
            value = (element.text or "").strip() or element.attrib.get(f"{{{RDF}}}resource", "").strip()
            if not value:  # rdf:Alt / rdf:Seq / rdf:Bag: the first li
                li = next((e for e in element.iter() if _split(e.tag) == (RDF, "li")), None)
                value = (li.text or "").strip() if li is not None else ""
            if value:
                found.setdefault(field, []).append(value)
    return found


def signals(packet: bytes) -> list[dict]:
    return signals_of(fields(packet))


def signals_of(found: dict[str, list[str]]) -> list[dict]:
    out = [source_type_signal("xmp", value, {"field": "Iptc4xmpExt:DigitalSourceType"})
           for value in dict.fromkeys(found.get("DigitalSourceType", []))]
    for tool in dict.fromkeys(found.get("CreatorTool", [])):
        generator = generators.identify(tool)
        out.append({"source": "xmp", "kind": "ai_generated" if generator else "software", "generator": generator,
                    "detail": {"field": "xmp:CreatorTool", "value": tool[:200]}})
    return out
