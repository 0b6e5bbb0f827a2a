// The client API on each transport in Chromium: several subscriptions, a subscription that
// replays from a cursor, and unsubscribe. A second client is created inside the dashboard page.

import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';

import { launchChromium, publish, sleep, startServer, waitForState } from './harness.mjs';

let chromium;

before(async () => {
  chromium = await launchChromium();
});

after(async () => {
  await chromium?.close();
});

/** Returns the payloads the page's API client received, in arrival order. */
async function seen(page) {
  return page.evaluate(() => window.apiTest.events.map((e) => e.payload));
}

async function waitForPayload(page, payload) {
  const deadline = Date.now() + 15000;
  for (;;) {
    const payloads = await seen(page);
    if (payloads.includes(payload)) return payloads;
    if (Date.now() > deadline) {
      throw new Error(`timed out waiting for ${JSON.stringify(payload)}; received ${JSON.stringify(payloads)}`);
    }
    await sleep(100);
  }
}

for (const transport of ['webtransport', 'websocket', 'sse', 'polling']) {
  test(`subscribe, replay and unsubscribe over ${transport}`, async () => {
    const server = await startServer();
    const page = await chromium.open(`${server.origin}/?topics=dashboard/none`);
    try {
      await waitForState(page, (s) => s.ready, 'the dashboard to connect');
      const connected = await page.evaluate(async (name) => {
        const { Hubcast } = await import('/hubcast.js');
        const events = [];
        const client = new Hubcast({ transport: name, onEvent: (e) => events.push(e) });
        window.apiTest = { client, events, subs: {} };
        await client.connect();
        return client.transport;
      }, transport);
      assert.equal(connected, transport);

      const b1 = await publish(server, 'api/b/x', 'b1');
      await publish(server, 'api/b/x', 'b2');

      await page.evaluate(async () => {
        window.apiTest.subs.a = await window.apiTest.client.subscribe(['api/a/#']);
      });
      await publish(server, 'api/b/x', 'b3 before subscribing to b');
      await publish(server, 'api/a/x', 'a1');
      let payloads = await waitForPayload(page, 'a1');
      assert.deepEqual(payloads, ['a1'], 'only the subscribed topic arrives');

      // Replays the b events after b1 that are still in history, then live ones.
      await page.evaluate(async (cursor) => {
        window.apiTest.subs.b = await window.apiTest.client.subscribe(['api/b/+'], { cursor });
      }, b1.cursor);
      payloads = await waitForPayload(page, 'b3 before subscribing to b');
      assert.deepEqual(payloads, ['a1', 'b2', 'b3 before subscribing to b']);

      await page.evaluate(async () => {
        await window.apiTest.client.unsubscribe(window.apiTest.subs.a);
      });
      await publish(server, 'api/a/x', 'a2 after unsubscribing');
      await publish(server, 'api/b/x', 'b4');
      payloads = await waitForPayload(page, 'b4');
      // a2 was published before b4, and the wait gives a wrongly delivered a2 time to arrive.
      await sleep(300);
      payloads = await seen(page);
      assert.deepEqual(payloads, ['a1', 'b2', 'b3 before subscribing to b', 'b4']);

      const cursor = await page.evaluate(() => window.apiTest.client.cursor);
      assert.match(cursor, /^[0-9a-f]{16}-\d+$/);
      await page.evaluate(() => window.apiTest.client.close());
      const state = await page.evaluate(() => window.apiTest.client.state);
      assert.equal(state, 'closed');
    } finally {
      await page.close();
      await server.stop();
    }
  });
}
