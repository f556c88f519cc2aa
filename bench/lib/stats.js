'use strict';
// Measurement pieces: a monotonic clock shared by all local processes, a
// mergeable log histogram, and /proc readers for the server's CPU and memory.

const fs = require('fs');

/**
 * Microseconds of CLOCK_MONOTONIC. process.hrtime reads the same clock in
 * every process on Linux, so a publisher timestamp can be compared with a
 * receive time taken in a worker process.
 */
function nowUs() {
  const t = process.hrtime();
  return t[0] * 1e6 + t[1] / 1e3;
}

function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

// Log histogram: 64 buckets per power of two (about 1.1 % resolution),
// values in microseconds from 1 us to 2^31 us (~36 min, clamped above).
const PER_OCTAVE = 64;
const NB = 31 * PER_OCTAVE;

class Histogram {
  constructor() {
    this.counts = new Uint32Array(NB);
    this.n = 0;
    this.sum = 0;
    this.max = 0;
  }

  add(us) {
    const v = us < 1 ? 1 : us;
    let i = Math.floor(Math.log2(v) * PER_OCTAVE);
    if (i >= NB) i = NB - 1;
    this.counts[i]++;
    this.n++;
    this.sum += v;
    if (v > this.max) this.max = v;
  }

  /** Sparse form for IPC between processes. */
  toWire() {
    const c = [];
    for (let i = 0; i < NB; i++) if (this.counts[i]) c.push(i, this.counts[i]);
    return { n: this.n, sum: this.sum, max: this.max, c };
  }

  merge(w) {
    if (!w || !w.n) return this;
    for (let k = 0; k < w.c.length; k += 2) this.counts[w.c[k]] += w.c[k + 1];
    this.n += w.n;
    this.sum += w.sum;
    if (w.max > this.max) this.max = w.max;
    return this;
  }

  percentile(p) {
    if (!this.n) return null;
    const want = Math.max(1, Math.ceil((this.n * p) / 100));
    let seen = 0;
    for (let i = 0; i < NB; i++) {
      seen += this.counts[i];
      if (seen >= want) return Math.min(Math.pow(2, (i + 1) / PER_OCTAVE), this.max);
    }
    return this.max;
  }

  /** Percentiles in milliseconds, 3 decimals. */
  summaryMs() {
    const ms = (us) => (us === null ? null : Math.round(us) / 1000);
    return {
      count: this.n,
      mean: this.n ? ms(this.sum / this.n) : null,
      p50: ms(this.percentile(50)),
      p95: ms(this.percentile(95)),
      p99: ms(this.percentile(99)),
      max: this.n ? ms(this.max) : null,
    };
  }
}

// ------------------------------------------------------------------ /proc

const CLK_TCK = 100; // USER_HZ on every Linux ABI Node supports

function readStat(pid) {
  try {
    const s = fs.readFileSync(`/proc/${pid}/stat`, 'latin1');
    const f = s.slice(s.lastIndexOf(')') + 2).split(' ');
    // after "(comm) ": f[0]=state f[1]=ppid ... f[11]=utime f[12]=stime
    return { ppid: Number(f[1]), cpuTicks: Number(f[11]) + Number(f[12]) };
  } catch (e) {
    return null;
  }
}

function readMemKb(pid) {
  try {
    const s = fs.readFileSync(`/proc/${pid}/status`, 'latin1');
    const rss = /VmRSS:\s+(\d+)/.exec(s);
    const hwm = /VmHWM:\s+(\d+)/.exec(s);
    return { rss: rss ? Number(rss[1]) : 0, hwm: hwm ? Number(hwm[1]) : 0 };
  } catch (e) {
    return null;
  }
}

/** The pid and all its descendants (e.g. `--workers` processes of the server). */
function processTree(root) {
  const children = new Map();
  let names = [];
  try {
    names = fs.readdirSync('/proc');
  } catch (e) {
    return [root];
  }
  for (const n of names) {
    if (n.charCodeAt(0) < 48 || n.charCodeAt(0) > 57) continue;
    const st = readStat(n);
    if (!st) continue;
    if (!children.has(st.ppid)) children.set(st.ppid, []);
    children.get(st.ppid).push(Number(n));
  }
  const out = [];
  const stack = [root];
  while (stack.length && out.length < 4096) {
    const p = stack.pop();
    out.push(p);
    for (const c of children.get(p) || []) stack.push(c);
  }
  return out;
}

/**
 * Snapshot of the server: CPU ms (utime+stime) and RSS kB summed over the
 * process tree, or null when there is no such process.
 */
function serverSnapshot(pid) {
  if (!pid) return null;
  let cpuTicks = 0;
  let rss = 0;
  let hwm = 0;
  let found = false;
  for (const p of processTree(pid)) {
    const st = readStat(p);
    const mem = readMemKb(p);
    if (!st || !mem) continue;
    found = true;
    cpuTicks += st.cpuTicks;
    rss += mem.rss;
    hwm += mem.hwm;
  }
  if (!found) return null;
  return { t: nowUs(), cpuMs: (cpuTicks * 1000) / CLK_TCK, rssKb: rss, hwmKb: hwm };
}

