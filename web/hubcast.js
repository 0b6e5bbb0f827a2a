// hubcast browser client: one publish/subscribe API over WebTransport, WebSocket, Server-Sent
// Events and long polling. An ES module with no dependencies and no build step.
//
//   import { Hubcast } from './hubcast.js';
//   const client = new Hubcast({ onEvent: (e) => console.log(e), onTelemetry: (t) => {} });
//   await client.connect();
//   await client.subscribe(['sensors/#', 'alarms/#']);
//   await client.publish('events/door', 'open', { event: 'opened' });
//   await client.publishTelemetry('sensors/a/temperature', '21.5');
//   client.close();
//
// Transports are tried strongest first: WebTransport, WebSocket, SSE, long polling. The
// client reports the one in use (`transport`) and why each stronger one was skipped
// (`reasons`). After any drop it reconnects with exponential backoff and full jitter, runs the
// selection again and resubscribes from the last event cursor it saw. When the server cannot
// resume from that cursor (restart or expired history) it calls `onResync`.

/** Transport names, strongest first. */
export const TRANSPORTS = Object.freeze(['webtransport', 'websocket', 'sse', 'polling']);

/** Codes of `reasons[].code`: why a transport was skipped. */
export const SKIP = Object.freeze({
  EXCLUDED: 'excluded',
  SAFARI: 'safari',
  NOT_SUPPORTED: 'not-supported',
  HANDSHAKE_FAILED: 'handshake-failed',
  TIMED_OUT: 'timed-out',
  // The server's HTTP origin did not answer at all: every transport would fail the same way,
  // so the client waits and starts again from the strongest one instead of falling back.
  UNREACHABLE: 'unreachable',
});

const DATAGRAM_TOPIC = 0x00;
const DATAGRAM_ALIAS = 0x01;
// The server keeps at most 1024 aliases per WebTransport session (`max_aliases` in
// src/commands.rs); topics beyond that are sent in full.
const MAX_ALIASES = 1024;
// Guard against a corrupt length prefix; the server's largest frame carries a 1 MiB payload in
// base64 by default.
const MAX_FRAME_BYTES = 64 * 1024 * 1024;
// Event sequence numbers remembered to drop duplicates: the server's default history length.
const SEEN_LIMIT = 10000;

const encoder = new TextEncoder();
const strictDecoder = new TextDecoder('utf-8', { fatal: true });

const DEFAULTS = {
  // HTTP origin of the server; the page's own origin when absent.
  baseUrl: null,
  // Transport to use alone, or null to try them in order.
  transport: null,
  // Transports never to try.
  exclude: [],
  // Milliseconds allowed for one WebTransport attempt: certificate hash, session, first reply.
  webTransportTimeout: 5000,
  // Milliseconds allowed for a WebSocket, SSE or polling handshake.
  connectTimeout: 5000,
  // Milliseconds to wait for the reply to a command.
  requestTimeout: 10000,
  // Milliseconds between keep-alive pings on WebTransport and WebSocket; 0 disables them.
  pingInterval: 10000,
  // Seconds a long poll may wait on the server.
  pollTimeout: 25,
  // First reconnect delay cap and maximum cap, in milliseconds.
  reconnectBaseDelay: 500,
  reconnectMaxDelay: 15000,
  // A connection that lived this many milliseconds resets the backoff.
  stableAfter: 10000,
  // Milliseconds of WebTransport events replayed after a drop, because events of other topics
  // travel on other streams and may have been in flight; 0 resumes after the last event seen.
  resumeWindow: 5000,
  // User agent string used for the Safari check.
  userAgent: typeof navigator === 'undefined' ? '' : navigator.userAgent,
  onEvent: null,
  onTelemetry: null,
  onResync: null,
  onStatus: null,
  onError: null,
};

/** A transport that could not be used; `code` is one of {@link SKIP}. */
export class TransportError extends Error {
  constructor(code, message, options) {
    super(message, options);
    this.name = 'TransportError';
    this.code = code;
  }
}

/** A command the server rejected; `code` is the server's error code. */
export class CommandError extends Error {
  constructor(code, message) {
    super(message);
    this.name = 'CommandError';
    this.code = code;
  }
}

/**
 * Returns whether a user agent string is Safari (WebKit without a Chrome, Chromium, Edge or Firefox
 * token). Browsers on iOS that report CriOS or FxiOS run on WebKit and count as Safari too.
 */
export function isSafari(userAgent) {
  const ua = String(userAgent || '');
  return /Safari\//.test(ua) && !/(Chrome|Chromium|Edg|Firefox)\//.test(ua);
}

/** Returns whether an MQTT-style filter (`+` one segment, trailing `#` any rest) matches a topic. */
export function topicMatches(filter, topic) {
  if (!filter.includes('+') && !filter.includes('#')) return filter === topic;
  const names = topic.split('/');
  let i = 0;
  for (const pattern of filter.split('/')) {
    if (pattern === '#') return true;
    if (i >= names.length) return false;
    if (pattern !== '+' && pattern !== names[i]) return false;
    i += 1;
  }
  return i === names.length;
}

/**
 * Returns why a subscription filter is invalid, or null when the server accepts it: at most
 * 256 bytes and 32 segments, no empty segment or control character, and `+` or `#` only as a
 * whole segment, `#` only last. These are the server's rules from src/topic.rs.
 */
