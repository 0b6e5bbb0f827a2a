// Pure helpers of web/hubcast.js, run in Node without a browser.

import assert from 'node:assert/strict';
import { test } from 'node:test';

import { Hubcast, filterError, isSafari, parseCursor, topicMatches } from '../../web/hubcast.js';

test('topicMatches follows the server rules', () => {
  const cases = [
    ['a/b', 'a/b', true],
    ['a/b', 'a/b/c', false],
    ['a/+/c', 'a/b/c', true],
    ['a/+/c', 'a/c', false],
    ['+', 'a', true],
    ['+', 'a/b', false],
    ['a/#', 'a', true],
    ['a/#', 'a/b/c/d', true],
    ['a/#', 'b/a', false],
    ['#', 'x/y', true],
    ['a/+/#', 'a/b', true],
    ['a/+/#', 'a', false],
  ];
  for (const [filter, topic, expected] of cases) {
    assert.equal(topicMatches(filter, topic), expected, `${filter} against ${topic}`);
  }
});

test('filterError rejects what the server rejects', () => {
  for (const valid of ['#', 'a/+/c', 'sensors/#', 'a'.repeat(256)]) {
    assert.equal(filterError(valid), null, valid);
  }
  for (const invalid of ['', 'a//b', '/a', 'a/', 'a/#/b', 'a+/b', 'a/b#', 'a\nb', 'a'.repeat(257)]) {
    assert.notEqual(filterError(invalid), null, JSON.stringify(invalid));
  }
  assert.notEqual(filterError(Array(33).fill('a').join('/')), null, '33 segments');
});

test('parseCursor reads epoch and sequence', () => {
  const cursor = parseCursor('DEADBEEF00000001-42');
  assert.equal(cursor.epoch, 'deadbeef00000001');
  assert.equal(cursor.seq, 42n);
  assert.equal(parseCursor('deadbeef00000001-18446744073709551615').seq, 18446744073709551615n);
  for (const invalid of ['', '42', 'deadbeef-1', 'deadbeef00000001-', 'zzzzzzzzzzzzzzzz-1', null]) {
    assert.equal(parseCursor(invalid), null, String(invalid));
  }
});

test('isSafari tells Safari from other browsers', () => {
  const safari =
    'Mozilla/5.0 (Macintosh; Intel Mac OS X 14_5) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.5 Safari/605.1.15';
  const chrome =
    'Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/156.0.0.0 Safari/537.36';
  const edge = `${chrome} Edg/156.0.0.0`;
  const firefox = 'Mozilla/5.0 (X11; Linux x86_64; rv:140.0) Gecko/20100101 Firefox/140.0';
  assert.equal(isSafari(safari), true);
  assert.equal(isSafari(chrome), false);
  assert.equal(isSafari(edge), false);
  assert.equal(isSafari(firefox), false);
  assert.equal(isSafari(''), false);
});

test('Hubcast rejects unknown transport names', () => {
  assert.throws(() => new Hubcast({ baseUrl: 'http://127.0.0.1:1', transport: 'carrier-pigeon' }), /unknown transport/);
  assert.throws(() => new Hubcast({ baseUrl: 'http://127.0.0.1:1', exclude: ['smoke'] }), /unknown transport/);
});

test('Hubcast.subscribe rejects invalid filters before sending', async () => {
  const client = new Hubcast({ baseUrl: 'http://127.0.0.1:1' });
  await assert.rejects(client.subscribe(['a/#/b']), { code: 'invalid_filter' });
  await assert.rejects(client.subscribe([]), { code: 'invalid_filter' });
  const sub = await client.subscribe(['a/#']);
  assert.deepEqual(sub.filters, ['a/#']);
  client.close();
});
