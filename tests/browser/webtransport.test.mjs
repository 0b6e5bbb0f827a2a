// WebTransport end to end in Chromium and Firefox ESR: events published over HTTP, telemetry
// from the device simulator's datagrams, and the page publishing over its own session.

import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';

import {
  launchChromium,
  launchFirefox,
  publish,
  runSimulator,
  startServer,
  waitForState,
} from './harness.mjs';

const browsers = {};

before(async () => {
  browsers.chromium = await launchChromium();
  browsers.firefox = await launchFirefox();
});

after(async () => {
  await browsers.chromium?.close();
  await browsers.firefox?.close();
});

function eventsOn(state, topic) {
  return state.events.filter((e) => e.topic === topic);
}

/** Asserts that `events` carry `payloads` in this order, with increasing sequence numbers. */
function assertInOrder(events, payloads) {
  assert.deepEqual(
    events.map((e) => e.payload),
    payloads,
  );
  const seqs = events.map((e) => BigInt(e.cursor.split('-')[1]));
  for (let i = 1; i < seqs.length; i += 1) {
    assert.ok(seqs[i] > seqs[i - 1], `sequence ${seqs[i]} follows ${seqs[i - 1]}`);
  }
}

/**
 * Runs the common scenario: the page connects over WebTransport, receives HTTP-published events
 * in order and simulator telemetry, and publishes an event and telemetry itself.
 */
async function webTransportRoundTrip(browser, origin, server, { minDatagrams }) {
  const page = await browser.open(`${origin}/`);
  try {
    const ready = await waitForState(page, (s) => s.ready && s.state === 'open', 'the page to connect');
    assert.equal(ready.transport, 'webtransport', `skipped: ${JSON.stringify(ready.reasons)}`);
    assert.deepEqual(ready.reasons, []);

    const simulator = await runSimulator(server, {
      sensors: 3,
      rate: 10,
      duration: 6,
      extra: ['--seed', '7', '--spikes-per-minute', '120'],
    });
    const payloads = ['first', 'second', 'third', 'fourth', 'fifth'];
    for (const payload of payloads) await publish(server, 'events/test', payload, { event: 'note' });

    const received = await waitForState(
      page,
      (s) => eventsOn(s, 'events/test').length >= payloads.length && (s.telemetryVia.datagram ?? 0) >= minDatagrams,
      `${payloads.length} events and ${minDatagrams} telemetry datagrams`,
    );
    assertInOrder(eventsOn(received, 'events/test'), payloads);
    assert.ok(eventsOn(received, 'events/test').every((e) => e.name === 'note' && e.transport === 'webtransport'));
    const topics = new Set(received.telemetry.map((t) => t.topic));
    assert.ok(topics.has('sensors/sensor-01/temperature'), `telemetry topics: ${[...topics]}`);
    assert.ok(received.telemetry.every((t) => Number.isFinite(Number(t.payload))), 'numeric readings');

    const finished = await simulator.finished;
    assert.equal(finished.code, 0, `simulator output:\n${finished.output}`);
    assert.match(finished.output, /simulation finished/);

    // The seed and spike rate make the simulator raise at least one alarm within 6 s.
    const alarmed = await waitForState(
      page,
      (s) => s.events.some((e) => e.topic.startsWith('alarms/') && e.name === 'alarm'),
      'an alarm event from the simulator',
    );
    const alarm = JSON.parse(alarmed.events.find((e) => e.name === 'alarm').payload);
    assert.equal(alarm.state, 'raised');
    assert.ok(alarm.value > alarm.threshold, `alarm value ${alarm.value} above ${alarm.threshold}`);

    // The page publishes an event on its control stream and telemetry as datagrams, first with
    // the topic inline and then by alias once the server acknowledged it.
    await page.evaluate(async () => {
      const client = window.hubcastTest.client;
      await client.publish('events/page', 'from the page', { event: 'page' });
      for (let i = 0; i < 30; i += 1) {
        await client.publishTelemetry('devices/page/level', String(i));
        await new Promise((resolve) => setTimeout(resolve, 30));
      }
    });
    const echoed = await waitForState(
      page,
      (s) => eventsOn(s, 'events/page').length === 1 && s.telemetry.some((t) => t.topic === 'devices/page/level'),
      "the page's own event and telemetry",
    );
    assert.equal(eventsOn(echoed, 'events/page')[0].payload, 'from the page');
    const aliasReady = await page.evaluate(
      () => window.hubcastTest.client.connection.aliases.get('devices/page/level')?.ready === true,
    );
    assert.ok(aliasReady, 'the server acknowledged the datagram alias');

    // Telemetry larger than a datagram goes out as a publish command and comes back as a frame
    // on an event stream. A binary event payload comes back as bytes.
    await page.evaluate(() => window.hubcastTest.client.publishTelemetry('devices/page/blob', 'x'.repeat(3000)));
    await publish(server, 'events/binary', Buffer.from([0xff, 0x00, 0x01]));
    const large = await waitForState(
      page,
      (s) => s.telemetry.some((t) => t.topic === 'devices/page/blob') && eventsOn(s, 'events/binary').length === 1,
      'large telemetry and a binary event',
    );
    const blob = large.telemetry.find((t) => t.topic === 'devices/page/blob');
    assert.equal(blob.via, 'stream');
    assert.equal(blob.payload.length, 3000);
    assert.equal(eventsOn(large, 'events/binary')[0].payload, '[3 bytes]');
    assert.deepEqual(large.errors, []);
    return large;
  } finally {
    await page.close();
  }
}

test('chromium over WebTransport from localhost', async () => {
  const server = await startServer();
  try {
    const state = await webTransportRoundTrip(browsers.chromium, `http://localhost:${server.httpPort}`, server, {
      minDatagrams: 50,
    });
    // Chromium on loopback delivers datagrams reliably enough that the page's readings arrive.
    const own = state.telemetry.filter((t) => t.topic === 'devices/page/level');
    assert.ok(own.length >= 20, `${own.length} of 30 page datagrams echoed`);
  } finally {
    await server.stop();
  }
});

test('chromium over WebTransport from 127.0.0.1', async () => {
  const server = await startServer();
  try {
    await webTransportRoundTrip(browsers.chromium, server.origin, server, { minDatagrams: 50 });
  } finally {
    await server.stop();
  }
});

test('firefox over WebTransport from 127.0.0.1', async () => {
  const server = await startServer();
  try {
    // Firefox drops some datagrams on loopback, so only arrival is checked, not the count.
    await webTransportRoundTrip(browsers.firefox, server.origin, server, { minDatagrams: 5 });
  } finally {
    await server.stop();
  }
});