export function filterError(filter) {
  if (typeof filter !== 'string' || filter === '') return 'filter is empty';
  if (encoder.encode(filter).length > 256) return `filter ${JSON.stringify(filter)} is longer than 256 bytes`;
  if (/\p{Cc}/u.test(filter)) return `filter ${JSON.stringify(filter)} contains a control character`;
  const segments = filter.split('/');
  if (segments.length > 32) return `filter ${JSON.stringify(filter)} has more than 32 segments`;
  for (const [index, segment] of segments.entries()) {
    if (segment === '') return `filter ${JSON.stringify(filter)} has an empty segment`;
    if (/[+#]/.test(segment) && segment.length > 1) {
      return `filter ${JSON.stringify(filter)} uses a wildcard inside a segment`;
    }
    if (segment === '#' && index !== segments.length - 1) {
      return `filter ${JSON.stringify(filter)} has \`#\` before its last segment`;
    }
  }
  return null;
}

/** Parses a cursor (`<16 hex digits epoch>-<sequence>`); null when it is not one. */
export function parseCursor(text) {
  if (typeof text !== 'string') return null;
  const match = /^([0-9a-fA-F]{16})-(\d{1,20})$/.exec(text);
  if (!match) return null;
  return { text, epoch: match[1].toLowerCase(), seq: BigInt(match[2]) };
}


function toBytes(payload) {
  if (payload == null) return new Uint8Array(0);
  if (typeof payload === 'string') return encoder.encode(payload);
  if (payload instanceof Uint8Array) return payload;
  if (payload instanceof ArrayBuffer) return new Uint8Array(payload);
  if (ArrayBuffer.isView(payload)) {
    return new Uint8Array(payload.buffer, payload.byteOffset, payload.byteLength);
  }
  return encoder.encode(String(payload));
}

/** Decodes a payload as text when it is valid UTF-8, and returns the bytes otherwise. */
function textOrBytes(bytes) {
  try {
    return strictDecoder.decode(bytes);
  } catch {
    return bytes;
  }
}

function base64Encode(bytes) {
  let binary = '';
  for (let i = 0; i < bytes.length; i += 0x8000) {
    binary += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  }
  return btoa(binary);
}

function base64Decode(text) {
  const binary = atob(text);
  const bytes = new Uint8Array(binary.length);
  for (let i = 0; i < binary.length; i += 1) bytes[i] = binary.charCodeAt(i);
  return bytes;
}

function hexToBytes(hex) {
  const digits = String(hex).replace(/:/g, '');
  if (!/^([0-9a-fA-F]{2})+$/.test(digits)) throw new Error(`invalid hex string ${hex}`);
  const bytes = new Uint8Array(digits.length / 2);
  for (let i = 0; i < bytes.length; i += 1) {
    bytes[i] = parseInt(digits.slice(2 * i, 2 * i + 2), 16);
  }
  return bytes;
}

/** Payload fields of a JSON command: `payload` for UTF-8 text, `payload_b64` otherwise. */
function commandPayload(payload) {
  if (typeof payload === 'string') return { payload };
  const bytes = toBytes(payload);
  const text = textOrBytes(bytes);
  return typeof text === 'string' ? { payload: text } : { payload_b64: base64Encode(bytes) };
}

/** Payload of a JSON envelope as text, or as bytes when the server sent base64. */
function envelopePayload(envelope) {
  if (typeof envelope.payload === 'string') return envelope.payload;
  if (typeof envelope.payload_b64 === 'string') return textOrBytes(base64Decode(envelope.payload_b64));
  return '';
}

function delay(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** Races `promise` against a timer; the timer rejects with a `timed-out` TransportError. */
function withTimeout(promise, ms, operation) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(
      () => reject(new TransportError(SKIP.TIMED_OUT, `${operation} timed out after ${ms} ms`)),
      ms,
    );
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

async function fetchWithTimeout(url, init, ms, operation) {
  const controller = new AbortController();
  const timer = setTimeout(() => controller.abort(), ms);
  try {
    return await fetch(url, { ...init, signal: controller.signal, cache: 'no-store' });
  } catch (error) {
    if (controller.signal.aborted) {
      throw new TransportError(SKIP.TIMED_OUT, `${operation} timed out after ${ms} ms`);
    }
    throw new TransportError(SKIP.UNREACHABLE, `${operation} failed: ${error.message}`, {
      cause: error,
    });
  } finally {
    clearTimeout(timer);
  }
}

/** Reads the JSON error body of a rejected HTTP request into a CommandError. */
async function httpError(response) {
  let code = `http_${response.status}`;
  let message = `HTTP ${response.status}`;
  try {
    const body = await response.json();
    if (body && body.error) code = body.error;
    if (body && body.message) message = body.message;
  } catch {
    // The body was not the server's JSON error; keep the status.
  }
  return new CommandError(code, message);
}

/** Publishes through `POST /v1/publish`; resolves with `{ cursor }` (null for telemetry). */
async function publishOverHttp(baseUrl, topic, payload, options) {
  const params = new URLSearchParams({ topic });
  if (options.class) params.set('class', options.class);
  if (options.event) params.set('event', options.event);
  const response = await fetch(`${baseUrl}/v1/publish?${params}`, {
    method: 'POST',
    body: toBytes(payload),
    cache: 'no-store',
  });
  if (!response.ok) throw await httpError(response);
  const body = await response.json();
  return { cursor: body.cursor ?? null };
}

/** Splits a byte stream into frames of a 4-byte big-endian length and a JSON body. */
class FrameParser {
  constructor() {
    this.buffer = new Uint8Array(0);
  }

  push(chunk) {
    if (this.buffer.length === 0) {
      this.buffer = chunk;
      return;
    }
    const joined = new Uint8Array(this.buffer.length + chunk.length);
    joined.set(this.buffer);
    joined.set(chunk, this.buffer.length);
    this.buffer = joined;
  }

  /** Returns the next complete frame's JSON value, or undefined when more bytes are needed. */
  next() {
    if (this.buffer.length < 4) return undefined;
    const view = new DataView(this.buffer.buffer, this.buffer.byteOffset, 4);
    const length = view.getUint32(0);
    if (length > MAX_FRAME_BYTES) {
      throw new Error(`frame of ${length} bytes exceeds the maximum of ${MAX_FRAME_BYTES}`);
    }
    if (this.buffer.length < 4 + length) return undefined;
    const body = this.buffer.subarray(4, 4 + length);
    this.buffer = this.buffer.subarray(4 + length);
    return JSON.parse(new TextDecoder().decode(body));
  }
}

function frame(value) {
  const body = encoder.encode(JSON.stringify(value));
  const out = new Uint8Array(4 + body.length);
  new DataView(out.buffer).setUint32(0, body.length);
  out.set(body, 4);
  return out;
}

/**
 * Command/reply bookkeeping shared by the WebSocket and WebTransport connections: ids, pending
 * replies with timeouts, and the server's subscription numbers.
 */
class CommandChannel {
  constructor(client, send) {
    this.client = client;
    this.send = send;
    this.nextId = 1;
    this.pending = new Map();
    // Local subscription id -> server subscription number, and back.
    this.serverSubs = new Map();
    this.localSubs = new Map();
  }

  request(command, timeoutMs = this.client.options.requestTimeout) {
    const id = this.nextId;
    this.nextId += 1;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(id);
        reject(new TransportError(SKIP.TIMED_OUT, `no reply to ${command.op} within ${timeoutMs} ms`));
      }, timeoutMs);
      this.pending.set(id, { resolve, reject, timer });
      try {
        this.send({ ...command, id });
      } catch (error) {
        clearTimeout(timer);
        this.pending.delete(id);
        reject(error);
      }
    });
  }

  /** Handles one JSON message; returns false when it is a delivery, not a reply. */
  handleReply(message) {
    if (!['subscribed', 'unsubscribed', 'ack', 'pong', 'error'].includes(message.op)) return false;
    const waiting = message.id == null ? undefined : this.pending.get(message.id);
    if (!waiting) {
      if (message.op === 'error') {
        this.client._reportError(new CommandError(message.code, message.message));
      }
      return true;
    }
    this.pending.delete(message.id);
    clearTimeout(waiting.timer);
    if (message.op === 'error') waiting.reject(new CommandError(message.code, message.message));
    else waiting.resolve(message);
    return true;
  }

  failAll(error) {
    for (const waiting of this.pending.values()) {
      clearTimeout(waiting.timer);
      waiting.reject(error);
    }
    this.pending.clear();
  }

  async subscribe(sub, cursor) {
    const command = { op: 'subscribe', filters: sub.filters };
    if (cursor) command.cursor = cursor.text;
    const reply = await this.request(command);
    this.serverSubs.set(sub.id, reply.sub);
    this.localSubs.set(reply.sub, sub.id);
    // The caller unsubscribed while the request was in flight.
    if (!this.client._subs.has(sub.id)) this.unsubscribe(sub).catch(() => {});
    return { cursor: reply.cursor, given: Boolean(cursor) };
  }

  async unsubscribe(sub) {
    const serverSub = this.serverSubs.get(sub.id);
    if (serverSub == null) return;
    this.serverSubs.delete(sub.id);
    this.localSubs.delete(serverSub);
    await this.request({ op: 'unsubscribe', sub: serverSub });
  }

  async publish(topic, payload, options) {
    const command = { op: 'publish', topic, ...commandPayload(payload) };
    if (options.class) command.class = options.class;
    if (options.event) command.event = options.event;
    const reply = await this.request(command);
    return { cursor: reply.cursor ?? null };
  }

  /** Routes a delivery (event, telemetry or resync) to the client. */
  deliver(message, transport, via) {
    if (message.op === 'resync') {
      const local = message.sub == null ? null : this.localSubs.get(message.sub);
      this.client._handleResync(message.reason, parseCursor(message.cursor), local, transport);
    } else if (message.op === 'event') {
      this.client._handleEvent(message, transport);
    } else if (message.op === 'telemetry') {
      this.client._handleTelemetry(message.topic, envelopePayload(message), transport, via);
    }
  }
}

