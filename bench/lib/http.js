'use strict';
// A minimal HTTP/1.1 keep-alive client over net.Socket, one request in flight
// per connection. Node's http module costs several times more CPU per request;
// the load tool must not be the bottleneck of an HTTP trigger benchmark.
// Understands Content-Length, chunked bodies and `Connection: close` (soketi
// closes after every response: the client then reconnects and counts it).

const net = require('net');

const HEADER_END = Buffer.from('\r\n\r\n');

class HttpConnection {
  constructor(host, port, timeoutMs = 10000) {
    this.host = host;
    this.port = port;
    this.timeoutMs = timeoutMs;
    this.sock = null;
    this.buf = null;
    this.pending = null;
    this.timer = null;
    this.tcpConnects = 0;
  }

  _connect() {
    const sock = net.connect({ host: this.host, port: this.port });
    sock.setNoDelay(true);
    this.tcpConnects++;
    this.sock = sock;
    this.buf = null;
    sock.on('data', (d) => {
      if (this.sock !== sock) return;
      this.buf = this.buf ? Buffer.concat([this.buf, d]) : d;
      this._parse();
    });
    sock.on('error', (e) => {
      if (this.sock === sock) this._fail(`socket:${e.code || e.message}`);
    });
    sock.on('close', () => {
      if (this.sock === sock) this._fail('closed-before-response');
    });
  }

  /** Send raw request bytes; resolves {status, body} or {error}. Never rejects. */
  request(raw) {
    return new Promise((resolve) => {
      if (this.pending) {
        resolve({ error: 'busy' });
        return;
      }
      if (!this.sock || this.sock.destroyed) this._connect();
      this.pending = resolve;
      this.timer = setTimeout(() => this._fail('timeout'), this.timeoutMs);
      this.sock.write(raw);
    });
  }

  _settle(result) {
    const resolve = this.pending;
    this.pending = null;
    clearTimeout(this.timer);
    if (resolve) resolve(result);
  }

  _fail(error) {
    const sock = this.sock;
    this.sock = null;
    this.buf = null;
    if (sock) sock.destroy();
    this._settle({ error });
  }

  _parse() {
    const b = this.buf;
    const he = b.indexOf(HEADER_END);
    if (he < 0) {
      if (b.length > 65536) this._fail('header-too-large');
      return;
    }
    const head = b.toString('latin1', 0, he);
    const status = Number(head.slice(9, 12));
    const lower = head.toLowerCase();
    const cl = /\r\ncontent-length:\s*(\d+)/.exec(lower);
    const chunked = /\r\ntransfer-encoding:\s*chunked/.test(lower);
    const close = /\r\nconnection:\s*close/.test(lower);
    let body;
    let end;
    if (cl) {
      end = he + 4 + Number(cl[1]);
      if (b.length < end) return;
      body = b.subarray(he + 4, end);
    } else if (chunked) {
      const parts = [];
      let pos = he + 4;
      for (let guard = 0; ; guard++) {
        if (guard > 100000) return this._fail('bad-chunking');
        const le = b.indexOf('\r\n', pos);
        if (le < 0) return;
        const size = parseInt(b.toString('latin1', pos, le), 16);
        if (Number.isNaN(size)) return this._fail('bad-chunking');
        if (size === 0) {
          end = le + 4; // no trailers expected
          if (b.length < end) return;
          break;
        }
        if (b.length < le + 2 + size + 2) return;
        parts.push(b.subarray(le + 2, le + 2 + size));
        pos = le + 2 + size + 2;
      }
      body = Buffer.concat(parts);
    } else {
      // no framing: the body runs to the end of the connection
      return this._fail('unframed-response');
    }
    this.buf = end < b.length ? b.subarray(end) : null;
    if (close) {
      const sock = this.sock;
      this.sock = null;
      this.buf = null;
      sock.destroy();
    }
    this._settle({ status, body });
  }

  close() {
    if (this.sock) this.sock.destroy();
    this.sock = null;
    this._settle({ error: 'closed-by-client' });
  }
}

module.exports = { HttpConnection };
