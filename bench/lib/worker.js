'use strict';
// Load-generator worker process (forked by run.js): holds WebSocket clients,
// subscribes them, and counts/times what they receive. Talks to the parent by
// IPC messages {id, op, ...}; every reply carries the request id.
//
// Delivery timing: benchmark events carry `data` = "<seq>:<send time us>:<pad>",
// the send time being CLOCK_MONOTONIC in the publisher process (see stats.nowUs).

const WebSocket = require('ws');
const { presenceAuth, privateAuth, signedTrigger } = require('./proto');
const { HttpConnection } = require('./http');
const { nowUs, sleep, Histogram } = require('./stats');

const BENCH_EVENT = 'bench-event';
const PONG = JSON.stringify({ event: 'pusher:pong', data: {} });

const clients = new Set();
let latency = new Histogram();
let received = 0;
let lastReceiveUs = 0;
let memberAdded = 0;
let lastMemberAddedUs = 0;
let unexpectedCloses = 0;
const closeCodes = {};
const pusherErrors = {};
let cpuBase = process.cpuUsage();
let wallBase = nowUs();

function bump(map, key) {
  map[key] = (map[key] || 0) + 1;
}

/** Hot path: one frame from a subscribed client. */
function onFrame(client, raw) {
  let f;
  try {
    f = JSON.parse(raw);
  } catch (e) {
    bump(pusherErrors, 'bad-json');
    return;
  }
  const ev = f.event;
  if (ev === BENCH_EVENT) {
    const d = f.data;
    const a = d.indexOf(':');
    const t = Number(d.slice(a + 1, d.indexOf(':', a + 1)));
    const now = nowUs();
    latency.add(now - t);
    received++;
    lastReceiveUs = now;
  } else if (ev === 'pusher_internal:member_added') {
    memberAdded++;
    lastMemberAddedUs = nowUs();
  } else if (ev === 'pusher:ping') {
    client.ws.send(PONG);
  } else if (ev === 'pusher:error') {
    bump(pusherErrors, String(f.data && f.data.code));
  }
}

/** Open `items` connections, at most `concurrency` handshakes at a time. */
function openAll(msg, reply) {
  const { cfg, items } = msg;
  const res = {
    ok: 0,
    failed: {},
    established: new Histogram(),
    subscribed: new Histogram(),
    presenceMaxCount: 0,
    lastSubscribedUs: 0,
  };
  let next = 0;
  let inflight = 0;
  let done = 0;
  if (!items.length) {
    reply(finishOpen(res));
    return;
  }

  const startOne = () => {
    const it = items[next++];
    inflight++;
    const t0 = nowUs();
    let settled = false;
    const client = { ws: null, channel: it.channel, alive: false };
    const finish = (err) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      inflight--;
      done++;
      if (err) {
        bump(res.failed, err);
        try {
          client.ws.terminate();
        } catch (e) {
          /* already gone */
        }
      } else {
        res.ok++;
        client.alive = true;
        clients.add(client);
      }
      if (done === items.length) reply(finishOpen(res));
      else pump();
    };
    const timer = setTimeout(() => finish('timeout'), cfg.connectTimeoutMs);
    const opts = { perMessageDeflate: false, handshakeTimeout: cfg.connectTimeoutMs };
    if (it.localAddress) opts.localAddress = it.localAddress;
    const ws = new WebSocket(cfg.url, opts);
    client.ws = ws;
    let state = 'connecting';
    ws.on('message', (data) => {
      const raw = data.toString();
      if (state === 'subscribed') {
        onFrame(client, raw);
        return;
      }
      let f;
      try {
        f = JSON.parse(raw);
      } catch (e) {
        finish('bad-json');
        return;
      }
      if (f.event === 'pusher:error') {
        finish(`pusher:error ${f.data && f.data.code}`);
      } else if (state === 'connecting' && f.event === 'pusher:connection_established') {
        res.established.add(nowUs() - t0);
        let socketId;
        try {
          socketId = JSON.parse(f.data).socket_id;
        } catch (e) {
          finish('bad-connection_established');
          return;
        }
        const data = { channel: it.channel, auth: '' };
        if (it.channel.startsWith('presence-')) {
          const channelData = JSON.stringify({ user_id: it.userId, user_info: { n: it.userId } });
          data.channel_data = channelData;
          data.auth = presenceAuth(cfg.key, cfg.secret, socketId, it.channel, channelData);
        } else if (it.channel.startsWith('private-')) {
          data.auth = privateAuth(cfg.key, cfg.secret, socketId, it.channel);
        }
        state = 'subscribing';
        ws.send(JSON.stringify({ event: 'pusher:subscribe', data }));
      } else if (
        state === 'subscribing' &&
        f.event === 'pusher_internal:subscription_succeeded' &&
        f.channel === it.channel
      ) {
        const now = nowUs();
        res.subscribed.add(now - t0);
        if (now > res.lastSubscribedUs) res.lastSubscribedUs = now;
        if (it.channel.startsWith('presence-')) {
          try {
            const count = JSON.parse(f.data).presence.count;
            if (count > res.presenceMaxCount) res.presenceMaxCount = count;
          } catch (e) {
            finish('bad-presence-data');
            return;
          }
        }
        state = 'subscribed';
        finish(null);
      } else if (f.event === 'pusher:ping') {
        ws.send(PONG);
      } else if (f.event === 'pusher_internal:member_added') {
        memberAdded++;
        lastMemberAddedUs = nowUs();
      }
    });
    ws.on('error', (e) => finish(`error:${String(e.code || e.message).slice(0, 60)}`));
    ws.on('close', (code) => {
      if (!settled) {
        finish(`closed:${code}`);
      } else if (client.alive) {
        client.alive = false;
        clients.delete(client);
        unexpectedCloses++;
        bump(closeCodes, code);
      }
    });
  };

  const pump = () => {
    while (inflight < cfg.concurrency && next < items.length) startOne();
  };
  pump();
}

