'use strict';
/*
 * Drives Laravel Echo (with pusher-js underneath) and the official Node
 * `pusher` server SDK for tests/test_interop_echo.py, the way
 * tests/interop/driver.js drives bare pusher-js: one JSON command per line on
 * stdin, one JSON observation per line on stdout, pusher-js's log on stderr.
 * No test logic here: commands become Echo calls, Echo callbacks become
 * observations.
 *
 * Usage: node echo_driver.js [max_lifetime_seconds]
 *
 * Echo authorises channels and signs users in as a Laravel app's front end
 * does: pusher-js POSTs to the app's /broadcasting/auth and
 * /broadcasting/user-auth (served by the test), with Echo's X-CSRF-TOKEN and
 * Authorization: Bearer headers.
 *
 * Commands (field `op`):
 *   connect       {client, broadcaster: "pusher"|"reverb", key, host, port,
 *                  auth_url, csrf_token?, bearer_token?, options?}
 *                 Echo's documented settings for that broadcaster, plus
 *                 authEndpoint/userAuthentication pointing at auth_url.
 *   listen        {client, kind: "public"|"private"|"presence", channel, event}
 *                 echo.channel/private/join(channel).listen(event, ...); the
 *                 first use of a channel also registers subscribed/error (and
 *                 here/joining/leaving for presence)
 *   listen_whisper {client, kind, channel, event}   .listenForWhisper(event)
 *   whisper       {client, kind, channel, event, data}   .whisper(event, data)
 *   leave         {client, channel}        echo.leave(channel) (every prefix)
 *   leave_channel {client, name}           echo.leaveChannel(full name)
 *   signin        {client}                 echo.connector.signin()
 *   ping          {client}                 pusher:ping, answered by pusher:pong
 *   disconnect    {client}
 *   sdk_init      {options, sdk?}          new Pusher(options) (Node SDK)
 *   sdk_call      {id, method, args, sdk?} call a method of that instance
 *   exit          {}
 *
 * Observations (field `type`, plus `t`, ms since start): ready, state,
 * connected (socket_id as Echo reports it), conn_error, message (every frame
 * pusher-js received), subscribed, subscription_error, event, whisper,
 * here, joining, leaving, user_event, whisper_sent, left, ping_sent,
 * sdk_ready, sdk_result, command_error, fatal.
 */

const fs = require('fs');
const path = require('path');
const readline = require('readline');
const Pusher = require('pusher-js');
const PusherServer = require('pusher');
// Set once laravel-echo is loaded: its CommonJS build does not load under
// Node (the package says "type": "module"), so its ES module is imported.
let Echo = null;

const clients = new Map();
const sdks = new Map();
const started = Date.now();

function emit(obj) {
  process.stdout.write(JSON.stringify(Object.assign({ t: Date.now() - started }, obj)) + '\n');
}

function plain(value) {
  if (value === undefined) {
    return null;
  }
  try {
    return JSON.parse(JSON.stringify(value));
  } catch (e) {
    return String(value);
  }
}

Pusher.logToConsole = false;
Pusher.log = (message) => {
  process.stderr.write('[pusher-js ' + (Date.now() - started) + ' ms] ' + message + '\n');
};

process.on('uncaughtException', (err) => {
  emit({ type: 'fatal', error: String(err && err.stack ? err.stack : err) });
});
process.on('unhandledRejection', (err) => {
  emit({ type: 'fatal', error: String(err && err.stack ? err.stack : err) });
});

