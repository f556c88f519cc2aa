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
// After 'expect-close' (the server is being stopped) closes are counted here.
let draining = false;
const drainCloseCodes = {};
let lastCloseUs = 0;
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
    client.seen++;
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

/** Socket errors that mean "this local port is taken": retried on another port. */
const PORT_TAKEN = new Set(['EADDRINUSE', 'EADDRNOTAVAIL']);
const MAX_PORT_RETRIES = 8;

/**
 * Open `items` connections, at most `concurrency` handshakes at a time.
 *
 * An item is {channels: [...], userId, localAddress?, localPort?}. When the
 * parent assigned an explicit local port, the socket is bound to it: binding
 * to an address with port 0 makes the kernel search the whole port range for
 * a free port on every connect (seconds of system time per thousand
 * connections once tens of thousands are open), while an explicit port is
 * one hash lookup. A port that turns out to be taken is replaced from
 * `cfg.spare` (slots next, next + step, ... up to end of the parent's port
 * window {lo, size, offset}; disjoint between workers), at most
 * MAX_PORT_RETRIES times per connection.
 */
function openAll(msg, reply) {
  const { cfg, items } = msg;
  const spare = cfg.spare ? { ...cfg.spare } : null;
  const res = {
    ok: 0,
    failed: {},
    established: new Histogram(),
    subscribed: new Histogram(),
    presenceMaxCount: 0,
    lastSubscribedUs: 0,
    portRetries: 0,
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
    const channels = it.channels || [it.channel];
    inflight++;
    const t0 = nowUs();
    let settled = false;
    let retries = 0;
    const client = { ws: null, channels, alive: false, seen: 0 };
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

    const attempt = (localPort) => {
      const opts = { perMessageDeflate: false, handshakeTimeout: cfg.connectTimeoutMs };
      if (it.localAddress) opts.localAddress = it.localAddress;
      if (localPort) opts.localPort = localPort;
      const ws = new WebSocket(cfg.url, opts);
      client.ws = ws;
      let state = 'connecting';
      const pending = new Set(channels);
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
          state = 'subscribing';
          for (const channel of channels) {
            const data = { channel, auth: '' };
            if (channel.startsWith('presence-')) {
              const channelData = JSON.stringify({ user_id: it.userId, user_info: { n: it.userId } });
              data.channel_data = channelData;
              data.auth = presenceAuth(cfg.key, cfg.secret, socketId, channel, channelData);
            } else if (channel.startsWith('private-')) {
              data.auth = privateAuth(cfg.key, cfg.secret, socketId, channel);
            }
            ws.send(JSON.stringify({ event: 'pusher:subscribe', data }));
          }
        } else if (
          state === 'subscribing' &&
          f.event === 'pusher_internal:subscription_succeeded' &&
          pending.has(f.channel)
        ) {
          pending.delete(f.channel);
          if (f.channel.startsWith('presence-')) {
            try {
              const count = JSON.parse(f.data).presence.count;
              if (count > res.presenceMaxCount) res.presenceMaxCount = count;
            } catch (e) {
              finish('bad-presence-data');
              return;
            }
          }
          if (pending.size) return;
          const now = nowUs();
          res.subscribed.add(now - t0);
          if (now > res.lastSubscribedUs) res.lastSubscribedUs = now;
          state = 'subscribed';
          finish(null);
        } else if (f.event === 'pusher:ping') {
          ws.send(PONG);
        } else if (f.event === 'pusher_internal:member_added') {
          memberAdded++;
          lastMemberAddedUs = nowUs();
        }
      });
      ws.on('error', (e) => {
        if (client.ws !== ws) return;
        if (
          !settled &&
          state === 'connecting' &&
          localPort &&
          PORT_TAKEN.has(e.code) &&
          retries < MAX_PORT_RETRIES &&
          spare &&
          spare.next <= spare.end
        ) {
          retries++;
          res.portRetries++;
          const port = spare.lo + ((spare.offset + spare.next) % spare.size);
          spare.next += spare.step;
          client.ws = null;
          attempt(port);
          return;
        }
        finish(`error:${String(e.code || e.message).slice(0, 60)}`);
      });
      ws.on('close', (code) => {
        if (client.ws !== ws) return;
        if (!settled) {
          finish(`closed:${code}`);
        } else if (client.alive) {
          client.alive = false;
          clients.delete(client);
          if (draining) {
            bump(drainCloseCodes, code);
            lastCloseUs = nowUs();
          } else {
            unexpectedCloses++;
            bump(closeCodes, code);
          }
        }
      });
    };
    attempt(it.localPort || 0);
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
    portRetries: res.portRetries,
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
  for (const c of clients) c.seen = 0;
}

/** Clients that saw no bench event since the reset, and extra copies seen. */
function perClientCounts() {
  let missing = 0;
  let duplicates = 0;
  for (const c of clients) {
    if (c.seen === 0) missing++;
    else if (c.seen > 1) duplicates += c.seen - 1;
  }
  return { missing, duplicates };
}

function report(withHistogram, perClient) {
  const cpu = process.cpuUsage(cpuBase);
  return {
    perClient: perClient ? perClientCounts() : null,
    draining,
    drainCloseCodes,
    lastCloseUs,
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
      reply({ alive: clients.size });
      break;
    case 'report':
      reply(report(Boolean(msg.histogram), Boolean(msg.perClient)));
      break;
    case 'expect-close':
      draining = true;
      reply({ alive: clients.size });
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
