#!/usr/bin/env node
'use strict';
// sockudo-tw load tool: Pusher-protocol scenarios against a server on loopback.
//
//   node bench/run.js --scenario all --port 6001
//   node bench/run.js --help
//
// Scenarios: connect, fanout, channels, http, presence (or "all", or a comma
// list). Prints one summary line per scenario, writes all results as JSON, and
// exits 1 if any scenario saw errors or lost messages (never because of
// timing). Only loopback hosts are accepted; every phase is bounded in count
// and in time, and the whole run by --max-time.

const { fork } = require('child_process');
const fs = require('fs');
const os = require('os');
const path = require('path');
const { assertLoopback, signedGet, signedTrigger, wsUrl } = require('./lib/proto');
const { HttpConnection } = require('./lib/http');
const {
  nowUs,
  sleep,
  Histogram,
  serverSnapshot,
  serverProcesses,
  processTree,
  processGone,
  ServerSampler,
  findPidByPort,
  ownCpuMs,
} = require('./lib/stats');

const SCENARIOS = ['connect', 'fanout', 'channels', 'http', 'presence'];

// name: [default, help]
const OPTIONS = {
  scenario: ['all', 'all, or one or a comma list of: ' + SCENARIOS.join(', ')],
  host: ['127.0.0.1', 'server host, loopback only'],
  port: [6001, 'server port (WebSocket and HTTP API)'],
  'app-id': ['app-id', 'app id'],
  'app-key': ['app-key', 'app key'],
  'app-secret': ['app-secret', 'app secret'],
  'server-pid': [0, 'server pid for CPU/RSS from /proc (0: find the process listening on --port)'],
  'server-name': ['server', 'label in the output'],
  workers: [2, 'load-generator processes holding the WebSocket clients'],
  concurrency: [100, 'connection handshakes in flight, all workers together'],
  'connect-timeout': [20, 's for one connection to be subscribed'],
  'source-ips': [1, 'client source addresses: 1 = 127.0.0.1 with kernel-chosen ports (at most ~28k connections to one server port); N > 1 = 127.0.0.2..127.0.0.(N+1) with explicit local ports (127.0.0.1, which every other local client uses, is left alone)'],
  connections: [1000, '[connect] connections'],
  channels: [1, '[connect] spread them over this many channels (0: one channel each)'],
  hold: [3, '[connect] s to hold all connections before counting survivors'],
  broadcast: [false, '[connect] subscribe each client to bench-all too; after the hold trigger one event to bench-all, then one to every bench-conn-* channel (100 channels per trigger), and time the deliveries'],
  'broadcast-timeout': [120, '[connect --broadcast] s to wait for every client to receive one broadcast'],
  verify: [false, "[connect] while holding, check the server's own counts: sockudo_connected on --metrics-port, the HTTP API's subscription_count of bench-all (with --broadcast) and its number of bench-conn- channels"],
  'metrics-port': [0, '[connect --verify] port of the server\'s /metrics listener on --host (0: skip that check)'],
  'verify-timeout': [30, '[connect --verify] s to wait for the counts to match'],
  terminate: [false, '[connect] at the end SIGTERM the server, then time until every client is closed (close codes reported, 4200 expected) and until the server process has exited'],
  'terminate-timeout': [120, '[connect --terminate] s to wait for the closes and for the exit'],
  subscribers: [1000, '[fanout] subscribers of the one channel'],
  clients: [1000, '[channels] clients, each on its own channel'],
  rate: [0, '[fanout|channels] triggers/s (0: fanout 100, channels 500)'],
  batch: [1, '[channels] channels per trigger (max 100)'],
  duration: [10, '[fanout|channels|http] s of load'],
  payload: [100, '[fanout|channels|http] event data size, bytes'],
  inflight: [32, '[fanout|channels] trigger requests in flight at most (= publisher connections)'],
  drain: [10, '[fanout|channels] s to wait for outstanding deliveries'],
  'http-connections': [32, '[http] keep-alive connections, closed loop'],
  members: [500, '[presence] members joining one presence channel'],
  'settle-time': [1, 's of quiet between connecting and measuring'],
  out: ['', 'JSON results file (default bench/results/<time>-<server-name>.json)'],
  json: [false, 'also print the JSON document'],
  'max-time': [900, 'hard wall-clock limit of the whole run, s'],
};

function usage() {
  const lines = ['usage: node bench/run.js [--option value ...]', ''];
  for (const [k, [d, h]] of Object.entries(OPTIONS)) {
    lines.push(`  --${k.padEnd(18)} ${h} (default ${JSON.stringify(d)})`);
  }
  lines.push('', 'Every option can also be set as BENCH_<NAME> (upper case, "-" -> "_").');
  return lines.join('\n');
}

function parseArgs(argv) {
  const o = {};
  for (const [k, [d]] of Object.entries(OPTIONS)) {
    const env = process.env['BENCH_' + k.toUpperCase().replace(/-/g, '_')];
    o[k] = env !== undefined ? coerce(env, d) : d;
  }
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a === '-h' || a === '--help') {
      console.log(usage());
      process.exit(0);
    }
    if (!a.startsWith('--')) throw new Error(`unexpected argument ${a}`);
    let [k, v] = a.slice(2).split(/=(.*)/s);
    if (!(k in OPTIONS)) throw new Error(`unknown option --${k} (see --help)`);
    if (v === undefined) {
      if (typeof OPTIONS[k][0] === 'boolean') v = 'true';
      else if (i + 1 < argv.length) v = argv[++i];
      else throw new Error(`--${k} needs a value`);
    }
    o[k] = coerce(v, OPTIONS[k][0]);
  }
  return o;
}

function coerce(v, d) {
  if (typeof d === 'number') {
    const n = Number(v);
    if (!Number.isFinite(n) || n < 0) throw new Error(`expected a non-negative number, got ${v}`);
    return n;
  }
  if (typeof d === 'boolean') return v === true || v === 'true' || v === '1';
  return String(v);
}

const r3 = (x) => (x === null || x === undefined || !Number.isFinite(x) ? null : Math.round(x * 1000) / 1000);