/** Proportional set size kB of a process (smaps_rollup), or null if unreadable. */
function readPssKb(pid) {
  try {
    const m = /^Pss:\s+(\d+)/m.exec(fs.readFileSync(`/proc/${pid}/smaps_rollup`, 'latin1'));
    return m ? Number(m[1]) : null;
  } catch (e) {
    return null;
  }
}

/** Number of socket descriptors a process holds (bounded by its fd table). */
function countSockets(pid) {
  let fds = [];
  try {
    fds = fs.readdirSync(`/proc/${pid}/fd`);
  } catch (e) {
    return null;
  }
  let n = 0;
  for (const fd of fds) {
    try {
      if (fs.readlinkSync(`/proc/${pid}/fd/${fd}`).startsWith('socket:')) n++;
    } catch (e) {
      /* closed meanwhile */
    }
  }
  return n;
}

/**
 * Every process of the server's tree with its RSS, PSS (shared pages split
 * between the processes sharing them, so the sum does not count a forked
 * worker's shared pages twice) and socket descriptors (about one per client
 * connection), plus the sums. Null when there is no such process.
 */
function serverProcesses(pid) {
  if (!pid) return null;
  const procs = [];
  for (const p of processTree(pid)) {
    const mem = readMemKb(p);
    if (!mem) continue;
    procs.push({ pid: p, rss_kb: mem.rss, pss_kb: readPssKb(p), sockets: countSockets(p) });
  }
  if (!procs.length) return null;
  const sum = (k) => procs.reduce((s, q) => s + (q[k] || 0), 0);
  return { processes: procs, rss_kb: sum('rss_kb'), pss_kb: sum('pss_kb'), sockets: sum('sockets') };
}

/** Whether a process has exited (gone, or a zombie nobody has reaped yet). */
function processGone(pid) {
  try {
    const s = fs.readFileSync(`/proc/${pid}/stat`, 'latin1');
    return s.slice(s.lastIndexOf(')') + 2, s.lastIndexOf(')') + 3) === 'Z';
  } catch (e) {
    return true;
  }
}

/** Samples the server every `everyMs` to find its peak CPU % and RSS. */
class ServerSampler {
  constructor(pid, everyMs = 500) {
    this.pid = pid;
    this.everyMs = everyMs;
    this.timer = null;
    this.peakRssKb = 0;
    this.peakCpuPct = 0;
    this.last = null;
  }

  start() {
    this.last = serverSnapshot(this.pid);
    if (!this.last) return this;
    this.peakRssKb = this.last.rssKb;
    this.timer = setInterval(() => this.sample(), this.everyMs);
    this.timer.unref();
    return this;
  }

  sample() {
    const s = serverSnapshot(this.pid);
    if (!s) return;
    if (s.rssKb > this.peakRssKb) this.peakRssKb = s.rssKb;
    if (this.last && s.t > this.last.t) {
      const pct = (100 * (s.cpuMs - this.last.cpuMs)) / ((s.t - this.last.t) / 1000);
      if (pct > this.peakCpuPct) this.peakCpuPct = pct;
    }
    this.last = s;
  }

  stop() {
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
    this.sample();
  }
}

/**
 * Find the pid listening on a TCP port: the socket inode from /proc/net/tcp*,
 * then the process holding it in /proc/<pid>/fd. Returns 0 if not found (for
 * instance when the server belongs to another user).
 */
function findPidByPort(port) {
  const inodes = new Set();
  const hexPort = port.toString(16).toUpperCase().padStart(4, '0');
  for (const file of ['/proc/net/tcp', '/proc/net/tcp6']) {
    let text = '';
    try {
      text = fs.readFileSync(file, 'latin1');
    } catch (e) {
      continue;
    }
    for (const line of text.split('\n').slice(1)) {
      const f = line.trim().split(/\s+/);
      if (f.length < 10) continue;
      if (f[3] !== '0A') continue; // LISTEN
      if (f[1].split(':')[1] === hexPort) inodes.add(f[9]);
    }
  }
  if (!inodes.size) return 0;
  let pids = [];
  try {
    pids = fs.readdirSync('/proc').filter((n) => /^\d+$/.test(n));
  } catch (e) {
    return 0;
  }
  const found = [];
  for (const pid of pids) {
    let fds = [];
    try {
      fds = fs.readdirSync(`/proc/${pid}/fd`);
    } catch (e) {
      continue;
    }
    for (const fd of fds) {
      let link = '';
      try {
        link = fs.readlinkSync(`/proc/${pid}/fd/${fd}`);
      } catch (e) {
        continue;
      }
      const m = /^socket:\[(\d+)\]$/.exec(link);
      if (m && inodes.has(m[1])) {
        found.push(Number(pid));
        break;
      }
    }
  }
  if (!found.length) return 0;
  // With SO_REUSEPORT workers several processes hold the socket: report the
  // oldest ancestor among them, whose tree covers the others.
  const set = new Set(found);
  for (const p of found) {
    const st = readStat(p);
    if (!st || !set.has(st.ppid)) return p;
  }
  return found[0];
}

/** CPU ms of this process since `since` (a process.cpuUsage() value). */
function ownCpuMs(since) {
  const d = process.cpuUsage(since);
  return (d.user + d.system) / 1000;
}

module.exports = {
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
};
