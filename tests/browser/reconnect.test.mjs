// Reconnection in Chromium: the server stops and a new process starts on the same ports with
// the same certificate directory, so it has a new epoch. The page must reconnect by itself,
// report the resync and keep receiving events.

import assert from 'node:assert/strict';
import path from 'node:path';
import { after, before, test } from 'node:test';

import { freePorts, launchChromium, publish, startServer, tempDir, waitForState } from './harness.mjs';

// Short backoff and keep-alive so a test notices the drop and reconnects within seconds.
const FAST = 'reconnectBase=200&reconnectMax=1000&ping=2000';

let chromium;

before(async () => {
  chromium = await launchChromium();
});

after(async () => {
  await chromium?.close();
});

function eventsOn(state, topic) {
  return state.events.filter((e) => e.topic === topic);
}

async function restartScenario({ exclude, signal, transport }) {
  const ports = await freePorts();
  const certDir = path.join(tempDir('certs'), 'certs');
  let server = await startServer({ ...ports, certDir });
  const query = exclude ? `?exclude=${exclude}&${FAST}` : `?${FAST}`;
  const page = await chromium.open(`http://localhost:${ports.httpPort}/${query}`);
  try {
    const ready = await waitForState(page, (s) => s.ready && s.state === 'open', 'the page to connect');
    assert.equal(ready.transport, transport);
    const hashBefore = await (await fetch(`${server.origin}/v1/cert-hash`)).json();

    const first = await publish(server, 'events/restart', 'before the restart', { event: 'note' });
    await waitForState(page, (s) => eventsOn(s, 'events/restart').length === 1, 'the first event');

    await server.stop(signal);
    await waitForState(page, (s) => s.state === 'reconnecting', 'the page to notice the drop');

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
  assert.equal(state.transport, 'webtransport');
});

test('webtransport page resyncs after the server is killed', async () => {
  await restartScenario({ signal: 'SIGKILL', transport: 'webtransport' });
});

test('websocket page resyncs after the server is killed', async () => {
  const state = await restartScenario({ exclude: 'webtransport', signal: 'SIGKILL', transport: 'websocket' });
  assert.equal(state.transport, 'websocket');
});

test('sse page resyncs after a restart', async () => {
  const state = await restartScenario({ exclude: 'webtransport,websocket', signal: 'SIGTERM', transport: 'sse' });
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