/** Base of the four connections: drop reporting and keep-alive pings. */
class Connection {
  constructor(client, name) {
    this.client = client;
    this.name = name;
    this.closed = false;
    this.openedAt = Date.now();
    this.pingTimer = null;
  }

  /** Reports the connection as lost, once; the client then reconnects. */
  drop(reason) {
    if (this.closed) return;
    this.closed = true;
    clearInterval(this.pingTimer);
    this.teardown();
    this.client._onDrop(this, reason);
  }

  /** Closes on request of the client; no drop is reported. */
  close() {
    if (this.closed) return;
    this.closed = true;
    clearInterval(this.pingTimer);
    this.teardown();
  }

  startPings(channel) {
    const interval = this.client.options.pingInterval;
    if (!interval) return;
    this.pingTimer = setInterval(() => {
      channel.request({ op: 'ping' }, Math.max(interval, 2000)).catch((error) => {
        this.drop(`keep-alive ping failed: ${error.message}`);
      });
    }, interval);
  }
}

class WebTransportConnection extends Connection {
  static supported() {
    return typeof WebTransport === 'function';
  }

  static async open(client) {
    const timeoutMs = client.options.webTransportTimeout;
    const started = Date.now();
    const left = () => Math.max(1, timeoutMs - (Date.now() - started));

    const response = await fetchWithTimeout(
      `${client.baseUrl}/v1/cert-hash`,
      {},
      left(),
      'fetching /v1/cert-hash',
    );
    if (!response.ok) {
      throw new TransportError(SKIP.HANDSHAKE_FAILED, `/v1/cert-hash returned HTTP ${response.status}`);
    }
    const info = await response.json();
    const options = {};
    if (info.generated) {
      options.serverCertificateHashes = [{ algorithm: 'sha-256', value: hexToBytes(info.hex) }];
    }
    // Chromium 156 (Debian) fails a session to `localhost` when the server listens on
    // 127.0.0.1 only, because it connects to ::1 and does not fall back. So the loopback
    // addresses are tried in turn, and a refused attempt fails within milliseconds.
    const hostname = new URL(client.baseUrl).hostname;
    const hosts = hostname === 'localhost' ? ['localhost', '127.0.0.1', '[::1]'] : [hostname];
    let failure;
    for (const host of hosts) {
      const url = `https://${host}:${info.quic_port}${info.webtransport_path || '/v1/wt'}`;
      try {
        return await WebTransportConnection.session(client, url, options, left);
      } catch (error) {
        failure = error;
        if (error.code === SKIP.TIMED_OUT) break;
      }
    }
    throw failure;
  }

  /** Opens one session and its control stream, and waits for the first reply. */
  static async session(client, url, options, left) {
    let transport;
    try {
      transport = new WebTransport(url, options);
    } catch (error) {
      throw new TransportError(SKIP.HANDSHAKE_FAILED, `WebTransport to ${url} failed: ${error.message}`, {
        cause: error,
      });
    }
    // Both promises reject when the session fails; they are awaited or watched below.
    transport.closed.catch(() => {});
    const connection = new WebTransportConnection(client, transport, url);
    try {
      await withTimeout(transport.ready, left(), `WebTransport session to ${url}`);
      const stream = await withTimeout(
        transport.createBidirectionalStream(),
        left(),
        'opening the control stream',
      );
      connection.start(stream);
      // The first reply proves the control stream works end to end.
      await connection.channel.request({ op: 'ping' }, left());
    } catch (error) {
      connection.close();
      if (error instanceof TransportError) throw error;
      throw new TransportError(SKIP.HANDSHAKE_FAILED, `WebTransport to ${url} failed: ${error.message}`, {
        cause: error,
      });
    }
    return connection;
  }

  constructor(client, transport, url) {
    super(client, 'webtransport');
    this.transport = transport;
    this.url = url;
    this.writer = null;
    this.datagramWriter = null;
    this.channel = new CommandChannel(client, (command) => this.writeFrame(command));
    // Topic -> { alias, ready } for datagrams this session publishes.
    this.aliases = new Map();
    this.nextAlias = 1;
  }