function finishOpen(res) {
  return {
    ok: res.ok,
    failed: res.failed,
    established: res.established.toWire(),
    subscribed: res.subscribed.toWire(),
    presenceMaxCount: res.presenceMaxCount,
    lastSubscribedUs: res.lastSubscribedUs,
  };
}

function resetCounters() {
  latency = new Histogram();
  received = 0;
  lastReceiveUs = 0;
  memberAdded = 0;
  lastMemberAddedUs = 0;
  cpuBase = process.cpuUsage();
  wallBase = nowUs();
}

function report(withHistogram) {
  const cpu = process.cpuUsage(cpuBase);
  return {
    received,
    lastReceiveUs,
    latency: withHistogram ? latency.toWire() : null,
    memberAdded,
    lastMemberAddedUs,
    alive: clients.size,
    unexpectedCloses,
    closeCodes,
    pusherErrors,
    cpuMs: (cpu.user + cpu.system) / 1000,
    wallMs: (nowUs() - wallBase) / 1000,
  };
}

/**
 * Closed-loop HTTP trigger load: `cfg.connections` keep-alive connections each
 * send one signed trigger, wait for the answer, send the next, until
 * `cfg.durationMs` has passed or `cfg.maxRequests` were sent.
 */
async function httpLoad(cfg) {
  const conns = [];
  for (let i = 0; i < cfg.connections; i++) conns.push(new HttpConnection(cfg.host, cfg.port));
  const lat = new Histogram();
  const statuses = {};
  const errorsSample = [];
  let ok = 0;
  let failed = 0;
  let seq = 0;
  const cpu0 = process.cpuUsage();
  const start = nowUs();
  const stopAt = start + cfg.durationMs * 1000;
  const filler = 'x'.repeat(cfg.payload);
  const loop = async (conn) => {
    while (nowUs() < stopAt && seq < cfg.maxRequests) {
      const t = nowUs();
      const data = `${seq++}:${Math.round(t)}:${filler}`.slice(0, Math.max(cfg.payload, 24));
      const event = { name: 'bench-event', channel: cfg.channel, data };
      const r = await conn.request(signedTrigger(cfg.app, cfg.hostHeader, event));
      lat.add(nowUs() - t);
      const key = r.error ? r.error : String(r.status);
      statuses[key] = (statuses[key] || 0) + 1;
      if (!r.error && r.status >= 200 && r.status < 300) {
        ok++;
      } else {
        failed++;
        if (errorsSample.length < 3) errorsSample.push(r.error || `${r.status} ${r.body.toString().slice(0, 200)}`);
        if (r.error) await sleep(10); // do not spin on a dead server
      }
    }
  };
  await Promise.all(conns.map(loop));
  const elapsedMs = (nowUs() - start) / 1000;
  for (const c of conns) c.close();
  const cpu = process.cpuUsage(cpu0);
  return {
    ok,
    failed,
    statuses,
    errorsSample,
    latency: lat.toWire(),
    tcpConnects: conns.reduce((s, c) => s + c.tcpConnects, 0),
    startUs: start,
    elapsedMs,
    cpuMs: (cpu.user + cpu.system) / 1000,
  };
}

function closeAll() {
  for (const c of clients) {
    c.alive = false;
    try {
      c.ws.terminate();
    } catch (e) {
      /* already gone */
    }
  }
  clients.clear();
}

process.on('message', (msg) => {
  const reply = (body) => process.send({ id: msg.id, ...body });
  switch (msg.op) {
    case 'open':
      openAll(msg, reply);
      break;
    case 'http':
      httpLoad(msg.cfg).then(reply, (e) => reply({ error: String(e) }));
      break;
    case 'reset':
      resetCounters();
      reply({});
      break;
    case 'report':
      reply(report(Boolean(msg.histogram)));
      break;
    case 'close':
      closeAll();
      reply({});
      setTimeout(() => process.exit(0), 50);
      break;
    default:
      reply({ error: `unknown op ${msg.op}` });
  }
});

// The parent going away must not leave clients behind.
process.on('disconnect', () => {
  closeAll();
  process.exit(0);
});
process.send({ op: 'ready' });
