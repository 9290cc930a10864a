// A reference console for scanctl in Node.js (docs/wire-protocol.md, scanctl/transport/schema/wire.json).
// It takes control, loads a protocol, runs it, follows the events with gap detection, decodes the ADC data,
// releases control, and writes every acquisition to a file; it prints one JSON line of figures on stdout.
//
//   node console.mjs --connect tcp://127.0.0.1:5555 --protocol /abs/path/gre_2d.toml --out acq.bin
//
// Output file: per acquisition, in the order received: index (int64), channels (int32), samples (int32),
// then channels x samples complex64 samples as they arrived (little-endian, C order).
import { Dealer, Subscriber } from "zeromq";
import { writeFileSync } from "node:fs";
import { randomUUID } from "node:crypto";

const VERSION = "2.0";
const args = Object.fromEntries(process.argv.slice(2).reduce((pairs, arg, i, all) =>
  arg.startsWith("--") ? [...pairs, [arg.slice(2), all[i + 1]]] : pairs, []));
const name = args.name ?? `console-node-${process.pid}`;
const roundTrips = Number(args.roundtrips ?? 200);
const now = () => Date.now() / 1000;
const log = (...words) => process.stderr.write(`console-node: ${words.join(" ")}\n`);

// -- commands: a DEALER, [envelope] frames (no empty delimiter), replies matched by re == id ------------
const control = new Dealer({ linger: 0 });
control.connect(args.connect);
let counter = 0;
const requestPrefix = `${name}-${randomUUID().slice(0, 8)}`;

async function command(cmd, argsOf = {}, timeoutMs = 120000) {
  const id = `${requestPrefix}-${++counter}`;
  const envelope = { v: VERSION, type: "command", id, src: name, ts: now(), body: { command: cmd, ...argsOf } };
  await control.send([JSON.stringify(envelope)]);
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    control.receiveTimeout = Math.max(1, deadline - Date.now());
    const frames = await control.receive();  // throws on timeout
    const reply = decodeMessage(frames);
    if (reply.re !== id) continue;  // the late answer to an earlier request
    if (reply.type === "error") {
      const err = new Error(`${cmd}: ${reply.body.code}: ${reply.body.message}`);
      err.body = reply.body;
      throw err;
    }
    return reply.body;
  }
}

// -- decoding: the envelope, its array references into the binary frames, special floats ---------------
function decodeMessage(frames) {
  const envelope = JSON.parse(frames[0].toString("utf8"));
  const [major] = String(envelope.v).split(".");
  if (major !== VERSION.split(".")[0]) throw new Error(`unsupported wire version ${envelope.v}`);
  envelope.body = unpack(envelope.body ?? {}, frames.slice(1));
  return envelope;
}

function unpack(value, frames) {
  if (Array.isArray(value)) return value.map((v) => unpack(v, frames));
  if (value === null || typeof value !== "object") return value;
  if ("__nd__" in value) return { dtype: value.dtype, shape: value.shape, bytes: frames[value.__nd__] };
  if ("__float__" in value) return { nan: NaN, inf: Infinity, "-inf": -Infinity }[value.__float__];
  return Object.fromEntries(Object.entries(value).map(([k, v]) => [k, unpack(v, frames)]));
}

function typed(array, Kind, dtype) {
  if (!/^[<=|]?/.test(array.dtype) || array.dtype.startsWith(">") || !array.dtype.endsWith(dtype)) {
    throw new Error(`unexpected dtype ${array.dtype} (want ${dtype}, little-endian)`);
  }
  const b = array.bytes;  // copied: a typed array needs its byte offset aligned
  return new Kind(b.buffer.slice(b.byteOffset, b.byteOffset + b.length));
}

// A batch (docs/wire-protocol.md#batches): groups of consecutive messages of one stream.
function unbatch(msg) {
  if (msg.type !== "batch") return [msg];
  const out = [];
  for (const g of msg.body.groups) {
    g.bodies.forEach((body, i) => out.push({ v: msg.v, type: g.type, src: msg.src, stream: g.stream,
      seq: g.seq + i, run: g.run, ts: g.ts + g.dt_us[i] * 1e-6, body }));
  }
  return out;
}

// -- subscriptions: events (type event and batch) and data (type data), with gap detection -------------
const queue = [];
let wake = null;
const gaps = [];
const lastSeq = new Map();

async function listen(socket) {
  for await (const frames of socket) {
    let messages;
    try {
      messages = unbatch(decodeMessage(frames));
    } catch (err) {
      log(`malformed message skipped: ${err.message}`);
      continue;
    }
    for (const m of messages) {
      const key = `${m.src}/${m.stream}`;
      const seen = lastSeq.get(key);
      if (seen !== undefined && m.seq !== seen + 1) gaps.push({ key, expected: seen + 1, got: m.seq });
      lastSeq.set(key, m.seq);
      queue.push(m);
    }
    if (wake) { wake(); wake = null; }
  }
}