  start(stream) {
    this.writer = stream.writable.getWriter();
    this.writer.closed.catch(() => {});
    this.readControl(stream.readable);
    this.acceptStreams();
    this.readDatagrams();
    this.transport.closed.then(
      (info) => this.drop(`WebTransport session closed (${info?.reason || 'no reason given'})`),
      (error) => this.drop(`WebTransport session failed: ${error.message}`),
    );
    this.startPings(this.channel);
  }

  writeFrame(command) {
    if (this.closed || !this.writer) throw new Error('the WebTransport session is closed');
    this.writer.write(frame(command)).catch((error) => {
      this.drop(`writing the control stream failed: ${error.message}`);
    });
  }

  async readControl(readable) {
    const reader = readable.getReader();
    const parser = new FrameParser();
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        parser.push(value);
        for (let message = parser.next(); message !== undefined; message = parser.next()) {
          if (!this.channel.handleReply(message)) this.channel.deliver(message, this.name, 'stream');
        }
      }
      this.drop('the server ended the control stream');
    } catch (error) {
      this.drop(`reading the control stream failed: ${error.message}`);
    }
  }

  async acceptStreams() {
    const reader = this.transport.incomingUnidirectionalStreams.getReader();
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) return;
        this.readEvents(value);
      }
    } catch {
      // The session ended; `closed` reports it.
    }
  }

  /** Reads one server-opened stream of event and telemetry frames. */
  async readEvents(readable) {
    const reader = readable.getReader();
    const parser = new FrameParser();
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) return;
        parser.push(value);
        for (let message = parser.next(); message !== undefined; message = parser.next()) {
          this.channel.deliver(message, this.name, 'stream');
        }
      }
    } catch (error) {
      if (!this.closed) this.client._reportError(new Error(`event stream failed: ${error.message}`));
    }
  }

  async readDatagrams() {
    const reader = this.transport.datagrams.readable.getReader();
    const decoder = new TextDecoder();
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) return;
        if (value.length < 3 || value[0] !== DATAGRAM_TOPIC) continue;
        const length = (value[1] << 8) | value[2];
        if (value.length < 3 + length) continue;
        const topic = decoder.decode(value.subarray(3, 3 + length));
        const payload = textOrBytes(value.slice(3 + length));
        this.client._handleTelemetry(topic, payload, this.name, 'datagram');
      }
    } catch {
      // The session ended; `closed` reports it.
    }
  }

  subscribe(sub, cursor) {
    return this.channel.subscribe(sub, cursor);
  }

  unsubscribe(sub) {
    return this.channel.unsubscribe(sub);
  }

  publish(topic, payload, options) {
    return this.channel.publish(topic, payload, options);
  }

  /**
   * Sends telemetry as one datagram: by alias once the server acknowledged it, with the topic
   * in full before that. A payload too large for a datagram goes over the control stream.
   */
  async publishTelemetry(topic, payload) {
    const bytes = toBytes(payload);
    const max = this.transport.datagrams.maxDatagramSize ?? 1024;
    let entry = this.aliases.get(topic);
    let datagram;
    if (entry?.ready) {
      datagram = new Uint8Array(3 + bytes.length);
      datagram[0] = DATAGRAM_ALIAS;
      datagram[1] = entry.alias >> 8;
      datagram[2] = entry.alias & 0xff;
      datagram.set(bytes, 3);
    } else {
      const name = encoder.encode(topic);
      datagram = new Uint8Array(3 + name.length + bytes.length);
      datagram[0] = DATAGRAM_TOPIC;
      datagram[1] = name.length >> 8;
      datagram[2] = name.length & 0xff;
      datagram.set(name, 3);
      datagram.set(bytes, 3 + name.length);
      if (!entry && this.nextAlias <= MAX_ALIASES) {
        entry = { alias: this.nextAlias, ready: false };
        this.nextAlias += 1;
        this.aliases.set(topic, entry);
        this.channel
          .request({ op: 'alias', alias: entry.alias, topic })
          .then(() => {
            entry.ready = true;
          })
          .catch((error) => this.client._reportError(error));
      }
    }
    if (datagram.length > max) {
      await this.channel.publish(topic, bytes, { class: 'telemetry' });
      return;
    }
    // Chromium 156 and Firefox ESR 153 have no `datagrams.createWritable()`, so every send
    // goes through the one shared `datagrams.writable`.
    if (!this.datagramWriter) this.datagramWriter = this.transport.datagrams.writable.getWriter();
    await this.datagramWriter.ready;
    this.datagramWriter.write(datagram).catch(() => {});
  }

  teardown() {
    this.channel.failAll(new Error('the WebTransport session closed'));
    try {
      this.transport.close({ closeCode: 0, reason: 'client closed' });
    } catch {
      // Already closed.
    }
  }
}

class WebSocketConnection extends Connection {
  static supported() {
    return typeof WebSocket === 'function';
  }

  static async open(client) {
    const url = `${client.baseUrl.replace(/^http/, 'ws')}/v1/ws`;
    let socket;
    try {
      socket = new WebSocket(url);
    } catch (error) {
      throw new TransportError(SKIP.HANDSHAKE_FAILED, `WebSocket to ${url} failed: ${error.message}`);
    }
    const opened = new Promise((resolve, reject) => {
      socket.onopen = resolve;
      socket.onerror = () => reject(new TransportError(SKIP.HANDSHAKE_FAILED, `WebSocket to ${url} failed`));
      socket.onclose = (event) =>
        reject(new TransportError(SKIP.HANDSHAKE_FAILED, `WebSocket to ${url} closed with code ${event.code}`));
    });
    try {
      await withTimeout(opened, client.options.connectTimeout, `WebSocket to ${url}`);
    } catch (error) {
      socket.onopen = socket.onerror = socket.onclose = null;
      socket.close();
      throw error;
    }
    return new WebSocketConnection(client, socket);
  }

  constructor(client, socket) {
    super(client, 'websocket');
    this.socket = socket;
    this.channel = new CommandChannel(client, (command) => {
      if (socket.readyState !== WebSocket.OPEN) throw new Error('the WebSocket is closed');
      socket.send(JSON.stringify(command));
    });
    socket.onerror = null;
    socket.onmessage = (event) => {
      let message;
      try {
        message = JSON.parse(event.data);
      } catch (error) {
        client._reportError(new Error(`invalid JSON from the server: ${error.message}`));
        return;
      }
      if (!this.channel.handleReply(message)) this.channel.deliver(message, this.name, 'websocket');
    };
    socket.onclose = (event) => {
      this.drop(`WebSocket closed with code ${event.code}${event.reason ? ` (${event.reason})` : ''}`);
    };
    this.startPings(this.channel);
  }

  subscribe(sub, cursor) {
    return this.channel.subscribe(sub, cursor);
  }

