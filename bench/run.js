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
const { assertLoopback, signedTrigger, wsUrl } = require('./lib/proto');
const { HttpConnection } = require('./lib/http');
const {
  nowUs,
  sleep,
  Histogram,
  serverSnapshot,
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
  'source-ips': [1, 'spread clients over 127.0.0.1..127.0.0.N (more than ~28k connections per port need N>1)'],
  connections: [1000, '[connect] connections'],
  channels: [1, '[connect] spread them over this many channels (0: one channel each)'],
  hold: [3, '[connect] s to hold all connections before counting survivors'],
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
    const replies = await Promise.all(
      this.workers.map((w, i) => this.call(w, { op: 'open', cfg: c, items: per[i] }, totalTimeoutMs)),
    );
    const out = { ok: 0, failed: {}, established: new Histogram(), subscribed: new Histogram(), presenceMaxCount: 0, lastSubscribedUs: 0 };
    for (const r of replies) {
      out.ok += r.ok;
      for (const [k, v] of Object.entries(r.failed)) out.failed[k] = (out.failed[k] || 0) + v;
      out.established.merge(r.established);
      out.subscribed.merge(r.subscribed);
      out.presenceMaxCount = Math.max(out.presenceMaxCount, r.presenceMaxCount);
      out.lastSubscribedUs = Math.max(out.lastSubscribedUs, r.lastSubscribedUs);
    }
    return out;
  }

  async report(histogram = false) {
    const rs = await this.all({ op: 'report', histogram });
    const sum = { received: 0, lastReceiveUs: 0, latency: new Histogram(), memberAdded: 0, lastMemberAddedUs: 0, alive: 0, unexpectedCloses: 0, closeCodes: {}, pusherErrors: {}, cpu: [] };
    for (const r of rs) {
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

function connectionItems(n, channelOf, opts) {
  const ips = Math.max(1, Math.min(250, Math.floor(opts['source-ips'])));
  const items = [];
  for (let i = 0; i < n; i++) {
    const it = { channel: channelOf(i), userId: `u${i}` };
    if (ips > 1) it.localAddress = `127.0.0.${1 + (i % ips)}`;
    items.push(it);
  }
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

async function scenarioConnect(opts, pid) {
  const n = Math.floor(opts.connections);
  const k = Math.floor(opts.channels);
  const channelOf = k === 0 ? (i) => `bench-conn-${i}` : (i) => (k === 1 ? 'bench-conn' : `bench-conn-${i % k}`);
  const pool = await new WorkerPool(opts.workers).start();
  try {
    await pool.all({ op: 'reset' });
    const cpu0 = process.cpuUsage();
    const wall0 = nowUs();
    const s0 = serverSnapshot(pid);
    const sampler = new ServerSampler(pid).start();
    const t0 = nowUs();
    const opened = await pool.open(connectionItems(n, channelOf, opts), wsCfg(opts), (opts['connect-timeout'] + 5) * 1000 + (n / Math.max(1, opts.concurrency)) * opts['connect-timeout'] * 1000);
    const elapsedS = (nowUs() - t0) / 1e6;
    const s1 = serverSnapshot(pid);
    await sleep(opts.hold * 1000);
    const rep = await pool.report(false);
    sampler.stop();
    const s2 = serverSnapshot(pid);
    const failedCount = Object.values(opened.failed).reduce((a, b) => a + b, 0);
    const srv = serverDelta(s0, s1);
    if (srv) {
      srv.rss_held_kb = s2 ? s2.rssKb : null;
      srv.rss_per_connection_kb = opened.ok ? r3(((s2 ? s2.rssKb : s1.rssKb) - s0.rssKb) / opened.ok) : null;
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
        elapsed_s: r3(elapsedS),
        rate_per_s: r3(opened.ok / Math.max(1e-6, elapsedS)),
        established_ms: opened.established.summaryMs(),
        subscribed_ms: opened.subscribed.summaryMs(),
        alive_after_hold: rep.alive,
        unexpected_closes: rep.unexpectedCloses,
        close_codes: rep.closeCodes,
      },
      server: srv,
      loadgen: loadgenBlock(cpu0, wall0, rep),
    };
    result.errors = failedCount + (opened.ok - rep.alive);
    const perConn = srv ? `, server RSS ${r3(srv.rss_per_connection_kb)} kB/conn, CPU ${srv.cpu_ms_per_connection} ms/conn` : '';
    result.line = `connect: ${opened.ok}/${n} subscribed in ${r3(elapsedS)} s (${result.connections.rate_per_s}/s, ${failedCount} failed), ${rep.alive} alive after ${opts.hold} s, subscribed p50/p99 ${result.connections.subscribed_ms.p50}/${result.connections.subscribed_ms.p99} ms${perConn}`;
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
