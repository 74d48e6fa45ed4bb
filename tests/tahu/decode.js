// Decode Sparkplug B payloads with Eclipse Tahu's JavaScript library (npm
// `sparkplug-payload`), an implementation independent of the bridge's encoder.
//
// Input: one JSON object per line, {"topic": ..., "payload": <base64>}; or, to play a
// host application's part, {"encode": {"timestamp": ms, "metrics": [{"name", "type",
// "value"}, ...]}}, answered with {"payload": <base64>} encoded by Tahu.
// Output: one JSON object per line: the topic, the payload's timestamp and seq, and
// each metric's name, alias, type (Tahu's name for it), value, timestamp, flags and
// properties. Integers are read from the wire field (intValue/longValue) and sized
// and signed by datatype: sparkplug-payload 1.0.3 reads UInt32 from longValue and
// gives negative Int8/Int16 as large positive numbers (see shared pitfalls).
"use strict";
const readline = require("readline");
const sp = require("sparkplug-payload").get("spBv1.0");
const proto = require("sparkplug-payload/lib/sparkplugPayloadProto");
const Payload = proto.org.eclipse.tahu.protobuf.Payload;

const SIGNED = { Int8: 8, Int16: 16, Int32: 32, Int64: 64 };
const INTS = ["Int8", "Int16", "Int32", "Int64", "UInt8", "UInt16", "UInt32", "UInt64"];

function big(v) {
  if (v === null || v === undefined) return null;
  if (typeof v === "object" && "low" in v) return (BigInt(v.high >>> 0) << 32n) | BigInt(v.low >>> 0);
  return BigInt(v);
}

function sized(raw, type) {
  const bits = SIGNED[type];
  if (bits === undefined) return raw;
  const mask = (1n << BigInt(bits)) - 1n;
  let v = raw & mask;
  if (v >> BigInt(bits - 1)) v -= 1n << BigInt(bits);
  return v;
}

function number(v) {
  if (typeof v === "bigint") return Number.isSafeInteger(Number(v)) ? Number(v) : v.toString();
  if (v && typeof v === "object" && "low" in v) return number(big(v));
  return v;
}

function props(p) {
  if (!p) return null;
  const out = {};
  for (const [k, v] of Object.entries(p)) out[k] = { type: v.type, value: number(v.value) };
  return out;
}

const rl = readline.createInterface({ input: process.stdin });
rl.on("line", (line) => {
  if (!line.trim()) return;
  const msg = JSON.parse(line);
  if (msg.encode) {
    const encoded = Buffer.from(sp.encodePayload(msg.encode)).toString("base64");
    process.stdout.write(JSON.stringify({ payload: encoded }) + "\n");
    return;
  }
  const bytes = Buffer.from(msg.payload, "base64");
  const decoded = sp.decodePayload(bytes);
  const raw = Payload.decode(bytes);
  const metrics = (decoded.metrics || []).map((m, i) => {
    const wire = raw.metrics[i];
    let value = m.value;
    if (INTS.includes(m.type) && !wire.isNull) {
      const field = wire.value === "longValue" ? wire.longValue : wire.intValue;
      value = number(sized(big(field), m.type));
    } else {
      value = number(value);
    }
    return {
      name: m.name ?? null,
      alias: m.alias === undefined || m.alias === null ? null : number(m.alias),
      type: m.type,
      value: wire.isNull ? null : value,
      timestamp: m.timestamp === undefined || m.timestamp === null ? null : number(m.timestamp),
      is_historical: !!m.isHistorical,
      is_null: !!wire.isNull,
      properties: props(m.properties),
    };
  });
  const out = {
    topic: msg.topic,
    timestamp: decoded.timestamp === undefined || decoded.timestamp === null ? null : number(decoded.timestamp),
    seq: decoded.seq === undefined || decoded.seq === null ? null : number(decoded.seq),
    metrics,
  };
  process.stdout.write(JSON.stringify(out) + "\n");
});