  unsubscribe(sub) {
    return this.channel.unsubscribe(sub);
  }

  publish(topic, payload, options) {
    return this.channel.publish(topic, payload, options);
  }

  publishTelemetry(topic, payload) {
    return this.channel.publish(topic, payload, { class: 'telemetry' });
  }

  teardown() {
    this.channel.failAll(new Error('the WebSocket closed'));
    this.socket.onmessage = this.socket.onclose = null;
    this.socket.close(1000, 'client closed');
  }
}

/**
 * Shared shape of SSE and long polling: one request stream for the union of every
 * subscription's filters, rebuilt whenever the set changes, from one cursor.
 */
class StreamingConnection extends Connection {
  /** Returns whether the running request stream carries every subscription's filters. */
  current() {
    return this.activeFilters === this.filters().join('\n');
  }

  /** Filters of every subscription, without repeats. */
  filters() {
    const all = new Set();
    for (const sub of this.client._subs.values()) for (const f of sub.filters) all.add(f);
    return [...all];
  }

  /**
   * Returns the earliest resume cursor over all subscriptions, so none misses an event. A
   * subscription without one starts from now, which any cursor covers.
   */
  startCursor() {
    let earliest = null;
    for (const sub of this.client._subs.values()) {
      const cursor = this.client._resumeCursor(sub);
      if (!cursor) continue;
      if (!earliest || (cursor.epoch === earliest.epoch && cursor.seq < earliest.seq)) earliest = cursor;
    }
    return earliest;
  }

  static async probe(client) {
    const response = await fetchWithTimeout(
      `${client.baseUrl}/healthz`,
      {},
      client.options.connectTimeout,
      'GET /healthz',
    );
    if (!response.ok) {
      throw new TransportError(SKIP.HANDSHAKE_FAILED, `GET /healthz returned HTTP ${response.status}`);
    }
  }

  async subscribe() {
    await this.restart();
    return { cursor: null, given: true };
  }

  async unsubscribe() {
    await this.restart();
  }

  publish(topic, payload, options) {
    return publishOverHttp(this.client.baseUrl, topic, payload, options);
  }

  async publishTelemetry(topic, payload) {
    await publishOverHttp(this.client.baseUrl, topic, payload, { class: 'telemetry' });
  }
}

class SseConnection extends StreamingConnection {
  static supported() {
    return typeof EventSource === 'function';
  }

  static async open(client) {
    const connection = new SseConnection(client);
    try {
      if (client._subs.size === 0) await StreamingConnection.probe(client);
      else await connection.restart();
    } catch (error) {
      connection.close();
      throw error;
    }
    return connection;
  }

  constructor(client) {
    super(client, 'sse');
    this.source = null;
  }

  /** Opens an EventSource for the current filters, then closes the previous one. */
  async restart() {
    const filters = this.filters();
    this.activeFilters = filters.join('\n');
    const previous = this.source;
    if (filters.length === 0) {
      this.source = null;
      previous?.close();
      return;
    }
    const params = new URLSearchParams({ format: 'json' });
    for (const filter of filters) params.append('topic', filter);
    const cursor = this.startCursor();
    if (cursor) params.set('cursor', cursor.text);
    const url = `${this.client.baseUrl}/v1/events?${params}`;
    const source = new EventSource(url);
    const opened = new Promise((resolve, reject) => {
      source.onopen = resolve;
      source.onerror = () => reject(new TransportError(SKIP.HANDSHAKE_FAILED, `EventSource ${url} failed`));
    });
    try {
      await withTimeout(opened, this.client.options.connectTimeout, `EventSource ${url}`);
    } catch (error) {
      source.close();
      throw error;
    }
    if (this.closed) {
      source.close();
      return;
    }
    // The previous stream stays open until this one is, so no event falls between the two.
    // Events that both streams deliver are dropped as duplicates by their cursor.
    this.source = source;
    previous?.close();
    source.onmessage = (event) => {
      let message;
      try {
        message = JSON.parse(event.data);
      } catch (error) {
        this.client._reportError(new Error(`invalid JSON event from the server: ${error.message}`));
        return;
      }
      if (message.op === 'resync') {
        this.client._handleResync(message.reason, parseCursor(message.cursor), null, this.name);
      } else if (message.op === 'event') {
        this.client._handleEvent(message, this.name);
      } else if (message.op === 'telemetry') {
        this.client._handleTelemetry(message.topic, envelopePayload(message), this.name, 'sse');
      }
    };
    // EventSource would reconnect by itself; the client reconnects instead, so that it can move
    // back to a stronger transport and back off.
    source.onerror = () => {
      if (this.source === source) this.drop('the event stream failed');
    };
  }

  teardown() {
    this.source?.close();
    this.source = null;
  }
}

class PollingConnection extends StreamingConnection {
  static supported() {
    return typeof fetch === 'function' && typeof AbortController === 'function';
  }

  static async open(client) {
    const connection = new PollingConnection(client);
    try {
      if (client._subs.size === 0) await StreamingConnection.probe(client);
      else await connection.restart();
    } catch (error) {
      connection.close();
      throw error;
    }
    return connection;
  }

  constructor(client) {
    super(client, 'polling');
    this.cursor = null;
    this.controller = null;
    this.generation = 0;
  }

  /**
   * Starts polling for the current filters: one immediate poll as the handshake, then a loop
   * of long polls. A running poll is aborted first; its events stay in the server's history.
   */
  async restart() {
    this.generation += 1;
    const generation = this.generation;
    this.controller?.abort();
    const filters = this.filters();
    this.activeFilters = filters.join('\n');
    if (filters.length === 0) return;
    const start = this.startCursor();
    if (start && (!this.cursor || (start.epoch === this.cursor.epoch && start.seq < this.cursor.seq))) {
      this.cursor = start;
    }
    await this.poll(filters, 0, this.client.options.connectTimeout);
    this.loop(filters, generation);
  }

  async loop(filters, generation) {
    const waitSeconds = this.client.options.pollTimeout;
    while (!this.closed && generation === this.generation) {
      try {
        await this.poll(filters, waitSeconds, waitSeconds * 1000 + this.client.options.connectTimeout);
      } catch (error) {
        if (this.closed || generation !== this.generation) return;
        if (error instanceof CommandError) {
          this.client._reportError(error);
          await delay(1000);
        } else {
          this.drop(`long poll failed: ${error.message}`);
          return;
        }
      }
    }
  }

