"""Typed rejections: every way a peer's bytes can fail carries its own reason."""
from __future__ import annotations

import enum


class Reason(str, enum.Enum):
    TOO_LARGE = "too_large"
    MALFORMED = "malformed"  # truncated, not msgpack, trailing bytes, invalid UTF-8, a repeated map key
    SCHEMA = "schema"  # msgpack, but not the fields and types the spec asks for
    UNSUPPORTED_VERSION = "unsupported_version"
    UNKNOWN_KIND = "unknown_kind"
    BAD_KEY = "bad_key"  # sender key not canonical, or of small order: refused before any signature work
    FOREIGN_AUTHOR = "foreign_author"  # signed by a key other than the peer the transport authenticated
    BANNED = "banned"
    BAD_SIGNATURE = "bad_signature"  # forged, or a signed header field was changed
    DIGEST_MISMATCH = "digest_mismatch"  # payload changed after signing
    REPLAYED = "replayed"  # sequence number already seen or below the window
    STALE = "stale"  # timestamp outside the allowed clock skew
    DTYPE_NOT_ALLOWED = "dtype_not_allowed"
    SHAPE_MISMATCH = "shape_mismatch"  # shape does not match the byte count
    UNKNOWN_CODEC = "unknown_codec"  # a coded tensor (§6a) of a codec this receiver does not know
    BAD_CODING = "bad_coding"  # a coded tensor's parts break its codec's rules (indices, scales, ...)


class RejectedMessage(Exception):
    """Raised for any message that must not be used. `reason` is a `Reason`."""

    def __init__(self, reason: Reason, detail: str = "") -> None:
        super().__init__(f"{reason.value}: {detail}" if detail else reason.value)
        self.reason = reason
        self.detail = detail
