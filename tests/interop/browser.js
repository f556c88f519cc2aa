'use strict';
/*
 * Drives Debian's headless Chromium (/usr/bin/chromium, never a downloaded
 * browser) through playwright-core for tests/test_browser.py, with the same
 * conventions as driver.js: one JSON command per line on stdin, one JSON
 * observation per line on stdout. Pages under test load pusher-js's browser
 * build and report what it does by calling window.sockudoReport(object).
 * The official Node `pusher` SDK is here too, to publish through the HTTP
 * API (over TLS when NODE_EXTRA_CA_CERTS names the test's root CA).
 *
 * Usage: node browser.js max_lifetime_seconds [extra Chromium flag ...]
 *
 * Commands (field `op`):
 *   open        {page, url}        a new tab named `page`, navigated to url
 *   eval        {id, page, expression}   evaluate in the tab; the answer is
 *                                  an eval_result with the same id
 *   screenshot  {page, path}
 *   sdk_init    {options, sdk?}    new Pusher(options) of the Node SDK
 *   sdk_call    {id, method, args, sdk?}
 *   exit        {}
 *
 * Observations (field `type`, plus `t`, ms since start): ready (Chromium's
 * version), opened, report (what a page reported, with `page`), console
 * (`level`, `text`), pageerror, request (`method`, `url`), response
 * (`method`, `url`, `status`, `headers`), requestfailed (`url`, `failure`),
 * eval_result, screenshot, sdk_ready, sdk_result, command_error, fatal.
 */

const fs = require('fs');
const os = require('os');
const path = require('path');
const readline = require('readline');
const { chromium } = require('playwright-core');
const PusherServer = require('pusher');

const CHROMIUM = '/usr/bin/chromium';
const FLAGS = [
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
];

const started = Date.now();
const pages = new Map();
const sdks = new Map();
let context = null;
let userDataDir = null;

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

process.on('uncaughtException', (err) => {
  emit({ type: 'fatal', error: String(err && err.stack ? err.stack : err) });
});
process.on('unhandledRejection', (err) => {
  emit({ type: 'fatal', error: String(err && err.stack ? err.stack : err) });
});

function pageNamed(name) {
  const page = pages.get(name);
  if (page === undefined) {
    throw new Error('no page named ' + name);
  }
  return page;
}

async function openPage(cmd) {
  const name = cmd.page;
  const page = await context.newPage();
  pages.set(name, page);
  page.on('console', (message) => {
    emit({ type: 'console', page: name, level: message.type(), text: message.text() });
  });
  page.on('pageerror', (error) => {
    emit({ type: 'pageerror', page: name, error: String(error && error.stack ? error.stack : error) });
  });
  page.on('request', (request) => {
    emit({ type: 'request', page: name, method: request.method(), url: request.url() });
  });
  page.on('response', async (response) => {
    let headers = {};
    try {
      headers = await response.allHeaders();
    } catch (e) {
      // The page may be gone; the status is still worth reporting.
    }
    emit({
      type: 'response',
      page: name,
      method: response.request().method(),
      url: response.url(),
      status: response.status(),
      headers,
    });
  });
  page.on('requestfailed', (request) => {
    const failure = request.failure();
    emit({ type: 'requestfailed', page: name, url: request.url(), failure: failure ? failure.errorText : null });
  });
  await page.goto(cmd.url);
  emit({ type: 'opened', page: name, url: cmd.url });
}

async function evaluate(cmd) {
  try {
    const value = await pageNamed(cmd.page).evaluate(cmd.expression);
    emit({ type: 'eval_result', id: cmd.id, ok: true, value: plain(value) });
  } catch (err) {
    emit({ type: 'eval_result', id: cmd.id, ok: false, error: String(err) });
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

let closing = null;

// Close Chromium and remove its profile, once, whatever asked for it.
function shutdown(code) {
  if (closing === null) {
    closing = (async () => {
      try {
        if (context !== null) {
          await context.close();
        }
      } catch (e) {
        // Exiting anyway.
      }
      if (userDataDir !== null) {
        fs.rmSync(userDataDir, { recursive: true, force: true });
      }
      process.exit(code);
    })();
  }
  return closing;
}

async function handle(cmd) {
  switch (cmd.op) {
    case 'open':
      await openPage(cmd);
      break;
    case 'eval':
      await evaluate(cmd);
      break;
    case 'screenshot':
      await pageNamed(cmd.page).screenshot({ path: cmd.path, fullPage: true });
      emit({ type: 'screenshot', page: cmd.page, path: cmd.path });
      break;
    case 'sdk_init':
      sdks.set(cmd.sdk || 'default', new PusherServer(cmd.options));
      emit({ type: 'sdk_ready', sdk: cmd.sdk || 'default' });
      break;
    case 'sdk_call':
      await sdkCall(cmd);
      break;
    case 'exit':
      await shutdown(0);
      break;
    default:
      throw new Error('unknown op ' + cmd.op);
  }
}

async function main() {
  const lifetime = Number(process.argv[2] || 60);
  setTimeout(() => {
    emit({ type: 'fatal', error: 'browser driver lifetime of ' + lifetime + ' s exceeded' });
    shutdown(3);
  }, lifetime * 1000).unref();
  process.on('SIGTERM', () => shutdown(143));

  userDataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'sockudo-chromium-'));
  context = await chromium.launchPersistentContext(userDataDir, {
    executablePath: CHROMIUM,
    headless: true,
    args: FLAGS.concat(process.argv.slice(3)),
  });
  // Pages report with window.sockudoReport(object).
  await context.exposeBinding('sockudoReport', (source, report) => {
    let name = null;
    for (const [pageName, page] of pages) {
      if (page === source.page) {
        name = pageName;
      }
    }
    emit({ type: 'report', page: name, report: plain(report) });
  });
  for (const page of context.pages()) {
    await page.close();
  }

  const input = readline.createInterface({ input: process.stdin });
  // Commands run one after another, in the order they came.
  let queue = Promise.resolve();
  input.on('line', (line) => {
    if (line.trim() === '') {
      return;
    }
    queue = queue.then(async () => {
      let cmd = null;
      try {
        cmd = JSON.parse(line);
        await handle(cmd);
      } catch (err) {
        emit({ type: 'command_error', command: cmd, error: String(err && err.stack ? err.stack : err) });
      }
    });
  });
  input.on('close', () => shutdown(0));
  emit({ type: 'ready', chromium: context.browser() ? context.browser().version() : null });
}

main().catch((err) => {
  emit({ type: 'fatal', error: String(err && err.stack ? err.stack : err) });
  shutdown(2);
});