  async poll(filters, waitSeconds, timeoutMs) {
    const params = new URLSearchParams();
    for (const filter of filters) params.append('topic', filter);
    if (this.cursor) params.set('cursor', this.cursor.text);
    params.set('timeout', String(waitSeconds));

    const controller = new AbortController();
    this.controller = controller;
    const timer = setTimeout(() => controller.abort(), timeoutMs);
    let body;
    try {
      const response = await fetch(`${this.client.baseUrl}/v1/poll?${params}`, {
        signal: controller.signal,
        cache: 'no-store',
      });
      if (!response.ok) throw await httpError(response);
      body = await response.json();
    } catch (error) {
      if (error instanceof CommandError) throw error;
      if (controller.signal.aborted && !this.closed) {
        throw new TransportError(SKIP.TIMED_OUT, `long poll timed out after ${timeoutMs} ms`);
      }
      throw new TransportError(SKIP.HANDSHAKE_FAILED, `long poll failed: ${error.message}`, { cause: error });
    } finally {
      clearTimeout(timer);
    }

    if (this.closed || controller !== this.controller) return;
    if (body.resync) this.client._handleResync(body.resync, null, null, this.name);
    for (const message of body.events || []) {
      if (message.op === 'event') this.client._handleEvent(message, this.name);
      else if (message.op === 'telemetry') {
        this.client._handleTelemetry(message.topic, envelopePayload(message), this.name, 'poll');
      }
    }

    const next = parseCursor(body.cursor);
    if (next) {
      this.cursor = next;
      this.client._advance(next, null);
    }
  }

  teardown() {
    this.generation += 1;
    this.controller?.abort();
  }
}

const CONNECTIONS = {
  webtransport: WebTransportConnection,
  websocket: WebSocketConnection,
  sse: SseConnection,
  polling: PollingConnection,
};

/**
 * The client. Options are those of `DEFAULTS` above; callbacks receive:
 *
 * - `onEvent({ topic, name, cursor, payload, transport })`
 * - `onTelemetry({ topic, payload, transport, via })`, `via` being `datagram`, `stream`,
 *   `websocket`, `sse` or `poll`
 * - `onResync({ reason, cursor, transport })`: events between the last cursor and `cursor`
 *   are lost (`epoch` after a server restart, `expired` when history moved past it)
 * - `onStatus({ state, transport, reasons, attempt, delayMs, error })`
 * - `onError(error)` for failures that do not end the connection
 *
 * Payloads are strings when they are valid UTF-8 and Uint8Array otherwise.
 */
export class Hubcast {
  constructor(options = {}) {
    this.options = { ...DEFAULTS };
    // An option given as undefined keeps its default.
    for (const [name, value] of Object.entries(options)) {
      if (value !== undefined) this.options[name] = value;
    }
    const base = this.options.baseUrl || globalThis.location?.origin;
    if (!base) throw new Error('missing baseUrl: pass the HTTP origin of the hubcast server');
    this.baseUrl = String(base).replace(/\/+$/, '');
    const known = new Set(TRANSPORTS);
    for (const name of [this.options.transport, ...this.options.exclude].filter(Boolean)) {
      if (!known.has(name)) {
        throw new Error(`unknown transport ${JSON.stringify(name)}: use one of ${TRANSPORTS.join(', ')}`);
      }
    }

    this.state = 'idle';
    this.transport = null;
    this.reasons = [];
    this.connection = null;
    this._subs = new Map();
    this._nextSub = 1;
    this._epoch = null;
    this._last = null;
    this._seen = new Set();
    this._attempt = 0;
    this._timer = null;
    this._connecting = null;
    this._firstOpen = null;
    this._lastResync = null;
    // Events that arrived within `resumeWindow`, oldest first; the newest event older than
    // that; and the resume point held back at the last WebTransport drop, if any.
    this._arrivals = [];
    this._settled = null;
    this._resumePoint = undefined;
  }

  /** Last event cursor seen, as the server's text. */
  get cursor() {
    return this._last?.text ?? null;
  }

  /**
   * Connects over the strongest transport that works. Resolves once the first connection is
   * open; until then it keeps retrying with backoff. Rejects only when `close()` comes first.
   */
  connect() {
    if (this.state === 'closed') return Promise.reject(new Error('the client is closed'));
    if (!this._firstOpen) {
      this._firstOpen = {};
      this._firstOpen.promise = new Promise((resolve, reject) => {
        this._firstOpen.resolve = resolve;
        this._firstOpen.reject = reject;
      });
      this._run();
    }
    return this._firstOpen.promise;
  }

  /**
   * Subscribes to topic filters, from `options.cursor` when given (events after it are
   * replayed) or from now. Resolves with the subscription once the server confirmed it, or at
   * once while disconnected; it is then sent on every (re)connection.
   */
  async subscribe(filters, options = {}) {
    const list = Array.isArray(filters) ? filters : [filters];
    if (list.length === 0) throw new CommandError('invalid_filter', 'no topic filter given: pass at least one');
    for (const filter of list) {
      const problem = filterError(filter);
      if (problem) throw new CommandError('invalid_filter', problem);
    }
    const cursor = options.cursor == null ? null : parseCursor(options.cursor);
    if (options.cursor != null && !cursor) {
      throw new TypeError(`invalid cursor ${JSON.stringify(options.cursor)}: pass one the server sent`);
    }

    // `start`: events up to it are never delivered for this subscription. `position`: the last
    // event delivered for it, where it resumes. SSE and polling report no head position, so a
    // new subscription there starts after the last event seen. WebSocket and WebTransport set
    // it from the `subscribed` reply.
    const streaming = this.connection instanceof StreamingConnection;
    const start = cursor ?? (streaming ? this._last : null);
    const sub = { id: this._nextSub, filters: [...list], start, position: start };
    this._nextSub += 1;
    this._subs.set(sub.id, sub);

    const connection = this.connection;
    if (connection) {
      try {
        await this._sendSubscribe(connection, sub);
      } catch (error) {
        if (!(error instanceof CommandError)) {
          // The connection failed, not the request: the subscription is sent again on the
          // next connection, as if it had been made while disconnected.
          connection.drop(`subscribing failed: ${error.message}`);
          return { id: sub.id, filters: [...sub.filters] };
        }
        this._subs.delete(sub.id);
        if (connection instanceof StreamingConnection && !connection.closed) {
          connection.restart().catch((e) => connection.drop(`restarting the stream failed: ${e.message}`));
        }
        throw error;
      }
    }
    return { id: sub.id, filters: [...sub.filters] };
  }

