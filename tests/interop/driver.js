'use strict';
/*
 * Drives real pusher-js clients and the official Node `pusher` server SDK for
 * the interop tests (tests/test_interop_*.py).
 *
 * Input: one JSON command per line on stdin. Output: one JSON observation per
 * line on stdout (pusher-js's own log goes to stderr). The Python side decides
 * what to do and asserts on what this script saw, so this script holds no test
 * logic: it only translates commands into library calls and library callbacks
 * into observations.
 *
 * Usage: node driver.js [max_lifetime_seconds]
 *
 * Commands (field `op`):
 *   connect       {client, key, host, port, auth: "sdk"|"ask", presence?, user?, options?}
 *   subscribe     {client, channel, bind?: [event names bound individually]}
 *   unsubscribe   {client, channel}
 *   client_event  {client, channel, event, data}
 *   signin        {client}
 *   members       {client, channel}
 *   disconnect    {client}
 *   ping          {client}               send pusher:ping on the client's connection
 *                                        (the server's pusher:pong comes back as a
 *                                        `message`): a barrier, see Interop.barrier
 *   auth_response {req, auth?, error?}   answer to an auth_request (auth "ask")
 *   sdk_init      {options, sdk?}        new Pusher(options) of the Node SDK, kept
 *                                        under the name `sdk` (default "default")
 *   sdk_call      {id, method, args, sdk?}  call a method of that SDK instance
 *   exit          {}
 *
 * Observations (field `type`, plus `t`, ms since start): ready, state,
 * connected, transport_closed, conn_error, message
 * (every frame pusher-js received, as it parsed it), event (channel
 * bind_global), bound (an individually bound event, with metadata),
 * user_event, watchlist_event, members, client_event_sent, ping_sent, auth,
 * auth_request, sdk_ready, sdk_result, command_error, fatal.
 */

const readline = require('readline');
const Pusher = require('pusher-js');
const PusherServer = require('pusher');

const clients = new Map();
const pendingAuth = new Map();
let authSeq = 0;
const sdks = new Map();

const started = Date.now();

function emit(obj) {
  // `t`: milliseconds since the driver started, to read timings in failures.
  process.stdout.write(JSON.stringify(Object.assign({ t: Date.now() - started }, obj)) + '\n');
}

