// Reconnection, mostly in Chromium: the server stops and a new process starts on the same ports with
// the same certificate directory, so it has a new epoch. The page must reconnect by itself,
// report the resync and keep receiving events.

import assert from 'node:assert/strict';
import path from 'node:path';
import { after, before, test } from 'node:test';

import {
  freePorts,
  launchChromium,
  launchFirefox,
  publish,
  startServer,
  tempDir,
  waitForState,
} from './harness.mjs';

// Short backoff and keep-alive so a test notices the drop and reconnects within seconds.
const FAST = 'reconnectBase=200&reconnectMax=1000&ping=2000';

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

async function restartScenario({ exclude, signal, transport, browser = chromium, whileDown }) {
  const ports = await freePorts();
  const certDir = path.join(tempDir('certs'), 'certs');
  let server = await startServer({ ...ports, certDir });
  const query = exclude ? `?exclude=${exclude}&${FAST}` : `?${FAST}`;
  const page = await browser.open(`http://localhost:${ports.httpPort}/${query}`);
  try {
    const ready = await waitForState(page, (s) => s.ready && s.state === 'open', 'the page to connect');
    assert.equal(ready.transport, transport, `skipped: ${JSON.stringify(ready.reasons)}`);
    const hashBefore = await (await fetch(`${server.origin}/v1/cert-hash`)).json();

    const first = await publish(server, 'events/restart', 'before the restart', { event: 'note' });
    await waitForState(page, (s) => eventsOn(s, 'events/restart').length === 1, 'the first event');

    await server.stop(signal);
    await waitForState(page, (s) => s.state === 'reconnecting', 'the page to notice the drop');
    if (whileDown) await whileDown(page);

    server = await startServer({ ...ports, certDir });
    const hashAfter = await (await fetch(`${server.origin}/v1/cert-hash`)).json();
    assert.equal(hashAfter.hex, hashBefore.hex, 'the restarted server reuses the certificate');

    const back = await waitForState(
      page,
      (s) => s.state === 'open' && s.connections >= 2 && s.resyncs.length >= 1,
      'the page to reconnect and report a resync',
      30000,
    );
    assert.equal(back.resyncs[0].reason, 'epoch');
    assert.equal(back.resyncs.length, 1, 'one resync for one restart');

    const second = await publish(server, 'events/restart', 'after the restart', { event: 'note' });
    assert.notEqual(second.cursor.split('-')[0], first.cursor.split('-')[0], 'the new process has a new epoch');
    const final = await waitForState(
      page,
      (s) => eventsOn(s, 'events/restart').length === 2,
      'the event published after the restart',
    );
    assert.deepEqual(
      eventsOn(final, 'events/restart').map((e) => e.payload),
      ['before the restart', 'after the restart'],
    );
    assert.equal(eventsOn(final, 'events/restart')[1].cursor, second.cursor);
    return final;
  } finally {
    await page.close();
    await server.stop();
  }
}

test('webtransport page resyncs after a graceful restart', async () => {
  const state = await restartScenario({ signal: 'SIGTERM', transport: 'webtransport' });
  // The selection runs again after the drop; on loopback WebTransport is back at once.
  assert.equal(state.transport, 'webtransport', `skipped: ${JSON.stringify(state.reasons)}`);
});

test('webtransport page resyncs after the server is killed', async () => {
  await restartScenario({ signal: 'SIGKILL', transport: 'webtransport' });
});

test('firefox webtransport page resyncs after a restart', async () => {
  const state = await restartScenario({ signal: 'SIGTERM', transport: 'webtransport', browser: firefox });
  assert.equal(state.transport, 'webtransport', `skipped: ${JSON.stringify(state.reasons)}`);
});

test('websocket page resyncs after the server is killed', async () => {
  const state = await restartScenario({ exclude: 'webtransport', signal: 'SIGKILL', transport: 'websocket' });
  assert.equal(state.transport, 'websocket');
});

