'use strict';
// Subscriber side of bench/cluster_fanout.py: holds WebSocket clients spread
// round-robin over several nodes' ports, subscribed to one channel, and
// records each benchmark event's latency (CLOCK_MONOTONIC, which the Python
// publisher also reads). Python drives it over stdin/stdout JSON lines.
//
// Usage: node cluster_fanout_clients.js COUNT PORT[,PORT...] OFFSET CHANNEL
// Prints {"type":"subscribed","n":N} once every client is subscribed (or after
// 60 s), then, on the stdin line "report", {"type":"report","latencies_us":[..]}
// and exits. Loopback only; it exits by itself after 10 minutes.

const WebSocket = require('ws');

const [count, portList, offset, channel] = [
  Number(process.argv[2]),
  process.argv[3].split(',').map(Number),
  Number(process.argv[4]),
  process.argv[5],
];
const EVENT_HEAD = '{"event":"bench-event"';
const latencies = [];
const byPort = {};
let subscribed = 0;
let reported = false;
let lastUs = 0;
let cpuBase = process.cpuUsage();
let wallBase = nowUs();

function nowUs() {
  return Number(process.hrtime.bigint() / 1000n);
}

function announce() {
  if (!reported) {
    reported = true;
    process.stdout.write(JSON.stringify({ type: 'subscribed', n: subscribed }) + '\n');
  }
}

function open(i) {
  const port = portList[(offset + i) % portList.length];
  const ws = new WebSocket(`ws://127.0.0.1:${port}/app/app-key?protocol=7&client=bench&version=1`, {
    perMessageDeflate: false,
  });
  ws.on('message', (raw) => {
    const text = raw.toString();
    if (text.startsWith(EVENT_HEAD)) {
      const data = JSON.parse(text).data;
      const a = data.indexOf(':');
      const sentNs = BigInt(data.slice(a + 1, data.indexOf(':', a + 1)));
      const us = nowUs() - Number(sentNs / 1000n);
      latencies.push(us);
      lastUs = us + Number(sentNs / 1000n);
      (byPort[port] = byPort[port] || []).push(us);
      return;
    }
    const frame = JSON.parse(text);
    if (frame.event === 'pusher:connection_established') {
      ws.send(JSON.stringify({ event: 'pusher:subscribe', data: { channel } }));
    } else if (frame.event === 'pusher_internal:subscription_succeeded') {
      subscribed++;
      if (subscribed === count) {
        cpuBase = process.cpuUsage();
        wallBase = nowUs();
        announce();
      }
    } else if (frame.event === 'pusher:ping') {
      ws.send('{"event":"pusher:pong","data":{}}');
    }
  });
  ws.on('error', (e) => process.stderr.write(`client ${i}: ${e}\n`));
}

let next = 0;
function openSome() {
  for (let k = 0; k < 50 && next < count; k++) open(next++);
  if (next < count) setTimeout(openSome, 5);
}
openSome();
setTimeout(announce, 60000).unref();
setTimeout(() => process.exit(3), 600000).unref();

let input = '';
process.stdin.on('data', (chunk) => {
  input += chunk;
  if (input.includes('report')) {
    process.stdout.write(JSON.stringify({
        type: 'report',
        latencies_us: latencies,
        by_port: byPort,
        last_us: lastUs,
        cpu_pct: (100 * ((c) => c.user + c.system)(process.cpuUsage(cpuBase))) / Math.max(1, nowUs() - wallBase),
      }) + '\n', () =>
      process.exit(0),
    );
  }
});
