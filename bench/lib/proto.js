'use strict';
// Pusher protocol pieces the load tool needs: loopback guard, HMAC signatures
// (pusher-protocol.md section 5 for channel auth, section 6.1 for the HTTP API)
// and pre-built request bytes for the signed REST trigger.

const crypto = require('crypto');

/** Throw unless `host` is a loopback address: the tool never loads anything else. */
function assertLoopback(host) {
  const ok =
    host === 'localhost' ||
    host === '::1' ||
    /^127\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})$/.test(host);
  if (!ok) {
    throw new Error(`refusing non-loopback host "${host}": only 127.0.0.0/8, localhost and ::1`);
  }
}

/** Lowercase hex HMAC-SHA256 with the app secret. */
function hmacHex(secret, text) {
  return crypto.createHmac('sha256', secret).update(text).digest('hex');
}

/** `key:hex` token for a presence subscription (section 5.2). */
function presenceAuth(key, secret, socketId, channel, channelData) {
  return `${key}:${hmacHex(secret, `${socketId}:${channel}:${channelData}`)}`;
}

/** `key:hex` token for a private subscription (section 5.1). */
function privateAuth(key, secret, socketId, channel) {
  return `${key}:${hmacHex(secret, `${socketId}:${channel}`)}`;
}

/**
 * Bytes of one signed `POST /apps/{id}/events` request (auth_version 1.0):
 * the string to sign is `POST\n<path>\n<sorted query>` with body_md5 over the
 * exact body bytes sent.
 */
function signedTrigger(app, hostHeader, event) {
  const path = `/apps/${app.id}/events`;
  const body = Buffer.from(JSON.stringify(event));
  const md5 = crypto.createHash('md5').update(body).digest('hex');
  const ts = Math.floor(Date.now() / 1000);
  const query = `auth_key=${app.key}&auth_timestamp=${ts}&auth_version=1.0&body_md5=${md5}`;
  const sig = hmacHex(app.secret, `POST\n${path}\n${query}`);
  const head =
    `POST ${path}?${query}&auth_signature=${sig} HTTP/1.1\r\n` +
    `Host: ${hostHeader}\r\n` +
    'Content-Type: application/json\r\n' +
    `Content-Length: ${body.length}\r\n` +
    'Connection: keep-alive\r\n\r\n';
  return Buffer.concat([Buffer.from(head, 'latin1'), body]);
}

/**
 * Bytes of one signed `GET path?params` request (auth_version 1.0): the
 * string to sign is `GET\n<path>\n<sorted query>`, values not escaped.
 */
function signedGet(app, hostHeader, path, params = {}) {
  const ts = Math.floor(Date.now() / 1000);
  const all = { ...params, auth_key: app.key, auth_timestamp: String(ts), auth_version: '1.0' };
  const keys = Object.keys(all).sort();
  const canonical = keys.map((k) => `${k}=${all[k]}`).join('&');
  const sig = hmacHex(app.secret, `GET\n${path}\n${canonical}`);
  const query = keys.map((k) => `${k}=${encodeURIComponent(all[k])}`).join('&');
  const head =
    `GET ${path}?${query}&auth_signature=${sig} HTTP/1.1\r\n` +
    `Host: ${hostHeader}\r\n` +
    'Connection: keep-alive\r\n\r\n';
  return Buffer.from(head, 'latin1');
}

/** WebSocket URL of an app (protocol 7, what pusher-js sends). */
function wsUrl(host, port, key) {
  const h = host.includes(':') ? `[${host}]` : host;
  return `ws://${h}:${port}/app/${key}?protocol=7&client=sockudo-bench&version=1.0.0`;
}

module.exports = { assertLoopback, hmacHex, presenceAuth, privateAuth, signedGet, signedTrigger, wsUrl };