test('sse page resyncs after a restart', async () => {
  // EventSource reports no cause, so the client probes the server. A server that is down must
  // end the attempt as unreachable, not fall through to polling, which would win the race if
  // the server came back in between.
  const whileDown = async (page) => {
    const failed = await waitForState(
      page,
      (s) => s.state === 'reconnecting' && s.reasons.some((r) => r.transport === 'sse'),
      'a reconnect attempt while the server is down',
    );
    const sse = failed.reasons.find((r) => r.transport === 'sse');
    assert.equal(sse.code, 'unreachable', JSON.stringify(failed.reasons));
    assert.ok(!failed.reasons.some((r) => r.transport === 'polling'), JSON.stringify(failed.reasons));
  };
  const state = await restartScenario({
    exclude: 'webtransport,websocket',
    signal: 'SIGTERM',
    transport: 'sse',
    whileDown,
  });
  assert.equal(state.transport, 'sse');
});

test('polling page resyncs after the server is killed', async () => {
  const state = await restartScenario({
    exclude: 'webtransport,websocket,sse',
    signal: 'SIGKILL',
    transport: 'polling',
  });
  assert.equal(state.transport, 'polling');
});

/**
 * Drops the page's connection from inside the page while the server keeps running, publishes
 * events on several topics while it reconnects, and checks that each arrives exactly once.
 */
async function resumeScenario({ exclude, transport }) {
  const server = await startServer();
  // A reconnect delay of up to 1.5 s leaves time to publish while the page is disconnected.
  const slow = 'reconnectBase=1500&reconnectMax=1500';
  const query = exclude ? `?exclude=${exclude}&${slow}` : `?${slow}`;
  const page = await chromium.open(`${server.origin}/${query}`);
  try {
    await waitForState(page, (s) => s.ready && s.state === 'open', 'the page to connect');
    await publish(server, 'events/resume/a', 'before the drop');
    await waitForState(page, (s) => s.events.length === 1, 'the first event');

    await page.evaluate(() => window.hubcastTest.client.connection.drop('dropped by the test'));
    const published = [];
    for (let i = 0; i < 6; i += 1) {
      const topic = `events/resume/${'abc'[i % 3]}`;
      const reply = await publish(server, topic, `during the drop ${i}`);
      published.push({ topic, payload: `during the drop ${i}`, cursor: reply.cursor });
    }

    const state = await waitForState(
      page,
      (s) => s.connections >= 2 && s.events.length >= 1 + published.length,
      'the events published during the drop',
    );
    assert.equal(state.transport, transport);
    assert.deepEqual(state.resyncs, [], 'resuming on the same server needs no resync');
    const received = state.events.slice(1);
    assert.equal(received.length, published.length, 'each event arrives exactly once');
    // WebTransport may reorder topics that share no stream, so order is compared by cursor.
    const bySequence = [...received].sort((x, y) => Number(x.cursor.split('-')[1]) - Number(y.cursor.split('-')[1]));
    assert.deepEqual(
      bySequence.map((e) => [e.topic, e.payload, e.cursor]),
      published.map((e) => [e.topic, e.payload, e.cursor]),
    );
    if (transport !== 'webtransport') {
      assert.deepEqual(
        received.map((e) => e.cursor),
        published.map((e) => e.cursor),
        'arrival order is publishing order',
      );
    }
  } finally {
    await page.close();
    await server.stop();
  }
}

test('webtransport page resumes after a drop', async () => {
  await resumeScenario({ transport: 'webtransport' });
});

test('websocket page resumes after a drop', async () => {
  await resumeScenario({ exclude: 'webtransport', transport: 'websocket' });
});

test('sse page resumes after a drop', async () => {
  await resumeScenario({ exclude: 'webtransport,websocket', transport: 'sse' });
});

test('polling page resumes after a drop', async () => {
  await resumeScenario({ exclude: 'webtransport,websocket,sse', transport: 'polling' });
});