function errorText(err) {
  if (err === undefined || err === null) {
    return null;
  }
  if (typeof err === 'string') {
    return err;
  }
  try {
    return JSON.parse(JSON.stringify(err));
  } catch (e) {
    return String(err);
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

function membersSnapshot(channel) {
  const members = [];
  channel.members.each((member) => members.push({ id: member.id, info: member.info }));
  members.sort((a, b) => (a.id < b.id ? -1 : a.id > b.id ? 1 : 0));
  return { me: channel.members.me, count: channel.members.count, members };
}

function askAuth(client, kind, fields, callback) {
  authSeq += 1;
  const req = authSeq;
  pendingAuth.set(req, callback);
  emit(Object.assign({ type: 'auth_request', client, req, kind }, fields));
}

function channelAuthorizer(name, cmd) {
  return (params, callback) => {
    const sdk = sdks.get('default');
    const socketId = params.socketId;
    const channelName = params.channelName;
    if (cmd.auth === 'ask') {
      askAuth(name, 'channel', { socket_id: socketId, channel: channelName }, callback);
      return;
    }
    try {
      let result;
      if (channelName.startsWith('presence-')) {
        result = sdk.authorizeChannel(socketId, channelName, cmd.presence);
      } else {
        result = sdk.authorizeChannel(socketId, channelName);
      }
      emit({ type: 'auth', client: name, kind: 'channel', channel: channelName, socket_id: socketId });
      callback(null, result);
    } catch (err) {
      emit({ type: 'auth', client: name, kind: 'channel', channel: channelName, error: String(err) });
      callback(err, null);
    }
  };
}

function userAuthenticator(name, cmd) {
  return (params, callback) => {
    const sdk = sdks.get('default');
    const socketId = params.socketId;
    if (cmd.auth === 'ask') {
      askAuth(name, 'user', { socket_id: socketId }, callback);
      return;
    }
    try {
      const result = sdk.authenticateUser(socketId, cmd.user);
      emit({ type: 'auth', client: name, kind: 'user', socket_id: socketId });
      callback(null, result);
    } catch (err) {
      emit({ type: 'auth', client: name, kind: 'user', error: String(err) });
      callback(err, null);
    }
  };
}

function connect(cmd) {
  const name = cmd.client;
  if (cmd.auth !== 'ask' && !sdks.has('default')) {
    throw new Error('auth "sdk" needs sdk_init first');
  }
  const options = Object.assign(
    {
      cluster: 'interop',
      wsHost: cmd.host,
      wsPort: cmd.port,
      forceTLS: false,
      enabledTransports: ['ws'],
      enableStats: false,
      channelAuthorization: { customHandler: channelAuthorizer(name, cmd) },
      userAuthentication: { customHandler: userAuthenticator(name, cmd) },
    },
    cmd.options || {},
  );
  const pusher = new Pusher(cmd.key, options);
  const client = { pusher, channels: new Map() };
  clients.set(name, client);
  pusher.connection.bind('state_change', (states) => {
    emit({ type: 'state', client: name, previous: states.previous, current: states.current });
  });
  pusher.connection.bind('connected', () => {
    emit({ type: 'connected', client: name, socket_id: pusher.connection.socket_id });
    // The WebSocket close as the transport saw it: code, reason and whether
    // the closing handshake completed (pusher-js counts unclean early
    // closes against the transport and may stop using it for a while).
    const connection = pusher.connection.connection;
    if (connection && connection.transport) {
      connection.transport.bind('closed', (close) => {
        emit({
          type: 'transport_closed',
          client: name,
          code: close ? close.code : null,
          reason: close ? close.reason : null,
          was_clean: close && close.wasClean !== undefined ? close.wasClean : null,
        });
      });
    }
  });
  pusher.connection.bind('error', (err) => {
    emit({ type: 'conn_error', client: name, error: errorText(err) });
  });
  pusher.connection.bind('message', (message) => {
    emit({
      type: 'message',
      client: name,
      event: message.event,
      channel: message.channel === undefined ? null : message.channel,
      data: message.data === undefined ? null : message.data,
      user_id: message.user_id === undefined ? null : message.user_id,
    });
  });
  pusher.user.bind_global((event, data) => {
    emit({ type: 'user_event', client: name, event, data: data === undefined ? null : data });
  });
  pusher.user.bind('pusher:signin_error', (data) => {
    emit({ type: 'user_event', client: name, event: 'pusher:signin_error', data: errorText(data) });
  });
  pusher.user.watchlist.bind_global((event, data) => {
    emit({ type: 'watchlist_event', client: name, event, data: data === undefined ? null : data });
  });
}

function clientNamed(name) {
  const client = clients.get(name);
  if (client === undefined) {
    throw new Error('no client named ' + name);
  }
  return client;
}

function subscribe(cmd) {
  const name = cmd.client;
  const client = clientNamed(name);
  const channel = client.pusher.subscribe(cmd.channel);
  client.channels.set(cmd.channel, channel);
  channel.bind_global((event, data) => {
    emit({
      type: 'event',
      client: name,
      channel: cmd.channel,
      event,
      data: data === undefined ? null : errorText(data),
    });
    if (cmd.channel.startsWith('presence-') && event.startsWith('pusher:')) {
      emit(Object.assign({ type: 'members', client: name, channel: cmd.channel, after: event }, membersSnapshot(channel)));
    }
  });
  for (const event of cmd.bind || []) {
    channel.bind(event, (data, metadata) => {
      emit({
        type: 'bound',
        client: name,
        channel: cmd.channel,
        event,
        data: data === undefined ? null : data,
        metadata: metadata === undefined ? null : metadata,
      });
    });
  }
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
      emit({ type: 'sdk_result', id, ok: true, status: null, body: result === undefined ? null : result });
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
      client.pusher.disconnect();
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
    case 'subscribe':
      subscribe(cmd);
      break;
    case 'unsubscribe':
      clientNamed(cmd.client).pusher.unsubscribe(cmd.channel);
      break;
    case 'client_event': {
      const channel = clientNamed(cmd.client).channels.get(cmd.channel);
      const ok = channel.trigger(cmd.event, cmd.data);
      emit({ type: 'client_event_sent', client: cmd.client, channel: cmd.channel, event: cmd.event, ok });
      break;
    }
    case 'signin':
      clientNamed(cmd.client).pusher.signin();
      break;
    case 'members': {
      const channel = clientNamed(cmd.client).channels.get(cmd.channel);
      emit(Object.assign({ type: 'members', client: cmd.client, channel: cmd.channel, after: null }, membersSnapshot(channel)));
      break;
    }
    case 'disconnect':
      clientNamed(cmd.client).pusher.disconnect();
      break;
    case 'ping': {
      const ok = clientNamed(cmd.client).pusher.send_event('pusher:ping', {});
      emit({ type: 'ping_sent', client: cmd.client, ok });
      break;
    }
    case 'auth_response': {
      const callback = pendingAuth.get(cmd.req);
      pendingAuth.delete(cmd.req);
      if (cmd.error) {
        callback(new Error(cmd.error), null);
      } else {
        callback(null, cmd.auth);
      }
      break;
    }
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
emit({ type: 'ready', pusher_js: Pusher.VERSION });
