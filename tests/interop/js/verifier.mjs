// A manymodels envelope verifier written from docs/PROTOCOL.md alone (§1 identity and peer ids,
// §3 envelope, §4 what is signed, §5 payloads), with no code of the reference implementation.
// openEnvelope(bytes) returns {kind, senderId, seq, ts, digest, payload} or throws VerifyError.
import { createHash, createPublicKey, verify } from 'node:crypto'
import { decode } from '@msgpack/msgpack'

export class VerifyError extends Error {}

const DOMAIN_TAG = Buffer.from('manymodels/envelope/v1\0', 'ascii') // 23 bytes (§4)
const ENVELOPE_KEYS = ['v', 'kind', 'sender', 'seq', 'ts', 'digest', 'sig', 'payload']
const P = (1n << 255n) - 19n
const L = (1n << 252n) + 27742317777372353535851937790883648493n
const Y8 = 0x05fc536d880238b13933c6d305acdfd5f098eff289f4c345b027b2c28f95e826n
const SMALL_ORDER_Y = new Set([0n, 1n, P - 1n, Y8, P - Y8]) // §1: the 8 points of order dividing 8
const BASE58 = '123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz'

function littleEndian (bytes) {
  let n = 0n
  for (let i = bytes.length - 1; i >= 0; i--) n = (n << 8n) | BigInt(bytes[i])
  return n
}

// §1 strict point: y (the low 255 bits) canonical and not of small order
function isStrictPoint (bytes) {
  const y = littleEndian(bytes) & ((1n << 255n) - 1n)
  return y < P && !SMALL_ORDER_Y.has(y)
}

function base58 (bytes) {
  let n = 0n
  for (const b of bytes) n = (n << 8n) | BigInt(b)
  let out = ''
  while (n > 0n) { out = BASE58[Number(n % 58n)] + out; n /= 58n }
  for (const b of bytes) { if (b !== 0) break; out = '1' + out }
  return out
}

// §1: base58btc(00 24 08 01 12 20 || public key)
export function peerIdOf (publicKey) {
  return base58(Buffer.concat([Buffer.from([0x00, 0x24, 0x08, 0x01, 0x12, 0x20]), publicKey]))
}

// §2 canonical encodings of the signed header's items
function uint (value) {
  const n = BigInt(value)
  if (n < 0n || n >= (1n << 64n)) throw new VerifyError('schema: integer out of range')
  if (n < 128n) return Buffer.from([Number(n)])
  const [tag, width] = n < 256n ? [0xcc, 1] : n < 65536n ? [0xcd, 2] : n < (1n << 32n) ? [0xce, 4] : [0xcf, 8]
  const out = Buffer.alloc(1 + width)
  out[0] = tag
  for (let i = 0; i < width; i++) out[width - i] = Number((n >> BigInt(8 * i)) & 0xffn)
  return out
}

function str (text) {
  const bytes = Buffer.from(text, 'utf8')
  if (bytes.length < 32) return Buffer.concat([Buffer.from([0xa0 + bytes.length]), bytes])
  if (bytes.length < 256) return Buffer.concat([Buffer.from([0xd9, bytes.length]), bytes])
  throw new VerifyError('schema: kind too long')
}

function bin32 (bytes) {
  return Buffer.concat([Buffer.from([0xc4, 0x20]), bytes])
}

// §4: DOMAIN_TAG || canonical_msgpack([v, kind, sender, seq, ts, digest])
export function signedBytes (e) {
  return Buffer.concat([DOMAIN_TAG, Buffer.from([0x96]), uint(e.v), str(e.kind), bin32(e.sender),
    uint(e.seq), uint(e.ts), bin32(e.digest)])
}

const isInt = (x) => (typeof x === 'number' && Number.isInteger(x)) || typeof x === 'bigint'
const isBin = (x, n) => x instanceof Uint8Array && (n === undefined || x.length === n)

function exactMap (value, keys) {
  if (value === null || typeof value !== 'object' || Array.isArray(value) || value instanceof Uint8Array ||
      Object.keys(value).length !== keys.length || !keys.every((k) => Object.hasOwn(value, k))) {
    throw new VerifyError(`schema: a map with exactly ${keys.join(', ')}`)
  }
  return value
}

function ed25519Verify (publicKey, message, sig) {
  const key = createPublicKey({ key: { kty: 'OKP', crv: 'Ed25519', x: Buffer.from(publicKey).toString('base64url') }, format: 'jwk' })
  return verify(null, message, key, sig)
}

// §3 + §4: schema, payload digest, strict key, strict signature
export function openEnvelope (bytes) {
  let e
  try {
    e = decode(bytes, { useBigInt64: true })
  } catch (err) {
    throw new VerifyError(`malformed: ${err.message}`)
  }
  exactMap(e, ENVELOPE_KEYS)
  if (!isInt(e.v) || BigInt(e.v) !== 1n) throw new VerifyError('bad_version')
  if (typeof e.kind !== 'string' || [...e.kind].length > 64) throw new VerifyError('schema: kind')
  if (!isBin(e.sender, 32) || !isBin(e.digest, 32) || !isBin(e.sig, 64) || !isBin(e.payload)) {
    throw new VerifyError('schema: sender, digest, sig, payload')
  }
  if (!isInt(e.seq) || !isInt(e.ts)) throw new VerifyError('schema: seq, ts')
  if (!createHash('sha256').update(e.payload).digest().equals(Buffer.from(e.digest))) {
    throw new VerifyError('digest_mismatch')
  }
  if (!isStrictPoint(e.sender)) throw new VerifyError('bad_key')
  const R = e.sig.subarray(0, 32)
  const S = littleEndian(e.sig.subarray(32, 64))
  if (S >= L || !isStrictPoint(R) || !ed25519Verify(e.sender, signedBytes(e), e.sig)) {
    throw new VerifyError('bad_signature')
  }
  return {
    kind: e.kind,
    senderId: peerIdOf(e.sender),
    seq: BigInt(e.seq),
    ts: BigInt(e.ts),
    digest: Buffer.from(e.digest).toString('hex'),
    payload: decode(e.payload, { useBigInt64: true })
  }
}

// §5 `announce`: digest bin(32); content str(64); model str(64); version, num_examples, size uint
export function readAnnounce (payload) {
  const a = exactMap(payload, ['digest', 'content', 'model', 'version', 'num_examples', 'size'])
  if (!isBin(a.digest, 32) || typeof a.content !== 'string' || typeof a.model !== 'string' ||
      ![a.version, a.num_examples, a.size].every(isInt)) {
    throw new VerifyError('schema: announce')
  }
  return { digest: Buffer.from(a.digest).toString('hex'), content: a.content, model: a.model,
    version: Number(a.version), size: Number(a.size) }
}
