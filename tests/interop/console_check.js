'use strict';
/*
 * End-to-end check of the live debug console in headless Chromium, for
 * tests/test_console_browser.py.
 *
 * Usage: node console_check.js CONFIG_JSON
 *   CONFIG_JSON: {consoleUrl, username, password, wsHost, wsPort, appId,
 *                 appKey, appSecret, screenshot}
 *
 * Steps (each prints one JSON line {step, ok, ...} on stdout; the last line
 * is {step: "done", ok}):
 *   refused    the page without credentials answers 401
 *   login      the page with credentials shows the feed as live
 *   api        an event triggered through the HTTP API (Node `pusher` SDK)
 *              appears in the tail
 *   form       an event sent from the page's trigger form reaches a
 *              pusher-js client subscribed to the channel, and the tail
 *   counts     the live counts show the client's connection and channel
 *   screenshot the page, saved to the given path
 */

const { chromium } = require('playwright-core');
const Pusher = require('pusher-js');
const PusherServer = require('pusher');

const cfg = JSON.parse(process.argv[2]);
const TIMEOUT = 15000;

function report(step, ok, extra) {
  process.stdout.write(JSON.stringify(Object.assign({ step: step, ok: ok }, extra || {})) + '\n');
}

function withTimeout(promise, what) {
  return Promise.race([
    promise,
    new Promise((_, reject) => setTimeout(() => reject(new Error('timed out: ' + what)), TIMEOUT)),
  ]);
}

async function main() {
  const browser = await chromium.launch({
    executablePath: '/usr/bin/chromium',
    headless: true,
    args: [
      '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync',
    ],
  });
  let client = null;
  try {
    // 1. No credentials: refused.
    const anonymous = await browser.newContext();
    const refused = await anonymous.request.get(cfg.consoleUrl);
    report('refused', refused.status() === 401, { status: refused.status() });
    await anonymous.close();

    // 2. Log in (HTTP Basic, as the browser's login prompt would send it).
    const context = await browser.newContext({
      httpCredentials: { username: cfg.username, password: cfg.password },
      viewport: { width: 1280, height: 800 },
    });
    const page = await context.newPage();
    const pageErrors = [];
    page.on('pageerror', (e) => pageErrors.push(String(e)));
    const response = await page.goto(cfg.consoleUrl + '?app=' + encodeURIComponent(cfg.appId));
    await page.waitForSelector('#status.live', { timeout: TIMEOUT });
    report('login', response.status() === 200, { status: response.status() });

    // A pusher-js client on the channel the form will publish to; its
    // connection and subscription show up in the tail too.
    client = new Pusher(cfg.appKey, {
      wsHost: cfg.wsHost, wsPort: cfg.wsPort, forceTLS: false, enabledTransports: ['ws'],
      cluster: 'mt1', disableStats: true,
    });
    const channel = client.subscribe('console-demo');
    await withTimeout(new Promise((resolve) => channel.bind('pusher:subscription_succeeded', resolve)),
      'pusher-js subscription');
    await page.waitForSelector('#tail tr.k-subscribed', { timeout: TIMEOUT });

    // 3. An event through the HTTP API appears in the tail.
    const sdk = new PusherServer({
      appId: cfg.appId, key: cfg.appKey, secret: cfg.appSecret,
      host: cfg.wsHost, port: String(cfg.wsPort), useTLS: false,
    });
    await sdk.trigger('console-demo', 'from-http-api', { hello: 'api' });
    const apiRow = page.locator('#tail tr.k-api', { hasText: 'from-http-api' });
    await apiRow.first().waitFor({ timeout: TIMEOUT });
    report('api', true, { row: (await apiRow.first().innerText()).replace(/\s+/g, ' ') });

    // 4. An event from the page's form reaches the pusher-js client.
    const received = new Promise((resolve) => channel.bind('from-console-form', resolve));
    await page.fill('#t-channel', 'console-demo');
    await page.fill('#t-event', 'from-console-form');
    await page.fill('#t-data', '{"hello":"form"}');
    await page.click('#t-send');
    const data = await withTimeout(received, 'pusher-js receiving the form event');
    await page.locator('#tail tr.k-api', { hasText: 'from-console-form' }).first()
      .waitFor({ timeout: TIMEOUT });
    const result = await page.textContent('#t-result');
    report('form', JSON.stringify(data) === '{"hello":"form"}', { data: data, result: result });

    // 5. The live counts show the pusher-js client (polled every 2 s).
    await page.waitForFunction(
      () => document.getElementById('conn-count').textContent === '1' &&
        document.getElementById('chan-count').textContent === '1',
      null, { timeout: TIMEOUT });
    report('counts', true);

    // 6. The page as an operator sees it.
    await page.screenshot({ path: cfg.screenshot, fullPage: true });
    report('screenshot', true, { path: cfg.screenshot, pageErrors: pageErrors });
    report('done', pageErrors.length === 0, { pageErrors: pageErrors });
  } finally {
    if (client) client.disconnect();
    await browser.close();
  }
}

main().catch((e) => {
  report('done', false, { error: String(e && e.stack ? e.stack : e) });
  process.exit(1);
});
