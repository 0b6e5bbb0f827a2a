// Saves a screenshot of the dashboard with live data to test-artifacts/dashboard.png.

import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { after, before, test } from 'node:test';

import { ARTIFACTS, launchChromium, publish, runSimulator, sleep, startServer, waitForState } from './harness.mjs';

let chromium;

before(async () => {
  chromium = await launchChromium();
});

after(async () => {
  await chromium?.close();
});

test('dashboard screenshot with live data', async () => {
  const server = await startServer();
  const page = await chromium.open(`http://localhost:${server.httpPort}/`);
  const simulator = await runSimulator(server, {
    sensors: 4,
    rate: 5,
    duration: 25,
    extra: ['--seed', '3', '--spikes-per-minute', '8'],
  });
  try {
    await waitForState(page, (s) => s.ready && s.state === 'open', 'the page to connect');
    const notes = [
      ['events/door/front', 'opened', 'door'],
      ['events/hvac', 'mode=eco', 'setting'],
      ['events/door/front', 'closed', 'door'],
    ];
    for (const [topic, payload, event] of notes) {
      await publish(server, topic, payload, { event });
      await sleep(1500);
    }
    // About 15 s of readings fill a quarter of the one-minute chart window.
    await sleep(11000);
    const state = await waitForState(
      page,
      (s) => s.telemetryCount >= 100 && s.events.length >= notes.length,
      'live telemetry and events',
    );
    assert.equal(state.transport, 'webtransport', `skipped: ${JSON.stringify(state.reasons)}`);

    fs.mkdirSync(ARTIFACTS, { recursive: true });
    const file = path.join(ARTIFACTS, 'dashboard.png');
    await page.screenshot(file);
    const size = fs.statSync(file).size;
    assert.ok(size > 20000, `screenshot of ${size} bytes looks empty`);
  } finally {
    await simulator.stop();
    await page.close();
    await server.stop();
  }
});
