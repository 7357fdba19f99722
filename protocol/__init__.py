"""Bytes <-> verified messages. Pure: no sockets, threads, torch or wall clock."""
from .codecs import Codec, CodecError, CodecSpec, Coded, Tensor, codec_of, dense, get_codec, list_codecs
from .envelope import (MAX_ENVELOPE_BYTES, PROTOCOL_VERSION, Message, ReadingMemo, Sealing, digest, open_envelope,
                       seal, seal_all)
from .errors import Reason, RejectedMessage
from .identity import Identity, peer_id, strict_public_key, verify
from .messages import (KINDS, Announce, BlobRequest, BlobResponse, Error, Hello, Logits, Payload, PeerExchange,
                       SyntheticBatch, Weights)
from .ndarray import ALLOWED_DTYPES, array_digest, decode_array, encode_array
from .replay import ReplayGuard

__all__ = [
    "ALLOWED_DTYPES", "Codec", "CodecError", "CodecSpec", "Coded", "KINDS", "Tensor", "codec_of", "dense", "get_codec",
    "list_codecs", "MAX_ENVELOPE_BYTES", "PROTOCOL_VERSION", "Announce", "BlobRequest",
    "BlobResponse", "Error", "Hello", "Identity", "Logits", "Message", "Payload", "PeerExchange", "Reason",
    "ReadingMemo", "RejectedMessage", "ReplayGuard", "SyntheticBatch", "Weights", "decode_array", "digest",
    "array_digest", "encode_array", "open_envelope", "peer_id", "seal", "seal_all", "Sealing", "strict_public_key",
    "verify",
]