  /** Ends a subscription returned by `subscribe`. */
  async unsubscribe(subscription) {
    const id = typeof subscription === 'object' ? subscription.id : subscription;
    const sub = this._subs.get(id);
    if (!sub) return;
    this._subs.delete(id);
    const connection = this.connection;
    if (!connection) return;
    try {
      await connection.unsubscribe(sub);
    } catch (error) {
      if (error instanceof CommandError) throw error;
      // The next connection leaves the subscription out.
      connection.drop(`unsubscribing failed: ${error.message}`);
    }
  }

  /**
   * Publishes an event (or, with `{ class: 'telemetry' }`, telemetry) reliably. Resolves with
   * `{ cursor }`, the event's position. Goes over `POST /v1/publish` while disconnected.
   */
  publish(topic, payload, options = {}) {
    if (options.class === 'telemetry') return this.publishTelemetry(topic, payload).then(() => ({ cursor: null }));
    const connection = this.connection;
    if (connection) return connection.publish(topic, payload, options);
    return publishOverHttp(this.baseUrl, topic, payload, options);
  }

  /**
   * Publishes telemetry: a datagram on WebTransport (no delivery guarantee), a command on
   * WebSocket, `POST /v1/publish` otherwise.
   */
  publishTelemetry(topic, payload) {
    const connection = this.connection;
    if (connection) return connection.publishTelemetry(topic, payload);
    return publishOverHttp(this.baseUrl, topic, payload, { class: 'telemetry' }).then(() => undefined);
  }

  /** Closes the connection and stops reconnecting. */
  close() {
    if (this.state === 'closed') return;
    clearTimeout(this._timer);
    this._timer = null;
    const connection = this.connection;
    this.connection = null;
    connection?.close();
    this.transport = null;
    this._setState('closed', {});
    this._firstOpen?.reject(new Error('the client was closed before it connected'));
  }

  // ---- connection management ----

  async _run() {
    if (this.state === 'closed' || this._connecting) return;
    this._setState(this._attempt === 0 && !this.transport ? 'connecting' : 'reconnecting', {});
    this._connecting = this._select();
    let connection;
    try {
      connection = await this._connecting;
    } catch (error) {
      this._connecting = null;
      if (this.state === 'closed') return;
      this._scheduleReconnect(error);
      return;
    }
    this._connecting = null;
    if (this.state === 'closed') {
      connection.close();
      return;
    }

    this.connection = connection;
    this.transport = connection.name;
    try {
      if (connection instanceof StreamingConnection) {
        // The stream opened with the subscriptions of that moment; later ones need a restart.
        if (!connection.current()) await connection.restart();
      } else {
        for (const sub of [...this._subs.values()]) {
          try {
            await this._sendSubscribe(connection, sub);
          } catch (error) {
            if (!(error instanceof CommandError)) throw error;
            // The server rejected this subscription; the others still go out.
            this._subs.delete(sub.id);
            this._reportError(error);
          }
        }
      }
    } catch (error) {
      if (error instanceof CommandError) this._reportError(error);
      else {
        connection.drop(`resubscribing failed: ${error.message}`);
        return;
      }
    }
    if (connection.closed) return;

    // Every subscription is on the new connection, so the held-back resume point is spent.
    this._resumePoint = undefined;
    this._setState('open', {});
    this._firstOpen?.resolve(this);
  }

  /** Tries each allowed transport, strongest first, and records why each one was skipped. */
  async _select() {
    const { transport: forced, exclude } = this.options;
    const reasons = [];
    for (const name of TRANSPORTS) {
      const Kind = CONNECTIONS[name];
      if (forced && name !== forced) {
        if (TRANSPORTS.indexOf(name) < TRANSPORTS.indexOf(forced)) {
          reasons.push({ transport: name, code: SKIP.EXCLUDED, message: `the caller chose ${forced}` });
        }
        continue;
      }
      if (exclude.includes(name)) {
        reasons.push({ transport: name, code: SKIP.EXCLUDED, message: 'excluded by the caller' });
        continue;
      }
      if (name === 'webtransport' && isSafari(this.options.userAgent)) {
        reasons.push({
          transport: name,
          code: SKIP.SAFARI,
          message: 'Safari: WebTransport is not used there, WebSocket is used instead',
        });
        continue;
      }
      if (!Kind.supported()) {
        reasons.push({ transport: name, code: SKIP.NOT_SUPPORTED, message: `this browser has no ${name} support` });
        continue;
      }
      try {
        const connection = await Kind.open(this);
        this.reasons = reasons;
        return connection;
      } catch (error) {
        let code = error instanceof TransportError ? error.code : SKIP.HANDSHAKE_FAILED;
        let message = error.message;
        // WebSocket and EventSource report no cause, so a probe separates a server that is down
        // from one that rejected this transport.
        if (code === SKIP.HANDSHAKE_FAILED) {
          const down = await this._probeDown();
          if (down) {
            code = SKIP.UNREACHABLE;
            message = `${message} (${down})`;
          }
        }
        reasons.push({ transport: name, code, message });
        // A weaker transport cannot reach a server that is down either; during a restart it
        // would only win the race if the server came back in between.
        if (code === SKIP.UNREACHABLE) break;
      }
      if (this.state === 'closed') break;
    }
    this.reasons = reasons;
    const summary = reasons.map((r) => `${r.transport}: ${r.code}`).join('; ');
    throw new Error(`no transport could connect (${summary})`);
  }

  /** Returns why the server cannot be reached over HTTP at all, or null when it responds. */
  async _probeDown() {
    try {
      await StreamingConnection.probe(this);
      return null;
    } catch (error) {
      const unreachable = error instanceof TransportError
        && (error.code === SKIP.UNREACHABLE || error.code === SKIP.TIMED_OUT);
      return unreachable ? error.message : null;
    }
  }

  _scheduleReconnect(error) {
    const cap = Math.min(
      this.options.reconnectMaxDelay,
      this.options.reconnectBaseDelay * 2 ** Math.min(this._attempt, 30),
    );
    // Full jitter: a uniform delay in [0, cap).
    const delayMs = Math.floor(Math.random() * cap);
    this._attempt += 1;
    this._setState('reconnecting', { attempt: this._attempt, delayMs, error: error?.message });
    clearTimeout(this._timer);
    this._timer = setTimeout(() => {
      this._timer = null;
      this._run();
    }, delayMs);
  }

  _onDrop(connection, reason) {
    if (connection !== this.connection) return;
    this._holdBackResume(connection);
    this.connection = null;
    if (Date.now() - connection.openedAt >= this.options.stableAfter) this._attempt = 0;
    if (this.state === 'closed') return;
    this._scheduleReconnect(new Error(reason));
  }

