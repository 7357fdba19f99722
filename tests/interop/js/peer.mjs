// A js-libp2p 2.10 peer that joins a manymodels daemon as another implementation would, for
// tests/test_interop_js.py. Usage: node peer.mjs <daemon multiaddr ending in /p2p/<id>>
//
// It prints one JSON line per step on stdout:
//   {"event": "listening", "addrs": [...]}     then it dials the daemon (Noise, yamux, identify),
//       subscribes to the announcement topic, reads the daemon's message streams, verifies every
//       envelope with verifier.mjs, and looks the daemon up as a DHT provider (client mode: it
//       does not serve /ipfs/kad/1.0.0, as a home node would not);
//   {"event": "hung_up", ...what it saw}        after closing its connection; it then waits for
//       the daemon to dial it (`manymodels connect <our address>`);
//   {"event": "dialed", "by": <peer id>, "direction": "inbound", "messages": n, ...} once a
//       message has come over that connection, then it exits 0.
// Any failure: {"event": "error", "message": ...} and exit 1.

// Node 20 has no Promise.withResolvers (libp2p 2.x uses it); the imports below come after this.
if (!Promise.withResolvers) {
  Promise.withResolvers = function () {
    let resolve, reject
    const promise = new this((res, rej) => { resolve = res; reject = rej })
    return { promise, resolve, reject }
  }
}

const { createHash } = await import('node:crypto')
const { createLibp2p } = await import('libp2p')
const { tcp } = await import('@libp2p/tcp')
const { noise } = await import('@chainsafe/libp2p-noise')
const { yamux } = await import('@chainsafe/libp2p-yamux')
const { identify } = await import('@libp2p/identify')
const { ping } = await import('@libp2p/ping')
const { gossipsub } = await import('@chainsafe/libp2p-gossipsub')
const { kadDHT, removePublicAddressesMapper } = await import('@libp2p/kad-dht')
const { multiaddr } = await import('@multiformats/multiaddr')
const { CID } = await import('multiformats/cid')
const Digest = await import('multiformats/hashes/digest')
const { openEnvelope, readAnnounce } = await import('./verifier.mjs')

const TOPIC = '/manymodels/announce/1' // docs/PROTOCOL.md §11.5
const MSG_PROTOCOL = '/manymodels/msg/1.0.0' // §11.2
const KAD = '/ipfs/kad/1.0.0'
const RAW = 0x55
const SHA2_256 = 0x12

const say = (obj) => process.stdout.write(JSON.stringify(obj) + '\n')
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms))

async function until (what, ms, check) {
  const deadline = Date.now() + ms
  for (;;) {
    const value = await check()
    if (value) return value
    if (Date.now() > deadline) throw new Error(`timed out after ${ms} ms waiting for ${what}`)
    await sleep(100)
  }
}

// §11.5: the message id is the author's peer id bytes || SHA-256(data)
function announceMsgId (msg) {
  const from = msg.type === 'signed' ? msg.from.toMultihash().bytes : new Uint8Array()
  return Buffer.concat([from, createHash('sha256').update(msg.data).digest()])
}

const seen = {
  identify: null,
  connection: null,
  announcements: { valid: 0, invalid: 0, errors: [], first: null, origin_matches: true },
  messages: { verified: 0, invalid: 0, errors: [], kinds: {}, author_matches: true },
  providers: []
}

// §11.2: frames of an 8-byte big-endian length then one envelope, on streams the daemon opens
async function readMessages ({ stream, connection }) {
  let buffer = Buffer.alloc(0)
  const peer = connection.remotePeer.toString()
  try {
    for await (const chunk of stream.source) {
      buffer = Buffer.concat([buffer, chunk.subarray()])
      while (buffer.length >= 8) {
        const length = Number(buffer.readBigUInt64BE(0))
        if (buffer.length < 8 + length) break
        const frame = buffer.subarray(8, 8 + length)
        buffer = buffer.subarray(8 + length)
        try {
          const message = openEnvelope(frame)
          seen.messages.verified++
          seen.messages.kinds[message.kind] = (seen.messages.kinds[message.kind] ?? 0) + 1
          if (message.senderId !== peer) seen.messages.author_matches = false
        } catch (err) {
          seen.messages.invalid++
          if (seen.messages.errors.length < 5) seen.messages.errors.push(err.message)
        }
      }
    }
  } catch { /* the daemon or we hung up */ }
}