// Echo's settings as Laravel's documentation gives them for each
// broadcaster (resources/js/echo.js), pointed at the test's daemon.
function echoOptions(cmd) {
  const common = {
    key: cmd.key,
    wsHost: cmd.host,
    wsPort: cmd.port,
    forceTLS: false,
    enabledTransports: ['ws', 'wss'],
    authEndpoint: cmd.auth_url + '/broadcasting/auth',
    // Fresh objects: Echo writes the CSRF and bearer headers into these, and
    // its defaults are one object shared by every Echo instance of the
    // process (harmless in a page with one Echo, wrong with several here).
    auth: { headers: {} },
    userAuthentication: { endpoint: cmd.auth_url + '/broadcasting/user-auth', headers: {} },
    csrfToken: cmd.csrf_token || null,
    bearerToken: cmd.bearer_token || null,
    Pusher,
    withoutInterceptors: true,
  };
  if (cmd.broadcaster === 'reverb') {
    return Object.assign(common, { broadcaster: 'reverb', wssPort: cmd.port }, cmd.options || {});
  }
  if (cmd.broadcaster === 'pusher') {
    return Object.assign(common, { broadcaster: 'pusher', cluster: 'mt1' }, cmd.options || {});
  }
  throw new Error('unknown broadcaster ' + cmd.broadcaster);
}

function connect(cmd) {
  const name = cmd.client;
  const echo = new Echo(echoOptions(cmd));
  const pusher = echo.connector.pusher;
  clients.set(name, { echo, channels: new Map() });
  pusher.connection.bind('state_change', (states) => {
    emit({ type: 'state', client: name, previous: states.previous, current: states.current });
  });
  pusher.connection.bind('connected', () => {
    emit({ type: 'connected', client: name, socket_id: echo.socketId(), status: echo.connectionStatus() });
  });
  pusher.connection.bind('error', (err) => {
    emit({ type: 'conn_error', client: name, error: plain(err) });
  });
  pusher.connection.bind('message', (message) => {
    emit({
      type: 'message',
      client: name,
      event: message.event,
      channel: message.channel === undefined ? null : message.channel,
      data: plain(message.data),
    });
  });
  pusher.user.bind_global((event, data) => {
    emit({ type: 'user_event', client: name, event, data: plain(data) });
  });
}

function clientNamed(name) {
  const client = clients.get(name);
  if (client === undefined) {
    throw new Error('no client named ' + name);
  }
  return client;
}

const PREFIXES = { public: '', private: 'private-', presence: 'presence-' };

// The Echo channel object for (kind, channel), registering its lifecycle
// callbacks on first use, as an application does once per channel.
function echoChannel(name, kind, channel) {
  const client = clientNamed(name);
  const full = PREFIXES[kind] + channel;
  const known = client.channels.get(full);
  if (known !== undefined) {
    return { full, channel: known };
  }
  let made;
  if (kind === 'public') {
    made = client.echo.channel(channel);
  } else if (kind === 'private') {
    made = client.echo.private(channel);
  } else if (kind === 'presence') {
    made = client.echo.join(channel);
    made
      .here((members) => emit({ type: 'here', client: name, channel: full, members: plain(members) }))
      .joining((member) => emit({ type: 'joining', client: name, channel: full, member: plain(member) }))
      .leaving((member) => emit({ type: 'leaving', client: name, channel: full, member: plain(member) }));
  } else {
    throw new Error('unknown channel kind ' + kind);
  }
  made
    .subscribed(() => emit({ type: 'subscribed', client: name, channel: full }))
    .error((err) => emit({ type: 'subscription_error', client: name, channel: full, error: plain(err) }));
  client.channels.set(full, made);
  return { full, channel: made };
}

async function sdkCall(cmd) {
  const id = cmd.id;
  try {
    const sdk = sdks.get(cmd.sdk || 'default');
    if (sdk === undefined) {
      throw new Error('no SDK instance named ' + (cmd.sdk || 'default'));
    }
    let result = sdk[cmd.method].apply(sdk, cmd.args || []);
    if (result && typeof result.then === 'function') {
      result = await result;
    }
    if (result && typeof result.text === 'function' && result.status !== undefined) {
      const text = await result.text();
      let body = text;
      try {
        body = JSON.parse(text);
      } catch (e) {
        // Keep the raw text: the test asserts on it.
      }
      emit({ type: 'sdk_result', id, ok: true, status: result.status, body });
    } else {
      emit({ type: 'sdk_result', id, ok: true, status: null, body: plain(result) });
    }
  } catch (err) {
    emit({
      type: 'sdk_result',
      id,
      ok: false,
      status: err && err.status !== undefined ? err.status : null,
      body: err && err.body !== undefined ? err.body : null,
      error: String(err && err.message ? err.message : err),
    });
  }
}