  async _sendSubscribe(connection, sub) {
    const cursor = this._resumeCursor(sub);
    const result = await connection.subscribe(sub, cursor);
    // The reply's cursor is the head at subscribe time. A fresh subscription starts there.
    const head = parseCursor(result.cursor);
    if (head && !result.given && this._subs.get(sub.id) === sub) {
      this._observeEpoch(head);
      sub.start = head;
      // On WebTransport events may overtake the reply and have moved the position already.
      sub.position = this._later(sub.position, head);
    }
  }

  _setState(state, details) {
    this.state = state;
    this._emit('onStatus', {
      state,
      transport: this.transport,
      reasons: this.reasons.map((r) => ({ ...r })),
      attempt: this._attempt,
      ...details,
    });
  }

  // ---- deliveries ----

  /**
   * Sets the resume point after a WebTransport drop to the last event that arrived at least
   * `resumeWindow` ms before it. QUIC orders each stream but not streams against each other,
   * so an older event of another topic may have been lost in flight while a newer one
   * arrived. The replayed events that did arrive are dropped as duplicates by their cursor.
   */
  _holdBackResume(connection) {
    const window = this.options.resumeWindow;
    if (connection.name !== 'webtransport' || !window) return;
    this._pruneArrivals(Date.now() - window);
    // An earlier hold-back still in effect is older, so it stays.
    if (this._resumePoint === undefined) this._resumePoint = this._settled;
    this._arrivals = [];
  }

  /** Moves arrivals older than `before` out of the window, keeping the newest as settled. */
  _pruneArrivals(before) {
    let drop = 0;
    while (drop < this._arrivals.length && this._arrivals[drop].at < before) {
      const { cursor } = this._arrivals[drop];
      if (!this._settled || this._settled.epoch !== cursor.epoch || cursor.seq > this._settled.seq) {
        this._settled = cursor;
      }
      drop += 1;
    }
    if (drop > 0) this._arrivals.splice(0, drop);
  }

  /**
   * Returns the cursor to resume a subscription from: its position, or after a WebTransport
   * drop the held-back point when that is earlier, but never before the subscription's start.
   */
  _resumeCursor(sub) {
    const position = sub.position ?? sub.start;
    const held = this._resumePoint;
    if (held === undefined || !position) return position;
    if (held === null) return sub.start;
    if (held.epoch !== position.epoch || held.seq >= position.seq) return position;
    return this._later(sub.start, held);
  }

  /** Returns the later of two cursors; across epochs, the one of the current epoch. */
  _later(a, b) {
    if (!a) return b;
    if (!b) return a;
    if (a.epoch !== b.epoch) return b.epoch === this._epoch ? b : a;
    return b.seq > a.seq ? b : a;
  }

  _observeEpoch(cursor) {
    if (this._epoch === cursor.epoch) return;
    if (this._epoch !== null) {
      this._seen.clear();
      this._arrivals = [];
      this._settled = null;
    }
    this._epoch = cursor.epoch;
  }

  /**
   * Records that everything up to `cursor` was delivered, for the subscriptions matching
   * `topic`, or for all of them when `topic` is null (SSE and polling carry every
   * subscription on one ordered stream).
   */
  // NOTE: on WebSocket and WebTransport an event that matches two subscriptions moves both
  // positions, even while one of them still replays older events. A drop during that replay
  // resumes it after the shared event and skips the rest of the replay.
  _advance(cursor, topic) {
    this._observeEpoch(cursor);
    this._last = this._later(this._last, cursor);
    for (const sub of this._subs.values()) {
      if (topic === null || sub.filters.some((f) => topicMatches(f, topic))) {
        sub.position = this._later(sub.position, cursor);
      }
    }
  }

  _handleEvent(envelope, transport) {
    const cursor = parseCursor(envelope.cursor);
    if (cursor) {
      this._observeEpoch(cursor);
      if (this._seen.has(cursor.seq)) return;
      if (!this._isSubscribed(envelope.topic, cursor)) return;
      this._seen.add(cursor.seq);
      if (this._seen.size > SEEN_LIMIT) {
        // A Set iterates in insertion order, so this drops the oldest entry.
        this._seen.delete(this._seen.values().next().value);
      }
      const streaming = transport === 'sse' || transport === 'polling';
      this._advance(cursor, streaming ? null : envelope.topic);
      if (this.options.resumeWindow) {
        const now = Date.now();
        this._arrivals.push({ cursor, at: now });
        this._pruneArrivals(now - this.options.resumeWindow);
      }
    }
    this._emit('onEvent', {
      topic: envelope.topic,
      name: envelope.event ?? null,
      cursor: envelope.cursor ?? null,
      payload: envelopePayload(envelope),
      transport,
    });
  }

  /** Returns whether some subscription matches the topic and started before this event. */
  _isSubscribed(topic, cursor) {
    for (const sub of this._subs.values()) {
      if (!sub.filters.some((f) => topicMatches(f, topic))) continue;
      const start = sub.start;
      if (!start || start.epoch !== cursor.epoch || cursor.seq > start.seq) return true;
    }
    return false;
  }

  _handleTelemetry(topic, payload, transport, via) {
    let matched = false;
    for (const sub of this._subs.values()) {
      if (sub.filters.some((f) => topicMatches(f, topic))) {
        matched = true;
        break;
      }
    }
    if (!matched) return;
    this._emit('onTelemetry', { topic, payload, transport, via });
  }

  /**
   * Handles a resync signal. `cursor` is where the stream continues; polling does not report
   * it, and the first event of the new epoch then sets the position.
   */
  _handleResync(reason, cursor, localSub, transport) {
    if (cursor) {
      this._observeEpoch(cursor);
      this._last = this._later(this._last, cursor);
      for (const sub of this._subs.values()) {
        if (localSub == null || sub.id === localSub) {
          sub.start = cursor;
          sub.position = cursor;
        }
      }
    } else {
      for (const sub of this._subs.values()) {
        sub.start = null;
        sub.position = null;
      }
      this._seen.clear();
    }
    // Every subscription of a connection gets its own signal; the caller hears of each loss once.
    const key = `${reason}/${cursor?.text ?? transport}/${this.connection?.openedAt}`;
    if (key === this._lastResync) return;
    this._lastResync = key;
    this._emit('onResync', { reason, cursor: cursor?.text ?? null, transport });
  }

  _reportError(error) {
    this._emit('onError', error);
  }

  _emit(name, value) {
    const callback = this.options[name];
    if (typeof callback !== 'function') return;
    try {
      callback(value);
    } catch (error) {
      if (name !== 'onError') this._reportError(error);
      else console.error('hubcast onError callback failed', error);
    }
  }
}