function onAnnouncement (event) {
  const msg = event.detail.msg ?? event.detail
  if (msg.topic !== TOPIC) return
  const a = seen.announcements
  try {
    const message = openEnvelope(msg.data)
    if (message.kind !== 'announce') throw new Error(`kind ${message.kind}`)
    const announce = readAnnounce(message.payload)
    if (msg.type !== 'signed' || message.senderId !== msg.from.toString()) a.origin_matches = false
    a.valid++
    a.first ??= { ...announce, author: message.senderId }
    a.latest = announce.digest
  } catch (err) {
    a.invalid++
    if (a.errors.length < 5) a.errors.push(err.message)
  }
}

async function findProvider (node, digestHex, daemonId) {
  const cid = CID.createV1(RAW, Digest.create(SHA2_256, Buffer.from(digestHex, 'hex')))
  for await (const provider of node.contentRouting.findProviders(cid, { signal: AbortSignal.timeout(8000) })) {
    seen.providers.push(provider.id.toString())
    if (provider.id.toString() === daemonId) return
  }
}

async function main () {
  const target = multiaddr(process.argv[2])
  const daemonId = target.getPeerId()
  let hungUp = false
  const node = await createLibp2p({
    addresses: { listen: ['/ip4/127.0.0.1/tcp/0'] },
    // once we have hung up, only the daemon's own dial may connect us again
    connectionGater: { denyDialPeer: (peerId) => hungUp && peerId.toString() === daemonId },
    transports: [tcp()],
    connectionEncrypters: [noise()],
    streamMuxers: [yamux()],
    services: {
      identify: identify(),
      ping: ping(),
      pubsub: gossipsub({ msgIdFn: announceMsgId }),
      // loopback addresses are all the test has: keep the private ones, as a LAN DHT does
      dht: kadDHT({ protocol: KAD, clientMode: true, peerInfoMapper: removePublicAddressesMapper })
    }
  })
  node.addEventListener('peer:identify', (event) => {
    if (event.detail.peerId.toString() !== daemonId) return
    seen.identify = { agent: event.detail.agentVersion, protocols: event.detail.protocols }
  })
  node.services.pubsub.addEventListener('message', onAnnouncement)
  await node.handle(MSG_PROTOCOL, (data) => { readMessages(data) }, { maxInboundStreams: 64 })
  node.services.pubsub.subscribe(TOPIC)
  say({ event: 'listening', id: node.peerId.toString(), addrs: node.getMultiaddrs().map(String) })

  const connection = await node.dial(target, { signal: AbortSignal.timeout(10000) })
  seen.connection = { encryption: connection.encryption, multiplexer: connection.multiplexer, direction: connection.direction }
  await until('identify', 10000, () => seen.identify)
  await until('a valid announcement', 15000, () => seen.announcements.first)
  await until('messages on ' + MSG_PROTOCOL, 10000, () => seen.messages.verified >= 2)
  await until('the daemon as a provider', 15000, async () => {
    await findProvider(node, seen.announcements.latest, daemonId).catch((err) => { seen.lookup_error = err.message })
    return seen.providers.includes(daemonId)
  })
  hungUp = true
  await node.hangUp(target)
  say({ event: 'hung_up', ...seen })

  const inbound = await until('the daemon to dial us', 20000, () =>
    node.getConnections().find((c) => c.remotePeer.toString() === daemonId && c.direction === 'inbound'))
  const before = seen.messages.verified
  await until('a message over the daemon\'s connection', 10000, () => seen.messages.verified > before)
  say({ event: 'dialed', by: inbound.remotePeer.toString(), direction: inbound.direction,
    messages: seen.messages.verified - before, invalid: seen.messages.invalid })
  await node.stop()
}

try {
  await main()
  process.exit(0)
} catch (err) {
  say({ event: 'error', message: String(err?.stack ?? err), seen })
  process.exit(1)
}