async function next(timeoutMs) {
  if (queue.length) return queue.shift();
  await Promise.race([new Promise((resolve) => { wake = resolve; }),
                      new Promise((resolve) => setTimeout(resolve, timeoutMs))]);
  return queue.shift() ?? null;
}

function subscriber(endpoint, prefixes) {
  const socket = new Subscriber({ linger: 0 });
  socket.connect(endpoint);
  for (const p of prefixes) socket.subscribe(p);
  listen(socket).catch((err) => { if (!String(err).includes("closed")) log(`subscriber: ${err}`); });
  return socket;
}

const percentile = (sorted, p) => sorted[Math.min(sorted.length - 1, Math.floor(p * sorted.length))];

async function main() {
  const snapshot = (await command("status")).snapshot;
  const ep = snapshot.endpoints;
  const separate = ep.data !== ep.events;
  // The subscription prefixes carry the server's wire version (a newer minor than ours is fine to read).
  const v = snapshot.version;
  const sockets = [subscriber(ep.events, [`{"v":"${v}","type":"event"`, `{"v":"${v}","type":"batch"`])];
  if (separate) sockets.push(subscriber(ep.data, [`{"v":"${v}","type":"data"`]));
  else sockets[0].subscribe(`{"v":"${v}","type":"data"`);

  // sync: ZeroMQ's slow joiner; the token comes back on stream sync (and data_sync on a data socket)
  const want = new Set(separate ? ["sync", "data_sync"] : ["sync"]);
  for (let synced = false; !synced;) {
    const token = randomUUID();
    await command("sync", { token });
    const seen = new Set();
    const until = Date.now() + 100;
    while (Date.now() < until && seen.size < want.size) {
      const m = await next(until - Date.now());
      if (m && want.has(m.stream) && m.body.token === token) seen.add(m.stream);
    }
    synced = seen.size === want.size;
  }

  const rtt = [];
  for (let i = 0; i < roundTrips; i++) {
    const t0 = process.hrtime.bigint();
    await command("status");
    rtt.push(Number(process.hrtime.bigint() - t0) / 1e6);
  }
  rtt.sort((a, b) => a - b);

  await command("take_control");
  const loaded = await command("load", { path: args.protocol });
  log(`loaded ${args.protocol}: state ${loaded.state}`);
  const started = process.hrtime.bigint();
  const run = (await command("start")).run;
  const chunks = [];
  let acquisitions = 0, sampleBytes = 0, dataMessages = 0, end = null, dataEnd = null, lastData = started;
  const deadline = Date.now() + Number(args.timeout ?? 600) * 1000;
  while ((end === null || dataEnd === null) && Date.now() < deadline) {
    const m = await next(1000);
    if (m === null || m.run !== run) continue;
    if (m.stream === "data") {
      if (m.body.end) { dataEnd = m.body; continue; }
      const b = m.body.acquisitions;
      const index = typed(b.index, BigInt64Array, "i8");
      const shape = typed(b.shape, BigInt64Array, "i8");
      const data = b.data.bytes;  // complex64: 8 bytes a sample
      if (!b.data.dtype.endsWith("c8")) throw new Error(`data dtype ${b.data.dtype}`);
      let offset = 0;
      for (let i = 0; i < index.length; i++) {
        const channels = Number(shape[2 * i]), samples = Number(shape[2 * i + 1]);
        const head = Buffer.alloc(16);
        head.writeBigInt64LE(index[i], 0);
        head.writeInt32LE(channels, 8);
        head.writeInt32LE(samples, 12);
        const n = channels * samples * 8;
        chunks.push(head, data.subarray(offset, offset + n));
        offset += n;
      }
      if (offset !== data.length) throw new Error(`shapes need ${offset} bytes, data has ${data.length}`);
      acquisitions += index.length;
      sampleBytes += data.length;
      dataMessages += 1;
      lastData = process.hrtime.bigint();
    } else if (m.stream === "run" && m.body.event === "end") {
      end = m.body;
    }
  }
  if (end === null || dataEnd === null) throw new Error(`run ${run} did not end in time`);
  await command("release_control");
  writeFileSync(args.out, Buffer.concat(chunks));
  const seconds = Number(lastData - started) / 1e9;
  const figures = {
    console: "node", run, outcome: end.outcome, acquisitions, announced: dataEnd.acquisitions,
    data_messages: dataMessages, sample_bytes: sampleBytes, gaps,
    round_trip_ms: { n: rtt.length, p50: percentile(rtt, 0.5), p99: percentile(rtt, 0.99) },
    data_s: seconds, throughput_mb_s: sampleBytes / 1e6 / seconds,
  };
  process.stdout.write(JSON.stringify(figures) + "\n");
  for (const s of sockets) s.close();
  control.close();
}

main().catch((err) => {
  log(`failed: ${err.message}`);
  process.exit(1);
});
