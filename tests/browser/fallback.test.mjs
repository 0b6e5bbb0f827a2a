// Transport fallback: WebSocket, SSE and long polling when the stronger transports are
// excluded, and the reasons the client reports for skipping WebTransport. Chromium runs every
// case and Firefox ESR the three fallback transports.

import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';

import { launchChromium, launchFirefox, publish, runSimulator, startServer, waitForState } from './harness.mjs';

const SAFARI_UA =
  'Mozilla/5.0 (Macintosh; Intel Mac OS X 14_5) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.5 Safari/605.1.15';

let chromium;
let firefox;

before(async () => {
  chromium = await launchChromium();
  firefox = await launchFirefox();
});

after(async () => {
  await chromium?.close();
  await firefox?.close();
});

function eventsOn(state, topic) {
  return state.events.filter((e) => e.topic === topic);
}

/**
 * Opens the page with `query`, checks the transport and skip reasons, then checks that
 * HTTP-published events arrive in order, simulator telemetry arrives, and the page can publish.
 */
async function fallbackRoundTrip(query, expected, { userAgent, prepare, browser = chromium } = {}) {
  const server = await startServer();
  const page = await browser.open(`${server.origin}/${query}`, { userAgent, prepare });
  try {
    const ready = await waitForState(page, (s) => s.ready && s.state === 'open', 'the page to connect');
    assert.equal(ready.transport, expected.transport, `skipped: ${JSON.stringify(ready.reasons)}`);
    assert.deepEqual(
      ready.reasons.map((r) => [r.transport, r.code]),
      expected.reasons,
    );

    const simulator = await runSimulator(server, { sensors: 2, rate: 10, duration: 4 });
    const payloads = ['one', 'two', 'three', 'four'];
    for (const payload of payloads) await publish(server, 'events/fallback', payload, { event: 'step' });
    const received = await waitForState(
      page,
      (s) => eventsOn(s, 'events/fallback').length >= payloads.length && s.telemetryCount >= 3,
      `${payloads.length} events and telemetry over ${expected.transport}`,
    );
    const events = eventsOn(received, 'events/fallback');
    assert.deepEqual(
      events.map((e) => e.payload),
      payloads,
    );
    assert.ok(events.every((e) => e.transport === expected.transport));
    assert.ok(received.telemetry.some((t) => t.topic.startsWith('sensors/')), 'simulator telemetry arrived');
    assert.ok(received.telemetry.every((t) => t.transport === expected.transport));
    await simulator.finished;

    // Telemetry is sent every 100 ms until it is seen: long polling delivers only telemetry
    // that arrives while a poll is waiting, so a single reading can fall between two polls.
    await page.evaluate(async () => {
      const client = window.hubcastTest.client;
      await client.publish('events/page', 'from the page', { event: 'page' });
      window.telemetryTimer = setInterval(() => {
        client.publishTelemetry('devices/page/level', '42').catch(() => {});
      }, 100);
    });
    const echoed = await waitForState(
      page,
      (s) => eventsOn(s, 'events/page').length === 1 && s.telemetry.some((t) => t.topic === 'devices/page/level'),
      "the page's own event and telemetry",
    );
    await page.evaluate(() => clearInterval(window.telemetryTimer));
    assert.equal(eventsOn(echoed, 'events/page')[0].payload, 'from the page');
    assert.deepEqual(echoed.errors, []);
  } finally {
    await page.close();
    await server.stop();
  }
}

test('websocket when WebTransport is excluded', async () => {
  await fallbackRoundTrip('?exclude=webtransport', {
    transport: 'websocket',
    reasons: [['webtransport', 'excluded']],
  });
});

test('sse when WebTransport and WebSocket are excluded', async () => {
  await fallbackRoundTrip('?exclude=webtransport,websocket', {
    transport: 'sse',
    reasons: [
      ['webtransport', 'excluded'],
      ['websocket', 'excluded'],
    ],
  });
});

test('long polling when only polling is left', async () => {
  await fallbackRoundTrip('?exclude=webtransport,websocket,sse', {
    transport: 'polling',
    reasons: [
      ['webtransport', 'excluded'],
      ['websocket', 'excluded'],
      ['sse', 'excluded'],
    ],
  });
});

test('forced transport skips the stronger ones', async () => {
  await fallbackRoundTrip('?transport=sse', {
    transport: 'sse',
    reasons: [
      ['webtransport', 'excluded'],
      ['websocket', 'excluded'],
    ],
  });
});

test('webtransport timeout falls back to websocket', async () => {
  // One millisecond cannot fit the certificate fetch and the QUIC handshake.
  await fallbackRoundTrip('?wtTimeout=1', {
    transport: 'websocket',
    reasons: [['webtransport', 'timed-out']],
  });
});

test('safari is routed to websocket', async () => {
  await fallbackRoundTrip(
    '',
    { transport: 'websocket', reasons: [['webtransport', 'safari']] },
    { userAgent: SAFARI_UA },
  );
});

test('webtransport handshake failure falls back to websocket', async () => {
  // A certificate hash that does not match makes the QUIC handshake fail, as after the server
  // replaced its certificate.
  const prepare = async (page) => {
    await page.route('**/v1/cert-hash', async (route) => {
      const response = await route.fetch();
      const info = await response.json();
      await route.fulfill({ response, json: { ...info, generated: true, hex: '00'.repeat(32) } });
    });
  };
  await fallbackRoundTrip(
    '',
    { transport: 'websocket', reasons: [['webtransport', 'handshake-failed']] },
    { prepare },
  );
});

const FIREFOX_CASES = [
  ['websocket', 'webtransport', [['webtransport', 'excluded']]],
  ['sse', 'webtransport,websocket', [['webtransport', 'excluded'], ['websocket', 'excluded']]],
  ['polling', 'webtransport,websocket,sse', [['webtransport', 'excluded'], ['websocket', 'excluded'], ['sse', 'excluded']]],
];

for (const [transport, exclude, reasons] of FIREFOX_CASES) {
  test(`firefox falls back to ${transport}`, async () => {
    await fallbackRoundTrip(`?exclude=${exclude}`, { transport, reasons }, { browser: firefox });
  });
}