function shutdown(code) {
  for (const client of clients.values()) {
    try {
      client.echo.disconnect();
    } catch (e) {
      // Exiting anyway.
    }
  }
  process.exit(code);
}

function handle(cmd) {
  switch (cmd.op) {
    case 'connect':
      connect(cmd);
      break;
    case 'listen': {
      const { full, channel } = echoChannel(cmd.client, cmd.kind, cmd.channel);
      channel.listen(cmd.event, (data) => {
        emit({ type: 'event', client: cmd.client, channel: full, event: cmd.event, data: plain(data) });
      });
      break;
    }
    case 'listen_whisper': {
      const { full, channel } = echoChannel(cmd.client, cmd.kind, cmd.channel);
      channel.listenForWhisper(cmd.event, (data) => {
        emit({ type: 'whisper', client: cmd.client, channel: full, event: cmd.event, data: plain(data) });
      });
      break;
    }
    case 'whisper': {
      const { full, channel } = echoChannel(cmd.client, cmd.kind, cmd.channel);
      channel.whisper(cmd.event, cmd.data);
      emit({ type: 'whisper_sent', client: cmd.client, channel: full, event: cmd.event });
      break;
    }
    case 'leave': {
      const client = clientNamed(cmd.client);
      client.echo.leave(cmd.channel);
      for (const prefix of Object.values(PREFIXES)) {
        client.channels.delete(prefix + cmd.channel);
      }
      emit({ type: 'left', client: cmd.client, channel: cmd.channel });
      break;
    }
    case 'leave_channel': {
      const client = clientNamed(cmd.client);
      client.echo.leaveChannel(cmd.name);
      client.channels.delete(cmd.name);
      emit({ type: 'left', client: cmd.client, channel: cmd.name });
      break;
    }
    case 'signin':
      clientNamed(cmd.client).echo.connector.signin();
      break;
    case 'ping': {
      const ok = clientNamed(cmd.client).echo.connector.pusher.send_event('pusher:ping', {});
      emit({ type: 'ping_sent', client: cmd.client, ok });
      break;
    }
    case 'disconnect':
      clientNamed(cmd.client).echo.disconnect();
      break;
    case 'sdk_init':
      sdks.set(cmd.sdk || 'default', new PusherServer(cmd.options));
      emit({ type: 'sdk_ready', sdk: cmd.sdk || 'default' });
      break;
    case 'sdk_call':
      sdkCall(cmd);
      break;
    case 'exit':
      shutdown(0);
      break;
    default:
      throw new Error('unknown op ' + cmd.op);
  }
}

const lifetime = Number(process.argv[2] || 60);
setTimeout(() => {
  emit({ type: 'fatal', error: 'driver lifetime of ' + lifetime + ' s exceeded' });
  shutdown(3);
}, lifetime * 1000).unref();

async function main() {
  Echo = (await import('laravel-echo')).default;
  const input = readline.createInterface({ input: process.stdin });
  input.on('line', (line) => {
    if (line.trim() === '') {
      return;
    }
    let cmd = null;
    try {
      cmd = JSON.parse(line);
      handle(cmd);
    } catch (err) {
      emit({ type: 'command_error', command: cmd, error: String(err && err.stack ? err.stack : err) });
    }
  });
  input.on('close', () => shutdown(0));
  // laravel-echo's package.json is not among its exports: read it by path.
  const echoPackage = path.join(path.dirname(require.resolve('laravel-echo')), '..', 'package.json');
  emit({ type: 'ready', pusher_js: Pusher.VERSION, echo: JSON.parse(fs.readFileSync(echoPackage, 'utf8')).version });
}

main();
