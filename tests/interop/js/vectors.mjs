// Runs verifier.mjs over the test vectors of docs/PROTOCOL.md §10 and prints one JSON object:
// vector name -> "accept" or the reason the verifier refused it (the word before any ':').
// Usage: node vectors.mjs <path to PROTOCOL.md>
import { readFileSync } from 'node:fs'
import { openEnvelope } from './verifier.mjs'

const results = {}
for (const [, name, body] of readFileSync(process.argv[2], 'utf8').matchAll(/```vector name=(\S+)\n([\s\S]*?)```/g)) {
  const envelope = /^envelope: ([0-9a-f]+(?:\n {2}[0-9a-f]+)*)/m.exec(body)
  if (!envelope) continue
  try {
    openEnvelope(Buffer.from(envelope[1].replace(/\s+/g, ''), 'hex'))
    results[name] = 'accept'
  } catch (err) {
    results[name] = err.message.split(':')[0]
  }
}
process.stdout.write(JSON.stringify(results) + '\n')