// ------------------------------------------------------------------ workers

class WorkerPool {
  constructor(n) {
    this.workers = [];
    this.n = Math.max(1, Math.floor(n));
    this.seq = 0;
    this.waiting = new Map();
  }

  async start() {
    const ready = [];
    for (let i = 0; i < this.n; i++) {
      const w = fork(path.join(__dirname, 'lib', 'worker.js'), [], { stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
      this.workers.push(w);
      ready.push(
        new Promise((resolve, reject) => {
          w.once('message', (m) => (m.op === 'ready' ? resolve() : reject(new Error('worker did not start'))));
          w.once('exit', (code) => reject(new Error(`worker exited with ${code}`)));
        }),
      );
      w.on('message', (m) => {
        const cb = this.waiting.get(m.id);
        if (cb) {
          this.waiting.delete(m.id);
          cb(m);
        }
      });
    }
    await Promise.all(ready);
    return this;
  }

  call(w, msg, timeoutMs) {
    const id = ++this.seq;
    return new Promise((resolve, reject) => {
      const t = setTimeout(() => {
        this.waiting.delete(id);
        reject(new Error(`worker ${msg.op} timed out`));
      }, timeoutMs);
      this.waiting.set(id, (m) => {
        clearTimeout(t);
        resolve(m);
      });
      w.send({ id, ...msg });
    });
  }

  all(msg, timeoutMs = 10000) {
    return Promise.all(this.workers.map((w) => this.call(w, msg, timeoutMs)));
  }

  /** Distribute connection items round-robin and open them all. */
  async open(items, cfg, totalTimeoutMs) {
    const per = this.workers.map(() => []);
    items.forEach((it, i) => per[i % per.length].push(it));
    const c = { ...cfg, concurrency: Math.max(1, Math.ceil(cfg.concurrency / this.workers.length)) };
    const W = this.workers.length;
    // spare local ports (slots of the window after the assigned ones), disjoint per worker
    const spareOf = (i) => (items.ports ? { ...items.ports, next: items.ports.used + i, step: W, end: items.ports.size - 1 } : null);
    const replies = await Promise.all(
      this.workers.map((w, i) => this.call(w, { op: 'open', cfg: { ...c, spare: spareOf(i) }, items: per[i] }, totalTimeoutMs)),
    );
    const out = { ok: 0, failed: {}, established: new Histogram(), subscribed: new Histogram(), presenceMaxCount: 0, lastSubscribedUs: 0, portRetries: 0 };
    for (const r of replies) {
      out.ok += r.ok;
      out.portRetries += r.portRetries || 0;
      for (const [k, v] of Object.entries(r.failed)) out.failed[k] = (out.failed[k] || 0) + v;
      out.established.merge(r.established);
      out.subscribed.merge(r.subscribed);
      out.presenceMaxCount = Math.max(out.presenceMaxCount, r.presenceMaxCount);
      out.lastSubscribedUs = Math.max(out.lastSubscribedUs, r.lastSubscribedUs);
    }
    return out;
  }

  async report(histogram = false, perClient = false) {
    const rs = await this.all({ op: 'report', histogram, perClient });
    const sum = { received: 0, lastReceiveUs: 0, latency: new Histogram(), memberAdded: 0, lastMemberAddedUs: 0, alive: 0, unexpectedCloses: 0, closeCodes: {}, drainCloseCodes: {}, lastCloseUs: 0, missing: 0, duplicates: 0, pusherErrors: {}, cpu: [] };
    for (const r of rs) {
      for (const [k, v] of Object.entries(r.drainCloseCodes)) sum.drainCloseCodes[k] = (sum.drainCloseCodes[k] || 0) + v;
      sum.lastCloseUs = Math.max(sum.lastCloseUs, r.lastCloseUs);
      if (r.perClient) {
        sum.missing += r.perClient.missing;
        sum.duplicates += r.perClient.duplicates;
      }
      sum.received += r.received;
      sum.lastReceiveUs = Math.max(sum.lastReceiveUs, r.lastReceiveUs);
      if (r.latency) sum.latency.merge(r.latency);
      sum.memberAdded += r.memberAdded;
      sum.lastMemberAddedUs = Math.max(sum.lastMemberAddedUs, r.lastMemberAddedUs);
      sum.alive += r.alive;
      sum.unexpectedCloses += r.unexpectedCloses;
      for (const [k, v] of Object.entries(r.closeCodes)) sum.closeCodes[k] = (sum.closeCodes[k] || 0) + v;
      for (const [k, v] of Object.entries(r.pusherErrors)) sum.pusherErrors[k] = (sum.pusherErrors[k] || 0) + v;
      sum.cpu.push({ cpu_ms: r3(r.cpuMs), cpu_pct: r3((100 * r.cpuMs) / Math.max(1, r.wallMs)) });
    }
    return sum;
  }

  async stop() {
    try {
      await this.all({ op: 'close' }, 5000);
    } catch (e) {
      /* killed below */
    }
    for (const w of this.workers) {
      if (w.exitCode === null) w.kill('SIGKILL');
    }
  }
}

// ------------------------------------------------------------------ helpers

/** The kernel's ephemeral port range, [lo, hi]. */
function localPortRange() {
  try {
    const [lo, hi] = fs.readFileSync('/proc/sys/net/ipv4/ip_local_port_range', 'latin1').trim().split(/\s+/).map(Number);
    if (lo > 0 && hi >= lo) return [lo, hi];
  } catch (e) {
    /* not Linux */
  }
  return [32768, 60999];
}

/**
 * Connection items {channels, userId, localAddress?, localPort?}. With
 * --source-ips N > 1 client i uses 127.0.0.(2 + i % N) (not 127.0.0.1, whose
 * ports every other local client takes from the same range) and an explicit local
 * port from the ephemeral range (a window starting at a random offset; the
 * worker binds it, which is far cheaper for the kernel than a bind to port 0,
 * see lib/worker.js); `items.ports` describes the window so that the workers
 * can take spare ports from its unassigned part.
 */
function connectionItems(n, channelOf, opts) {
  const ips = Math.max(1, Math.min(250, Math.floor(opts['source-ips'])));
  const items = [];
  let ports = null;
  if (ips > 1) {
    const [lo, hi] = localPortRange();
    const size = hi - lo + 1;
    const used = Math.ceil(n / ips);
    if (used > size) {
      throw new Error(`${n} connections over ${ips} source addresses need ${used} local ports per address, more than the ${size} of ${lo}-${hi}: raise --source-ips`);
    }
    ports = { lo, size, used, offset: Math.floor(Math.random() * size) };
  }
  for (let i = 0; i < n; i++) {
    const c = channelOf(i);
    const it = { channels: Array.isArray(c) ? c : [c], userId: `u${i}` };
    if (ports) {
      it.localAddress = `127.0.0.${2 + (i % ips)}`;
      it.localPort = ports.lo + ((ports.offset + Math.floor(i / ips)) % ports.size);
    }
    items.push(it);
  }
  items.ports = ports;
  return items;
}

function wsCfg(opts) {
  return {
    url: wsUrl(opts.host, opts.port, opts['app-key']),
    key: opts['app-key'],
    secret: opts['app-secret'],
    concurrency: opts.concurrency,
    connectTimeoutMs: opts['connect-timeout'] * 1000,
  };
}

/** Server usage between two snapshots: CPU ms, RSS change, CPU %. */
function serverDelta(a, b) {
  if (!a || !b) return null;
  const wallMs = (b.t - a.t) / 1000;
  return {
    cpu_ms: r3(b.cpuMs - a.cpuMs),
    cpu_pct: r3((100 * (b.cpuMs - a.cpuMs)) / Math.max(1, wallMs)),
    rss_before_kb: a.rssKb,
    rss_after_kb: b.rssKb,
  };
}

function pad(seq, t, size) {
  const head = `${seq}:${Math.round(t)}:`;
  return head + 'x'.repeat(Math.max(0, size - head.length));
}

/**
 * Open-loop publisher: triggers at `rate`/s for `durationS`, at most one
 * request per connection in flight. Bounded by count (rate x duration) and by
 * time (duration + request timeout). `channelsFor(seq)` picks the channels.
 */
async function publish(opts, rate, durationS, channelsFor) {
  const app = { id: opts['app-id'], key: opts['app-key'], secret: opts['app-secret'] };
  const hostHeader = `${opts.host}:${opts.port}`;
  const conns = [];
  for (let i = 0; i < Math.max(1, opts.inflight); i++) conns.push(new HttpConnection(opts.host, opts.port));
  const idle = conns.slice();
  const total = Math.max(1, Math.round(rate * durationS));
  const lat = new Histogram();
  const statuses = {};
  let sent = 0;
  let ok = 0;
  let okChannels = 0;
  let failed = 0;
  let inflight = 0;
  const start = nowUs();
  const stopAt = start + durationS * 1e6;
  const firstError = [];

  await new Promise((resolve) => {
    const sendDue = () => {
      const now = nowUs();
      const due = Math.min(total, Math.floor(((now - start) / 1e6) * rate) + 1);
      while (sent < due && idle.length && now < stopAt) {
        const conn = idle.pop();
        const seq = sent++;
        const channels = channelsFor(seq);
        const t = nowUs();
        const event = { name: 'bench-event', data: pad(seq, t, opts.payload) };
        if (channels.length === 1) event.channel = channels[0];
        else event.channels = channels;
        inflight++;
        conn.request(signedTrigger(app, hostHeader, event)).then((r) => {
          inflight--;
          lat.add(nowUs() - t);
          const key = r.error ? r.error : String(r.status);
          statuses[key] = (statuses[key] || 0) + 1;
          if (!r.error && r.status >= 200 && r.status < 300) {
            ok++;
            okChannels += channels.length;
          } else {
            failed++;
            if (firstError.length < 3) firstError.push(r.error || `${r.status} ${r.body.toString().slice(0, 200)}`);
          }
          idle.push(conn);
          sendDue();
          if (inflight === 0 && (sent >= total || nowUs() >= stopAt)) finish();
        });
      }
      if (inflight === 0 && (sent >= total || nowUs() >= stopAt)) finish();
    };
    const timer = setInterval(sendDue, 2);
    let done = false;
    const finish = () => {
      if (done) return;
      done = true;
      clearInterval(timer);
      resolve();
    };
    sendDue();
  });
  const elapsedS = (nowUs() - start) / 1e6;
  for (const c of conns) c.close();
  return {
    target_rate: rate,
    sent,
    ok,
    ok_channels: okChannels,
    failed,
    statuses,
    errors_sample: firstError,
    achieved_rate: r3(ok / Math.max(1e-6, elapsedS)),
    elapsed_s: r3(elapsedS),
    tcp_connects: conns.reduce((s, c) => s + c.tcpConnects, 0),
    request_latency_ms: lat.summaryMs(),
    startUs: start,
  };
}

/** Poll the workers until `done(report)` or `limitS` seconds pass. */
async function waitFor(pool, done, limitS, everyMs = 200) {
  const until = nowUs() + limitS * 1e6;
  let rep = await pool.report(false);
  while (!done(rep) && nowUs() < until) {
    await sleep(everyMs);
    rep = await pool.report(false);
  }
  return rep;
}

function loadgenBlock(parentCpuBase, parentWallUs, rep) {
  const wallMs = (nowUs() - parentWallUs) / 1000;
  const parentMs = ownCpuMs(parentCpuBase);
  const procs = [{ role: 'publisher', cpu_ms: r3(parentMs), cpu_pct: r3((100 * parentMs) / Math.max(1, wallMs)) }];
  for (const c of (rep && rep.cpu) || []) procs.push({ role: 'clients', ...c });
  const maxPct = Math.max(...procs.map((p) => p.cpu_pct || 0));
  return { processes: procs, total_cpu_ms: r3(procs.reduce((s, p) => s + (p.cpu_ms || 0), 0)), max_cpu_pct: r3(maxPct), possibly_saturated: maxPct > 75 };
}

// ------------------------------------------------------------------ scenarios

/** One plain or signed GET over a keep-alive connection: {status, json} or {error}. */
async function getJson(conn, raw) {
  const r = await conn.request(raw);
  if (r.error) return { error: r.error };
  let json = null;
  try {
    json = JSON.parse(r.body.toString());
  } catch (e) {
    /* not JSON */
  }
  return { status: r.status, json, text: r.body.toString() };
}

/** Sum of every `name` series (any labels) in a Prometheus text exposition. */
function promSum(text, name) {
  let sum = 0;
  let found = false;
  for (const line of text.split('\n')) {
    if (!line.startsWith(name)) continue;
    const rest = line.slice(name.length);
    if (rest[0] !== '{' && rest[0] !== ' ') continue;
    const v = Number(line.slice(line.lastIndexOf(' ') + 1));
    if (Number.isFinite(v)) {
      sum += v;
      found = true;
    }
  }
  return found ? sum : null;
}

/**
 * While the connections are held: ask the server what it counts and compare
 * with what the tool holds. Retried every 0.5 s until all match or
 * --verify-timeout passes (cluster counts can lag a little); returns every
 * check with what was expected and what was last seen.
 */
async function verifyCounts(opts, want) {
  const app = { id: opts['app-id'], key: opts['app-key'], secret: opts['app-secret'] };
  const hostHeader = `${opts.host}:${opts.port}`;
  const api = new HttpConnection(opts.host, opts.port);
  const metrics = opts['metrics-port'] ? new HttpConnection(opts.host, opts['metrics-port']) : null;
  const t0 = nowUs();
  const until = t0 + opts['verify-timeout'] * 1e6;
  let checks = [];
  let attempts = 0;
  try {
    for (;;) {
      attempts++;
      checks = [];
      if (metrics) {
        const r = await metrics.request(Buffer.from(`GET /metrics HTTP/1.1\r\nHost: ${opts.host}:${opts['metrics-port']}\r\n\r\n`, 'latin1'));
        const got = r.error ? r.error : r.status === 200 ? promSum(r.body.toString(), 'sockudo_connected') : `HTTP ${r.status}`;
        checks.push({ name: 'metrics sockudo_connected (sum of all series)', expected: want.connected, got });
      }
      if (want.allChannel) {
        const path = `/apps/${app.id}/channels/${want.allChannel}`;
        const r = await getJson(api, signedGet(app, hostHeader, path, { info: 'subscription_count' }));
        const got = r.error || (r.json && r.status === 200 ? r.json.subscription_count : `HTTP ${r.status} ${String(r.text).slice(0, 100)}`);
        checks.push({ name: `API ${want.allChannel} subscription_count`, expected: want.connected, got });
      }
      {
        const path = `/apps/${app.id}/channels`;
        const r = await getJson(api, signedGet(app, hostHeader, path, { filter_by_prefix: want.channelPrefix }));
        const got = r.error || (r.json && r.status === 200 ? Object.keys(r.json.channels || {}).length : `HTTP ${r.status} ${String(r.text).slice(0, 100)}`);
        checks.push({ name: `API channels with prefix ${want.channelPrefix}`, expected: want.channels, got });
      }
      for (const c of checks) c.ok = c.got === c.expected;
      if (checks.every((c) => c.ok) || nowUs() >= until || attempts >= 1000) break;
      await sleep(500);
    }
  } finally {
    api.close();
    if (metrics) metrics.close();
  }
  return { ok: checks.every((c) => c.ok), attempts, elapsed_s: r3((nowUs() - t0) / 1e6), checks };
}

/**
 * Per-process view of the server: RSS, PSS and sockets of each process, and
 * how evenly the client connections spread (sockets held now minus those
 * held before connecting, per pid).
 */
function spreadOf(before, now) {
  if (!now) return null;
  const base = new Map(((before && before.processes) || []).map((p) => [p.pid, p.sockets || 0]));
  const conns = now.processes.map((p) => Math.max(0, (p.sockets || 0) - (base.get(p.pid) || 0)));
  return {
    processes: now.processes.map((p, i) => ({ ...p, connections: conns[i] })),
    rss_kb: now.rss_kb,
    pss_kb: now.pss_kb,
    sockets: now.sockets,
    connections_min: Math.min(...conns),
    connections_max: Math.max(...conns),
    connections_each: conns,
  };
}

/** Split `list` into chunks of at most `size`. */
function chunks(list, size) {
  const out = [];
  for (let i = 0; i < list.length; i += size) out.push(list.slice(i, i + size));
  return out;
}

/**
 * One broadcast phase: reset the clients' counters, send one trigger per
 * entry of `batches` (an array of channel lists; a trigger with one channel
 * uses `channel`, more use `channels`), at most 8 requests in flight, each
 * event carrying its send time, then wait (at most --broadcast-timeout) until
 * every held client has received one event. Time to delivery is measured per
 * delivery from its trigger's send time.
 */
async function broadcastPhase(opts, pool, pid, label, batches) {
  const resets = await pool.all({ op: 'reset' });
  const expected = resets.reduce((a, r) => a + r.alive, 0);
  const app = { id: opts['app-id'], key: opts['app-key'], secret: opts['app-secret'] };
  const hostHeader = `${opts.host}:${opts.port}`;
  const conns = [];
  for (let i = 0; i < Math.min(8, batches.length); i++) conns.push(new HttpConnection(opts.host, opts.port, 30000));
  const statuses = {};
  const errorsSample = [];
  let failed = 0;
  const s0 = serverSnapshot(pid);
  const t0 = nowUs();
  let next = 0;
  await Promise.all(
    conns.map(async (conn) => {
      while (next < batches.length) {
        const seq = next++;
        const channels = batches[seq];
        const event = { name: 'bench-event', data: pad(seq, nowUs(), opts.payload) };
        if (channels.length === 1) event.channel = channels[0];
        else event.channels = channels;
        const r = await conn.request(signedTrigger(app, hostHeader, event));
        const key = r.error ? r.error : String(r.status);
        statuses[key] = (statuses[key] || 0) + 1;
        if (r.error || r.status < 200 || r.status >= 300) {
          failed++;
          if (errorsSample.length < 3) errorsSample.push(r.error || `${r.status} ${r.body.toString().slice(0, 200)}`);
        }
      }
    }),
  );
  const sentS = (nowUs() - t0) / 1e6;
  for (const c of conns) c.close();
  await waitFor(pool, (r) => r.received >= expected, failed ? 1 : opts['broadcast-timeout'], 100);
  const rep = await pool.report(true, true);
  const s1 = serverSnapshot(pid);
  const lat = rep.latency.summaryMs();
  const lost = Math.max(0, expected - rep.received);
  const result = {
    channels: batches.reduce((a, b) => a + b.length, 0),
    triggers: batches.length,
    failed_triggers: failed,
    statuses,
    errors_sample: errorsSample,
    triggers_sent_s: r3(sentS),
    expected,
    received: rep.received,
    lost,
    clients_missing: rep.missing,
    duplicates: rep.duplicates,
    latency_ms: lat,
    time_to_last_delivery_ms: rep.lastReceiveUs ? r3((rep.lastReceiveUs - t0) / 1000) : null,
    server_cpu_ms: s0 && s1 ? r3(s1.cpuMs - s0.cpuMs) : null,
    loadgen_cpu_ms: r3(rep.cpu.reduce((a, c) => a + (c.cpu_ms || 0), 0)),
  };
  result.errors = failed + lost + rep.duplicates;
  result.line = `${label}: ${result.channels} channel(s) in ${batches.length} trigger(s), ${rep.received}/${expected} delivered (${lost} lost), time to delivery p50/p99/max ${lat.p50}/${lat.p99}/${lat.max} ms`;
  return result;
}

/**
 * SIGTERM the server, then wait (at most --terminate-timeout) until every
 * client was closed and until the server process (and its workers) exited.
 */
async function terminatePhase(opts, pool, pid) {
  if (!pid) return { errors: 1, line: 'terminate: no server pid', error: 'no server pid' };
  await pool.all({ op: 'expect-close' });
  const tree = processTree(pid);
  const t0 = nowUs();
  const until = t0 + opts['terminate-timeout'] * 1e6;
  try {
    process.kill(pid, 'SIGTERM');
  } catch (e) {
    return { errors: 1, line: `terminate: cannot signal ${pid}: ${e.message}`, error: String(e) };
  }
  let rep = await pool.report();
  let serverExitUs = 0;
  let treeExitUs = 0;
  while (nowUs() < until && (rep.alive > 0 || !treeExitUs)) {
    await sleep(50);
    if (!serverExitUs && processGone(pid)) serverExitUs = nowUs();
    if (!treeExitUs && tree.every(processGone)) treeExitUs = nowUs();
    if (rep.alive > 0) rep = await pool.report();
  }
  rep = await pool.report();
  const codes = rep.drainCloseCodes;
  const not4200 = Object.entries(codes).reduce((a, [k, v]) => a + (k === '4200' ? 0 : v), 0);
  const ms = (us) => (us ? r3((us - t0) / 1000) : null);
  const result = {
    signalled_pid: pid,
    processes: tree.length,
    closed: Object.values(codes).reduce((a, b) => a + b, 0),
    still_open: rep.alive,
    close_codes: codes,
    all_closed_ms: rep.alive === 0 ? ms(rep.lastCloseUs || t0) : null,
    server_exit_ms: ms(serverExitUs),
    all_processes_exit_ms: ms(treeExitUs),
  };
  result.errors = rep.alive + not4200 + (serverExitUs ? 0 : 1) + (treeExitUs ? 0 : 1);
  const codeText = Object.entries(codes).map(([k, v]) => `${k}x${v}`).join(' ') || 'none';
  result.line = `terminate: ${result.closed} closed (codes ${codeText}, ${rep.alive} still open) in ${result.all_closed_ms} ms, server exited after ${result.server_exit_ms} ms, all ${tree.length} processes after ${result.all_processes_exit_ms} ms`;
  return result;
}

async function scenarioConnect(opts, pid) {
  const n = Math.floor(opts.connections);
  const k = Math.floor(opts.channels);
  const bc = opts.broadcast;
  const channelCount = k === 0 ? n : Math.min(k, n);
  let channelOf;
  if (bc) channelOf = (i) => ['bench-all', `bench-conn-${k === 0 ? i : i % k}`];
  else channelOf = k === 0 ? (i) => `bench-conn-${i}` : (i) => (k === 1 ? 'bench-conn' : `bench-conn-${i % k}`);
  const items = connectionItems(n, channelOf, opts);
  const pool = await new WorkerPool(opts.workers).start();
  try {
    await pool.all({ op: 'reset' });
    const cpu0 = process.cpuUsage();
    const wall0 = nowUs();
    const p0 = serverProcesses(pid);
    const s0 = serverSnapshot(pid);
    const sampler = new ServerSampler(pid).start();
    const t0 = nowUs();
    const opened = await pool.open(items, wsCfg(opts), (opts['connect-timeout'] + 5) * 1000 + (n / Math.max(1, opts.concurrency)) * opts['connect-timeout'] * 1000);
    const elapsedS = (nowUs() - t0) / 1e6;
    const s1 = serverSnapshot(pid);
    const holdStart = nowUs();
    let verify = null;
    if (opts.verify) {
      const prefixed = bc || k !== 1 ? channelCount : 0;
      verify = await verifyCounts(opts, { connected: opened.ok, allChannel: bc ? 'bench-all' : null, channelPrefix: 'bench-conn-', channels: prefixed });
    }
    const rest = opts.hold * 1000 - (nowUs() - holdStart) / 1000;
    if (rest > 0) await sleep(rest);
    const rep = await pool.report(false);
    sampler.stop();
    const s2 = serverSnapshot(pid);
    const spread = spreadOf(p0, serverProcesses(pid));
    const failedCount = Object.values(opened.failed).reduce((a, b) => a + b, 0);
    const srv = serverDelta(s0, s1);
    if (srv) {
      srv.rss_held_kb = s2 ? s2.rssKb : null;
      srv.rss_per_connection_kb = opened.ok ? r3(((s2 ? s2.rssKb : s1.rssKb) - s0.rssKb) / opened.ok) : null;
      srv.rss_total_per_connection_kb = opened.ok && s2 ? r3(s2.rssKb / opened.ok) : null;
      srv.pss_held_kb = spread ? spread.pss_kb : null;
      srv.cpu_ms_per_connection = opened.ok ? r3((s1.cpuMs - s0.cpuMs) / opened.ok) : null;
      srv.peak_rss_kb = sampler.peakRssKb;
      srv.peak_cpu_pct = r3(sampler.peakCpuPct);
    }
    const result = {
      connections: {
        requested: n,
        subscribed: opened.ok,
        failed: failedCount,
        failures: opened.failed,
        local_port_retries: opened.portRetries,
        elapsed_s: r3(elapsedS),
        rate_per_s: r3(opened.ok / Math.max(1e-6, elapsedS)),
        established_ms: opened.established.summaryMs(),
        subscribed_ms: opened.subscribed.summaryMs(),
        alive_after_hold: rep.alive,
        unexpected_closes: rep.unexpectedCloses,
        close_codes: rep.closeCodes,
      },
      server: srv,
      server_processes: spread,
      verify,
    };
    result.errors = failedCount + (opened.ok - rep.alive) + (verify && !verify.ok ? 1 : 0);
    const lines = [];
    if (bc) {
      const all = await broadcastPhase(opts, pool, pid, 'broadcast bench-all', [['bench-all']]);
      const names = [];
      for (let j = 0; j < channelCount; j++) names.push(`bench-conn-${j}`);
      const per = await broadcastPhase(opts, pool, pid, `broadcast ${channelCount} channels`, chunks(names, 100));
      result.broadcast = { all, channels: per };
      result.errors += all.errors + per.errors;
      lines.push(all.line, per.line);
    }
    const end = await pool.report(false);
    result.connections.unexpected_closes = end.unexpectedCloses;
    result.connections.close_codes = end.closeCodes;
    result.errors += end.unexpectedCloses - rep.unexpectedCloses;
    if (opts.terminate) {
      result.terminate = await terminatePhase(opts, pool, pid);
      result.errors += result.terminate.errors;
      lines.push(result.terminate.line);
    }
    result.loadgen = loadgenBlock(cpu0, wall0, await pool.report(false));
    const perConn = srv ? `, server RSS ${r3(srv.rss_per_connection_kb)} kB/conn, CPU ${srv.cpu_ms_per_connection} ms/conn` : '';
    const spreadText = spread && spread.processes.length > 1 ? `, spread over ${spread.processes.length} processes ${spread.connections_min}..${spread.connections_max}` : '';
    const verifyText = verify ? `, server counts ${verify.ok ? 'match' : 'DO NOT MATCH'}` : '';
    result.line = [`connect: ${opened.ok}/${n} subscribed in ${r3(elapsedS)} s (${result.connections.rate_per_s}/s, ${failedCount} failed), ${rep.alive} alive after ${opts.hold} s, subscribed p50/p99 ${result.connections.subscribed_ms.p50}/${result.connections.subscribed_ms.p99} ms${perConn}${spreadText}${verifyText}`, ...lines].join('\n  ');
    return result;
  } finally {
    await pool.stop();
  }
}

/** Shared body of fanout and channels: subscribe, publish, drain, measure. */
async function runDelivery(opts, pid, items, rate, channelsFor, label) {
  const pool = await new WorkerPool(opts.workers).start();
  try {
    const opened = await pool.open(items, wsCfg(opts), (opts['connect-timeout'] + 5) * 1000 + (items.length / Math.max(1, opts.concurrency)) * opts['connect-timeout'] * 1000);
    const openFailed = Object.values(opened.failed).reduce((a, b) => a + b, 0);
    await sleep(opts['settle-time'] * 1000);
    await pool.all({ op: 'reset' });
    const cpu0 = process.cpuUsage();
    const wall0 = nowUs();
    const s0 = serverSnapshot(pid);
    const sampler = new ServerSampler(pid).start();
    const pub = await publish(opts, rate, opts.duration, channelsFor);
    // deliveries expected: each accepted trigger reaches every subscribed client of its channels
    const expected = label === 'fanout' ? pub.ok * opened.ok : pub.ok_channels;
    await waitFor(pool, (r) => r.received >= expected, opts.drain);
    const rep = await pool.report(true);
    sampler.stop();
    const s1 = serverSnapshot(pid);
    const srv = serverDelta(s0, s1);
    const spanS = Math.max(1e-6, ((rep.lastReceiveUs || nowUs()) - pub.startUs) / 1e6);
    if (srv) {
      srv.cpu_ms_per_1k_deliveries = rep.received ? r3((srv.cpu_ms * 1000) / rep.received) : null;
      srv.cpu_pct = r3((100 * srv.cpu_ms) / (spanS * 1000));
      srv.peak_cpu_pct = r3(sampler.peakCpuPct);
      srv.peak_rss_kb = sampler.peakRssKb;
    }
    const lost = Math.max(0, expected - rep.received);
    const extra = Math.max(0, rep.received - expected);
    const lat = rep.latency.summaryMs();
    const result = {
      connections: { requested: items.length, subscribed: opened.ok, failed: openFailed, failures: opened.failed, alive_at_end: rep.alive, unexpected_closes: rep.unexpectedCloses },
      publish: { ...pub, startUs: undefined },
      delivery: {
        expected,
        received: rep.received,
        lost,
        duplicates_or_unexpected: extra,
        loss_pct: r3((100 * lost) / Math.max(1, expected)),
        per_s: r3(rep.received / spanS),
        latency_ms: lat,
        pusher_errors: rep.pusherErrors,
      },
      server: srv,
      loadgen: loadgenBlock(cpu0, wall0, rep),
    };
    result.errors = openFailed + pub.failed + lost + extra + rep.unexpectedCloses;
    const cpu = srv ? `, server CPU ${srv.cpu_pct}% (${srv.cpu_ms_per_1k_deliveries} ms/1k deliveries)` : '';
    const who = label === 'fanout' ? `${opened.ok} subscribers on 1 channel` : `${opened.ok} clients on their own channels, batch ${opts.batch}`;
    result.line = `${label}: ${who}, ${pub.achieved_rate}/${rate} triggers/s (${pub.failed} failed), ${rep.received}/${expected} delivered (${result.delivery.loss_pct}% loss) at ${result.delivery.per_s}/s, latency p50/p95/p99/max ${lat.p50}/${lat.p95}/${lat.p99}/${lat.max} ms${cpu}`;
    return result;
  } finally {
    await pool.stop();
  }
}

function scenarioFanout(opts, pid) {
  const n = Math.floor(opts.subscribers);
  const items = connectionItems(n, () => 'bench-fanout', opts);
  return runDelivery(opts, pid, items, opts.rate || 100, () => ['bench-fanout'], 'fanout');
}

function scenarioChannels(opts, pid) {
  const n = Math.max(1, Math.floor(opts.clients));
  const batch = Math.max(1, Math.min(100, Math.floor(opts.batch), n));
  const items = connectionItems(n, (i) => `bench-ch-${i}`, opts);
  const channelsFor = (seq) => {
    const out = [];
    for (let j = 0; j < batch; j++) out.push(`bench-ch-${(seq * batch + j) % n}`);
    return out;
  };
  return runDelivery({ ...opts, batch }, pid, items, opts.rate || 500, channelsFor, 'channels');
}

async function scenarioHttp(opts, pid) {
  const n = Math.max(1, Math.floor(opts['http-connections']));
  const pool = await new WorkerPool(Math.min(opts.workers, n)).start();
  try {
    const base = {
      host: opts.host,
      port: opts.port,
      hostHeader: `${opts.host}:${opts.port}`,
      app: { id: opts['app-id'], key: opts['app-key'], secret: opts['app-secret'] },
      channel: 'bench-http-nobody',
      durationMs: opts.duration * 1000,
      payload: opts.payload,
    };
    const k = pool.workers.length;
    const cpu0 = process.cpuUsage();
    const wall0 = nowUs();
    const s0 = serverSnapshot(pid);
    const sampler = new ServerSampler(pid).start();
    const replies = await Promise.all(
      pool.workers.map((w, i) => {
        const connections = Math.floor(n / k) + (i < n % k ? 1 : 0);
        // count bound: far above what one connection can do on loopback
        const cfg = { ...base, connections, maxRequests: Math.round(opts.duration * 20000 * connections) };
        return pool.call(w, { op: 'http', cfg }, (opts.duration + 30) * 1000);
      }),
    );
    sampler.stop();
    const s1 = serverSnapshot(pid);
    const lat = new Histogram();
    let ok = 0;
    let failed = 0;
    let tcp = 0;
    let elapsedMs = 0;
    const statuses = {};
    const errorsSample = [];
    const procs = [];
    for (const r of replies) {
      if (r.error) throw new Error(r.error);
      ok += r.ok;
      failed += r.failed;
      tcp += r.tcpConnects;
      elapsedMs = Math.max(elapsedMs, r.elapsedMs);
      lat.merge(r.latency);
      for (const [key, v] of Object.entries(r.statuses)) statuses[key] = (statuses[key] || 0) + v;
      errorsSample.push(...r.errorsSample.slice(0, 3 - errorsSample.length));
      procs.push({ cpu_ms: r3(r.cpuMs), cpu_pct: r3((100 * r.cpuMs) / Math.max(1, r.elapsedMs)) });
    }
    const srv = serverDelta(s0, s1);
    if (srv) {
      srv.cpu_ms_per_1k_requests = ok ? r3((srv.cpu_ms * 1000) / ok) : null;
      srv.peak_cpu_pct = r3(sampler.peakCpuPct);
      srv.peak_rss_kb = sampler.peakRssKb;
    }
    const l = lat.summaryMs();
    const result = {
      http: {
        connections: n,
        requests: ok + failed,
        ok,
        failed,
        statuses,
        errors_sample: errorsSample,
        per_s: r3(ok / Math.max(1e-6, elapsedMs / 1000)),
        elapsed_s: r3(elapsedMs / 1000),
        tcp_connects: tcp,
        latency_ms: l,
      },
      server: srv,
      loadgen: loadgenBlock(cpu0, wall0, { cpu: procs }),
    };
    result.errors = failed;
    const cpu = srv ? `, server CPU ${srv.cpu_pct}% (${srv.cpu_ms_per_1k_requests} ms/1k requests)` : '';
    result.line = `http: ${n} keep-alive connections, ${result.http.per_s} triggers/s (${ok} ok, ${failed} failed, ${tcp} TCP connects), latency p50/p99/max ${l.p50}/${l.p99}/${l.max} ms${cpu}`;
    return result;
  } finally {
    await pool.stop();
  }
}

async function scenarioPresence(opts, pid) {
  const n = Math.max(1, Math.floor(opts.members));
  const pool = await new WorkerPool(opts.workers).start();
  try {
    await pool.all({ op: 'reset' });
    const cpu0 = process.cpuUsage();
    const wall0 = nowUs();
    const s0 = serverSnapshot(pid);
    const sampler = new ServerSampler(pid).start();
    const t0 = nowUs();
    const opened = await pool.open(connectionItems(n, () => 'presence-bench', opts), wsCfg(opts), (opts['connect-timeout'] + 5) * 1000 + (n / Math.max(1, opts.concurrency)) * opts['connect-timeout'] * 1000);
    const joinedS = opened.ok ? (opened.lastSubscribedUs - t0) / 1e6 : null;
    // every join is announced to everyone already in: 0 + 1 + ... + (n-1)
    const expectedAdded = (opened.ok * (opened.ok - 1)) / 2;
    const rep = await waitFor(pool, (r) => r.memberAdded >= expectedAdded, opts['connect-timeout']);
    sampler.stop();
    const s1 = serverSnapshot(pid);
    const lastEventUs = Math.max(rep.lastMemberAddedUs, opened.lastSubscribedUs);
    const convergedS = opened.ok && lastEventUs > t0 ? (lastEventUs - t0) / 1e6 : null;
    const srv = serverDelta(s0, s1);
    if (srv) {
      srv.peak_rss_kb = sampler.peakRssKb;
      srv.peak_cpu_pct = r3(sampler.peakCpuPct);
    }
    const failedCount = Object.values(opened.failed).reduce((a, b) => a + b, 0);
    const result = {
      presence: {
        members: n,
        joined: opened.ok,
        failed: failedCount,
        failures: opened.failed,
        time_to_all_joined_s: r3(joinedS),
        join_ms: opened.subscribed.summaryMs(),
        max_member_count_seen: opened.presenceMaxCount,
        member_added_expected: expectedAdded,
        member_added_received: rep.memberAdded,
        time_to_converged_s: r3(convergedS),
        unexpected_closes: rep.unexpectedCloses,
      },
      server: srv,
      loadgen: loadgenBlock(cpu0, wall0, rep),
    };
    result.errors = failedCount + Math.abs(expectedAdded - rep.memberAdded) + (opened.presenceMaxCount === opened.ok ? 0 : 1) + rep.unexpectedCloses;
    const cpu = srv ? `, server CPU ${srv.cpu_ms} ms, RSS +${srv.rss_after_kb - srv.rss_before_kb} kB` : '';
    result.line = `presence: ${opened.ok}/${n} joined in ${r3(joinedS)} s (${failedCount} failed), join p50/p99 ${result.presence.join_ms.p50}/${result.presence.join_ms.p99} ms, member_added ${rep.memberAdded}/${expectedAdded}, converged in ${r3(convergedS)} s${cpu}`;
    return result;
  } finally {
    await pool.stop();
  }
}

const RUNNERS = { connect: scenarioConnect, fanout: scenarioFanout, channels: scenarioChannels, http: scenarioHttp, presence: scenarioPresence };

// ------------------------------------------------------------------ main

/** Soft limit of open files of this process (inherited by the workers), or 0. */
function openFilesLimit() {
  try {
    const m = /Max open files\s+(\d+)/.exec(fs.readFileSync('/proc/self/limits', 'latin1'));
    return m ? Number(m[1]) : 0;
  } catch (e) {
    return 0;
  }
}

async function main() {
  let opts;
  try {
    opts = parseArgs(process.argv.slice(2));
    assertLoopback(opts.host);
  } catch (e) {
    console.error(`bench: ${e.message}`);
    process.exit(2);
  }
  const names = opts.scenario === 'all' ? SCENARIOS : opts.scenario.split(',').map((s) => s.trim()).filter(Boolean);
  for (const s of names) {
    if (!RUNNERS[s]) {
      console.error(`bench: unknown scenario ${s} (choose from ${SCENARIOS.join(', ')}, all)`);
      process.exit(2);
    }
  }
  const killer = setTimeout(() => {
    console.error(`bench: --max-time ${opts['max-time']} s reached, aborting`);
    process.exit(3);
  }, opts['max-time'] * 1000);
  killer.unref();

  const clientsOf = { connect: opts.connections, fanout: opts.subscribers, channels: opts.clients, http: opts['http-connections'], presence: opts.members };
  const perWorker = Math.ceil(Math.max(...names.map((s) => clientsOf[s])) / Math.max(1, opts.workers));
  const fds = openFilesLimit();
  if (fds && perWorker + 64 > fds) {
    console.error(`bench: ${perWorker} connections per worker but 'ulimit -n' is ${fds}: raise it (ulimit -n ${perWorker + 1024}) or add --workers`);
  }
  const pid = opts['server-pid'] || findPidByPort(opts.port);
  if (!pid) console.error(`bench: no server pid given or found on port ${opts.port}: server CPU/RSS not measured`);
  const doc = {
    tool: 'sockudo-tw bench/run.js',
    server: { name: opts['server-name'], pid, host: opts.host, port: opts.port },
    machine: { cpus: os.cpus().length, cpu_model: (os.cpus()[0] || {}).model, mem_mb: Math.round(os.totalmem() / 1048576), kernel: os.release(), node: process.version, loadavg_start: os.loadavg() },
    started_at: new Date().toISOString(),
    options: opts,
    results: {},
  };
  let errors = 0;
  for (const s of names) {
    let res;
    try {
      res = await RUNNERS[s](opts, pid);
    } catch (e) {
      res = { errors: 1, exception: String(e && e.stack ? e.stack : e), line: `${s}: FAILED ${e && e.message}` };
    }
    errors += res.errors;
    doc.results[s] = res;
    const sat = res.loadgen && res.loadgen.possibly_saturated ? ' [load generator near CPU saturation]' : '';
    const lg = res.loadgen ? `, load generator CPU ${res.loadgen.total_cpu_ms} ms (max ${res.loadgen.max_cpu_pct}% of a core)` : '';
    console.log(`[${opts['server-name']}] ${res.line}${lg}${sat}${res.errors ? ` ERRORS=${res.errors}` : ''}`);
    if (names.length > 1) await sleep(1000);
  }
  doc.machine.loadavg_end = os.loadavg();
  doc.finished_at = new Date().toISOString();
  doc.errors = errors;
  const out = opts.out || path.join(__dirname, 'results', `${doc.started_at.replace(/[:.]/g, '')}-${opts['server-name']}.json`);
  fs.mkdirSync(path.dirname(path.resolve(out)), { recursive: true });
  fs.writeFileSync(out, JSON.stringify(doc, null, 2) + '\n');
  if (opts.json) console.log(JSON.stringify(doc, null, 2));
  console.error(`bench: results written to ${out}`);
  process.exit(errors ? 1 : 0);
}

main().catch((e) => {
  console.error(`bench: ${e && e.stack ? e.stack : e}`);
  process.exit(2);
});
