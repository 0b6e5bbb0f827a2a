// The hubcast demo dashboard: live telemetry chart, sensor tiles, ordered event log,
// connection details and a publish form, all driven by hubcast.js.
//
// Query parameters:
//   transport=NAME          use only this transport (webtransport, websocket, sse, polling)
//   exclude=NAME,NAME       never try these transports
//   topics=FILTER,FILTER    subscription filters; `#` (everything) when absent
//   wtTimeout=MS            WebTransport attempt timeout
//   reconnectBase=MS, reconnectMax=MS   backoff caps of the first and of any reconnect
//   ping=MS                 keep-alive ping interval on WebTransport and WebSocket
//   window=SECONDS          initial chart window
//
// Tests read `window.hubcastTest`, which mirrors what the page shows.

import { Hubcast, TRANSPORTS } from './hubcast.js';

const TRANSPORT_LABELS = {
  webtransport: 'WebTransport',
  websocket: 'WebSocket',
  sse: 'SSE',
  polling: 'Long polling',
};

const SKIP_LABELS = {
  excluded: 'excluded',
  safari: 'Safari',
  'not-supported': 'not supported',
  'handshake-failed': 'handshake failed',
  'timed-out': 'timed out',
  unreachable: 'server unreachable',
};

const PALETTE = [
  '#4fc3f7', '#ffb74d', '#81c784', '#f06292', '#ba68c8',
  '#fff176', '#4db6ac', '#e57373', '#9575cd', '#aed581',
];

// Bounds of what the page keeps, so a long session does not grow without limit.
const MAX_TEST_EVENTS = 2000;
const MAX_TEST_TELEMETRY = 2000;
const MAX_LOG_ROWS = 200;
const MAX_CHART_WINDOW_MS = 300_000;

const params = new URLSearchParams(location.search);

function listParam(name) {
  const value = params.get(name);
  return value ? value.split(',').map((s) => s.trim()).filter(Boolean) : [];
}

function numberParam(name) {
  const value = params.get(name);
  if (value == null || value === '') return undefined;
  const number = Number(value);
  return Number.isFinite(number) && number >= 0 ? number : undefined;
}

const $ = (id) => document.getElementById(id);

function element(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text != null) node.textContent = text;
  return node;
}

function payloadText(payload) {
  if (typeof payload === 'string') return payload;
  return `[${payload.length} bytes]`;
}

/** Extracts the number of a telemetry payload: plain number text, a JSON number or `{ value }`. */
function numericValue(payload) {
  if (typeof payload !== 'string') return null;
  const text = payload.trim();
  if (text === '') return null;
  const number = Number(text);
  if (Number.isFinite(number)) return number;
  try {
    const parsed = JSON.parse(text);
    if (typeof parsed === 'number' && Number.isFinite(parsed)) return parsed;
    if (parsed && typeof parsed.value === 'number' && Number.isFinite(parsed.value)) return parsed.value;
  } catch {
    // Not JSON: the payload is shown as text only.
  }
  return null;
}

function unitOf(topic) {
  const last = topic.split('/').pop();
  if (/temp/i.test(last)) return '°C';
  if (/humid/i.test(last)) return '%';
  if (/press/i.test(last)) return 'hPa';
  return '';
}

/** Returns a tile title: the topic without its first segment when it has three or more. */
function shortTopic(topic) {
  const segments = topic.split('/');
  return segments.length >= 3 ? segments.slice(1).join(' · ') : topic;
}

function formatNumber(value) {
  const magnitude = Math.abs(value);
  if (magnitude >= 1000) return value.toFixed(0);
  if (magnitude >= 100) return value.toFixed(1);
  return value.toFixed(2);
}

function clock(time) {
  return new Date(time).toLocaleTimeString([], { hour12: false });
}

// ---- state shared with tests ----

const filters = listParam('topics').length > 0 ? listParam('topics') : ['#'];
const test = {
  ready: false,
  state: 'idle',
  transport: null,
  reasons: [],
  events: [],
  eventCount: 0,
  telemetry: [],
  telemetryCount: 0,
  telemetryVia: {},
  resyncs: [],
  statuses: [],
  errors: [],
  connections: 0,
  filters,
  client: null,
};
window.hubcastTest = test;

function keepLast(list, item, max) {
  list.push(item);
  if (list.length > max) list.splice(0, list.length - max);
}

// ---- chart ----

/** Rolling line chart of numeric telemetry on a canvas. */
class LiveChart {
  constructor(canvas, windowSeconds) {
    this.canvas = canvas;
    this.context = canvas.getContext('2d');
    this.windowMs = windowSeconds * 1000;
    this.series = new Map();
    this.thresholds = new Map();
    this.lastDraw = 0;
    this.onSeries = null;
  }

  add(topic, value, time) {
    let series = this.series.get(topic);
    if (!series) {
      series = {
        topic,
        color: PALETTE[this.series.size % PALETTE.length],
        points: [],
        visible: true,
        last: value,
      };
      this.series.set(topic, series);
      this.onSeries?.(series);
    }
    series.points.push({ time, value });
    series.last = value;
    const horizon = time - MAX_CHART_WINDOW_MS - 5000;
    let drop = 0;
    while (drop < series.points.length && series.points[drop].time < horizon) drop += 1;
    if (drop > 0) series.points.splice(0, drop);
  }

  setThreshold(label, value) {
    this.thresholds.set(label, value);
  }

  start() {
    const frame = (now) => {
      // About 30 frames a second is smooth enough for a scrolling time axis.
      if (now - this.lastDraw > 33) {
        this.lastDraw = now;
        this.draw();
      }
      requestAnimationFrame(frame);
    };
    requestAnimationFrame(frame);
  }

  draw() {
    const { canvas, context: g } = this;
    const ratio = window.devicePixelRatio || 1;
    const width = canvas.clientWidth;
    const height = canvas.clientHeight;
    if (width === 0 || height === 0) return;
    if (canvas.width !== Math.round(width * ratio) || canvas.height !== Math.round(height * ratio)) {
      canvas.width = Math.round(width * ratio);
      canvas.height = Math.round(height * ratio);
    }
    g.setTransform(ratio, 0, 0, ratio, 0, 0);
    g.clearRect(0, 0, width, height);

    const now = Date.now();
    const start = now - this.windowMs;
    const area = { left: 52, right: width - 14, top: 12, bottom: height - 26 };
    const visible = [...this.series.values()].filter((s) => s.visible);

    let min = Infinity;
    let max = -Infinity;
    for (const series of visible) {
      for (const point of series.points) {
        if (point.time < start) continue;
        min = Math.min(min, point.value);
        max = Math.max(max, point.value);
      }
    }
    if (!Number.isFinite(min)) {
      min = 0;
      max = 1;
    }
    for (const value of this.thresholds.values()) {
      min = Math.min(min, value);
      max = Math.max(max, value);
    }
    const ticks = niceTicks(min, max, 5);
    const low = ticks[0];
    const high = ticks[ticks.length - 1];
    const x = (time) => area.left + ((time - start) / this.windowMs) * (area.right - area.left);
    const y = (value) => area.bottom - ((value - low) / (high - low || 1)) * (area.bottom - area.top);

    g.font = '11px system-ui, sans-serif';
    g.lineWidth = 1;
    g.textBaseline = 'middle';
    g.textAlign = 'right';
    for (const tick of ticks) {
      const ty = Math.round(y(tick)) + 0.5;
      g.strokeStyle = 'rgba(139, 152, 165, 0.15)';
      g.beginPath();
      g.moveTo(area.left, ty);
      g.lineTo(area.right, ty);
      g.stroke();
      g.fillStyle = '#8b98a5';
      g.fillText(formatNumber(tick), area.left - 8, ty);
    }

    const step = this.windowMs <= 60_000 ? 10_000 : 60_000;
    g.textAlign = 'center';
    g.textBaseline = 'top';
    for (let back = 0; back <= this.windowMs; back += step) {
      const tx = Math.round(x(now - back)) + 0.5;
      g.strokeStyle = 'rgba(139, 152, 165, 0.10)';
      g.beginPath();
      g.moveTo(tx, area.top);
      g.lineTo(tx, area.bottom);
      g.stroke();
      g.fillStyle = '#8b98a5';
      const label = back === 0 ? 'now' : `−${back >= 60_000 ? `${back / 60_000} min` : `${back / 1000} s`}`;
      g.fillText(label, tx, area.bottom + 8);
    }

    g.save();
    g.beginPath();
    g.rect(area.left, area.top - 4, area.right - area.left, area.bottom - area.top + 8);
    g.clip();

    for (const [label, value] of this.thresholds) {
      const ty = Math.round(y(value)) + 0.5;
      g.strokeStyle = 'rgba(248, 81, 73, 0.8)';
      g.setLineDash([6, 5]);
      g.beginPath();
      g.moveTo(area.left, ty);
      g.lineTo(area.right, ty);
      g.stroke();
      g.setLineDash([]);
      g.fillStyle = '#f85149';
      g.textAlign = 'left';
      g.textBaseline = 'bottom';
      g.fillText(label, area.left + 6, ty - 3);
    }

    g.lineJoin = 'round';
    g.lineWidth = 2;
    for (const series of visible) {
      const points = series.points.filter((p) => p.time >= start - 2000);
      if (points.length === 0) continue;
      g.strokeStyle = series.color;
      g.beginPath();
      points.forEach((point, i) => {
        if (i === 0) g.moveTo(x(point.time), y(point.value));
        else g.lineTo(x(point.time), y(point.value));
      });
      g.stroke();
      const last = points[points.length - 1];
      g.fillStyle = series.color;
      g.beginPath();
      g.arc(x(last.time), y(last.value), 3.5, 0, Math.PI * 2);
      g.fill();
    }
    g.restore();
  }
}

/** Returns about `count` round tick values covering [min, max], at 1, 2 or 5 times 10^n. */
function niceTicks(min, max, count) {
  if (min === max) {
    min -= 1;
    max += 1;
  }
  const rough = (max - min) / count;
  const power = 10 ** Math.floor(Math.log10(rough));
  const step = [1, 2, 5, 10].map((m) => m * power).find((s) => s >= rough) ?? 10 * power;
  const ticks = [];
  for (let tick = Math.floor(min / step) * step; tick <= max + step * 0.999; tick += step) {
    ticks.push(Number(tick.toPrecision(12)));
  }
  return ticks;
}

// ---- page ----

const chart = new LiveChart($('chart'), numberParam('window') || 60);
const tiles = new Map();
const logEntries = [];
const epochOrder = new Map();
let reservedEpochIndex = null;
let renderQueued = false;
const readingTimes = [];

function selectWindow() {
  const select = $('chart-window');
  const initial = String(numberParam('window') || 60);
  if ([...select.options].some((o) => o.value === initial)) select.value = initial;
  select.addEventListener('change', () => {
    chart.windowMs = Number(select.value) * 1000;
  });
}

chart.onSeries = (series) => {
  const item = element('li');
  item.dataset.topic = series.topic;
  const swatch = element('span', 'swatch');
  swatch.style.background = series.color;
  item.append(swatch, element('span', 'topic', series.topic), element('span', 'value', ''));
  item.title = 'Show or hide this series';
  item.addEventListener('click', () => {
    series.visible = !series.visible;
    item.classList.toggle('off', !series.visible);
  });
  $('legend').append(item);
  $('chart-empty').hidden = true;
};

function updateTile(topic, payload, value, time) {
  let tile = tiles.get(topic);
  if (!tile) {
    $('tiles').querySelector('.empty')?.remove();
    const node = element('div', 'tile');
    node.dataset.topic = topic;
    const color = chart.series.get(topic)?.color;
    if (color) node.style.setProperty('--tile-color', color);
    const reading = element('div', 'reading');
    const number = element('span', 'number', '—');
    const unit = element('span', 'unit', unitOf(topic));
    reading.append(number, unit);
    const spark = element('canvas', 'spark');
    node.append(
      element('div', 'name', shortTopic(topic)),
      reading,
      spark,
      element('div', 'range', ''),
      element('span', 'badge', 'ALARM'),
    );
    node.title = topic;
    $('tiles').append(node);
    tile = { node, number, spark, range: node.querySelector('.range'), min: Infinity, max: -Infinity };
    tiles.set(topic, tile);
  }
  if (value == null) {
    tile.number.textContent = payloadText(payload).slice(0, 24);
  } else {
    tile.number.textContent = formatNumber(value);
    tile.min = Math.min(tile.min, value);
    tile.max = Math.max(tile.max, value);
    tile.range.textContent = `min ${formatNumber(tile.min)} · max ${formatNumber(tile.max)}`;
  }
  tile.node.dataset.updated = String(time);
}

/** Draws each tile's sparkline from the chart's points over the chart window. */
function drawSparklines() {
  const now = Date.now();
  const ratio = window.devicePixelRatio || 1;
  for (const [topic, tile] of tiles) {
    const series = chart.series.get(topic);
    const canvas = tile.spark;
    const width = canvas.clientWidth;
    const height = canvas.clientHeight;
    if (!series || width === 0 || height === 0) continue;
    canvas.width = Math.round(width * ratio);
    canvas.height = Math.round(height * ratio);
    const g = canvas.getContext('2d');
    g.setTransform(ratio, 0, 0, ratio, 0, 0);
    const points = series.points.filter((p) => p.time >= now - chart.windowMs);
    if (points.length < 2) continue;
    // The line spans the readings present, so a new sensor's tile is not mostly empty.
    const start = points[0].time;
    const spanMs = Math.max(now - start, 1);
    let min = Infinity;
    let max = -Infinity;
    for (const point of points) {
      min = Math.min(min, point.value);
      max = Math.max(max, point.value);
    }
    const span = max - min || 1;
    g.strokeStyle = series.color;
    g.lineWidth = 1.5;
    g.beginPath();
    points.forEach((point, i) => {
      const px = ((point.time - start) / spanMs) * width;
      const py = height - 2 - ((point.value - min) / span) * (height - 4);
      if (i === 0) g.moveTo(px, py);
      else g.lineTo(px, py);
    });
    g.stroke();
  }
}

function updateLegendValue(topic, value) {
  const item = $('legend').querySelector(`li[data-topic="${CSS.escape(topic)}"] .value`);
  if (item) item.textContent = formatNumber(value);
}

/** Applies an alarm event (`{ sensor, topic, state, threshold }`) to the sensor's tile. */
function applyAlarm(event) {
  let alarm;
  try {
    alarm = JSON.parse(event.payload);
  } catch {
    return;
  }
  if (!alarm || typeof alarm !== 'object') return;
  if (typeof alarm.threshold === 'number') chart.setThreshold(`alarm above ${alarm.threshold}`, alarm.threshold);
  let tile = alarm.topic ? tiles.get(alarm.topic) : undefined;
  if (!tile && alarm.sensor) {
    tile = [...tiles.entries()].find(([topic]) => topic.split('/').includes(alarm.sensor))?.[1];
  }
  if (tile) tile.node.classList.toggle('alarm', alarm.state !== 'cleared');
}

function epochIndex(epoch) {
  if (!epochOrder.has(epoch)) {
    if (reservedEpochIndex != null) {
      epochOrder.set(epoch, reservedEpochIndex);
      reservedEpochIndex = null;
    } else {
      epochOrder.set(epoch, epochOrder.size);
    }
  }
  return epochOrder.get(epoch);
}

function cursorKey(cursor) {
  const match = /^([0-9a-f]{16})-(\d+)$/i.exec(cursor || '');
  if (!match) return null;
  return [epochIndex(match[1].toLowerCase()), Number(match[2])];
}

function compareKeys(a, b) {
  return a[0] - b[0] || a[1] - b[1];
}

/** Inserts a log entry in cursor order; events almost always arrive in order, so scan back. */
function insertLogEntry(entry) {
  let i = logEntries.length;
  while (i > 0 && compareKeys(logEntries[i - 1].key, entry.key) > 0) i -= 1;
  logEntries.splice(i, 0, entry);
  if (logEntries.length > MAX_LOG_ROWS) logEntries.splice(0, logEntries.length - MAX_LOG_ROWS);
  queueRender();
}

function queueRender() {
  if (renderQueued) return;
  renderQueued = true;
  requestAnimationFrame(renderLog);
}

function renderLog() {
  renderQueued = false;
  const list = $('log');
  const rows = [];
  for (let i = logEntries.length - 1; i >= 0; i -= 1) {
    const entry = logEntries[i];
    if (!entry.row) entry.row = logRow(entry);
    rows.push(entry.row);
  }
  list.replaceChildren(...rows);
  $('event-count').textContent = `${test.eventCount} event${test.eventCount === 1 ? '' : 's'}`;
}

function logRow(entry) {
  const row = element('li', 'fresh');
  // Re-rendering moves rows, and a moved row would replay its highlight.
  row.addEventListener('animationend', () => row.classList.remove('fresh'), { once: true });
  if (entry.kind === 'resync') {
    row.classList.add('resync');
    row.append(
      element('span', 'time', clock(entry.time)),
      element('span', 'text', `resync (${entry.reason}): events before ${entry.cursor ?? 'this point'} could not be replayed`),
    );
    return row;
  }
  const event = entry.event;
  if (event.name === 'alarm') row.classList.add('alarm');
  if (event.name === 'cleared') row.classList.add('cleared');
  const seq = event.cursor ? `#${event.cursor.split('-')[1]}` : '';
  row.title = `cursor ${event.cursor ?? 'none'} via ${event.transport}`;
  row.append(
    element('span', 'time', clock(entry.time)),
    element('span', 'seq', seq),
    element('span', 'topic', event.topic),
    element('span', 'name', event.name ?? ''),
    element('span', 'payload', describePayload(event)),
  );
  return row;
}

/** Returns the log text of an event: a sentence for the simulator's alarms, else the payload. */
function describePayload(event) {
  const text = payloadText(event.payload);
  if (event.name !== 'alarm' && event.name !== 'cleared') return text;
  try {
    const alarm = JSON.parse(text);
    if (typeof alarm.value === 'number' && typeof alarm.threshold === 'number') {
      const unit = unitOf(alarm.topic ?? '');
      const verb = alarm.state === 'cleared' ? 'back to' : 'reached';
      return `${alarm.sensor ?? event.topic} ${verb} ${formatNumber(alarm.value)}${unit} (alarm above ${formatNumber(alarm.threshold)}${unit})`;
    }
  } catch {
    // Not the simulator's JSON: show it as it came.
  }
  return text;
}

function renderConnection(status) {
  const pill = $('status');
  pill.dataset.state = status.state;
  const label = TRANSPORT_LABELS[status.transport] ?? status.transport;
  let text;
  if (status.state === 'open') text = `live · ${label}`;
  else if (status.state === 'reconnecting' && status.delayMs != null) {
    text = `reconnecting in ${(status.delayMs / 1000).toFixed(1)} s (attempt ${status.attempt})`;
  } else if (status.state === 'reconnecting') text = 'reconnecting…';
  else if (status.state === 'connecting') text = 'connecting…';
  else text = status.state;
  $('status-text').textContent = text;
  $('transport-name').textContent = status.state === 'open' ? label : `${label ?? '—'} (${status.state})`;

  const chain = $('chain');
  chain.replaceChildren();
  for (const name of TRANSPORTS) {
    const reason = status.reasons.find((r) => r.transport === name);
    const item = element('li');
    item.dataset.transport = name;
    item.append(element('span', 'name', TRANSPORT_LABELS[name]));
    if (reason) {
      item.classList.add('skipped');
      item.append(element('span', 'why', `${SKIP_LABELS[reason.code] ?? reason.code}: ${reason.message}`));
    } else if (status.state === 'open' && status.transport === name) {
      item.classList.add('used');
      item.append(element('span', 'why', 'in use'));
    } else {
      item.append(element('span', 'why', status.state === 'open' ? 'not needed' : 'pending'));
    }
    chain.append(item);
  }
}

function markForcedTransport() {
  const forced = params.get('transport') || '';
  for (const link of document.querySelectorAll('.force a')) {
    link.classList.toggle('current', link.dataset.transport === forced && !params.get('exclude'));
  }
}

async function showSimulatorCommand() {
  try {
    const response = await fetch('/v1/cert-hash', { cache: 'no-store' });
    if (!response.ok) return;
    const info = await response.json();
    const hash = info.generated ? ` --cert-hash ${info.hex}` : '';
    $('simulator-command').textContent =
      `cargo run --example simulator -- https://${location.hostname}:${info.quic_port}${info.webtransport_path}${hash}`;
  } catch {
    // The hint keeps its placeholder; the connection panel reports the failure.
  }
}

function setupPublishForm(client) {
  const form = $('publish-form');
  const result = $('publish-result');
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    const topic = $('publish-topic').value.trim();
    const kind = $('publish-class').value;
    const name = $('publish-event').value.trim();
    const payload = $('publish-payload').value;
    result.className = 'muted';
    result.textContent = 'publishing…';
    try {
      if (kind === 'telemetry') {
        await client.publishTelemetry(topic, payload);
        result.textContent = `sent telemetry to ${topic}`;
      } else {
        const { cursor } = await client.publish(topic, payload, name ? { event: name } : {});
        result.textContent = `published ${cursor ? `#${cursor.split('-')[1]}` : ''}`;
      }
      result.className = 'ok';
    } catch (error) {
      result.className = 'bad';
      result.textContent = `failed: ${error.message}`;
    }
  });
}

function updateRate() {
  const now = Date.now();
  while (readingTimes.length > 0 && readingTimes[0] < now - 5000) readingTimes.shift();
  $('telemetry-rate').textContent = `${(readingTimes.length / 5).toFixed(1)} readings/s`;
}

// ---- client ----

const client = new Hubcast({
  transport: params.get('transport') || null,
  exclude: listParam('exclude'),
  webTransportTimeout: numberParam('wtTimeout'),
  reconnectBaseDelay: numberParam('reconnectBase'),
  reconnectMaxDelay: numberParam('reconnectMax'),
  pingInterval: numberParam('ping'),
  onEvent(event) {
    const time = Date.now();
    test.eventCount += 1;
    keepLast(test.events, { ...event, payload: payloadText(event.payload), time }, MAX_TEST_EVENTS);
    if (event.name === 'alarm' || event.name === 'cleared') applyAlarm(event);
    const key = cursorKey(event.cursor) ?? [epochOrder.size, Number.MAX_SAFE_INTEGER];
    insertLogEntry({ kind: 'event', key, event, time });
  },
  onTelemetry(reading) {
    const time = Date.now();
    test.telemetryCount += 1;
    test.telemetryVia[reading.via] = (test.telemetryVia[reading.via] ?? 0) + 1;
    keepLast(test.telemetry, { ...reading, payload: payloadText(reading.payload), time }, MAX_TEST_TELEMETRY);
    readingTimes.push(time);
    const value = numericValue(reading.payload);
    if (value != null) {
      chart.add(reading.topic, value, time);
      updateLegendValue(reading.topic, value);
    }
    updateTile(reading.topic, reading.payload, value, time);
  },
  onResync(resync) {
    const time = Date.now();
    test.resyncs.push({ ...resync, time });
    $('resync-count').textContent = String(test.resyncs.length);
    let key = cursorKey(resync.cursor);
    if (!key) {
      reservedEpochIndex = epochOrder.size;
      key = [reservedEpochIndex, -1];
    }
    insertLogEntry({ kind: 'resync', key, reason: resync.reason, cursor: resync.cursor, time });
  },
  onStatus(status) {
    test.state = status.state;
    test.transport = status.state === 'open' ? status.transport : test.transport;
    test.reasons = status.reasons;
    keepLast(test.statuses, { ...status, time: Date.now() }, 200);
    if (status.state === 'open') {
      test.connections += 1;
      $('reconnects').textContent = String(test.connections - 1);
    }
    renderConnection(status);
  },
  onError(error) {
    keepLast(test.errors, { message: error.message, code: error.code ?? null, time: Date.now() }, 200);
    console.warn('hubcast:', error);
  },
});
test.client = client;

$('filters').textContent = filters.join(', ');
selectWindow();
markForcedTransport();
setupPublishForm(client);
showSimulatorCommand();
chart.start();
setInterval(drawSparklines, 500);
setInterval(() => {
  updateRate();
  $('cursor').textContent = client.cursor ?? '—';
}, 1000);

client.subscribe(filters).catch((error) => {
  keepLast(test.errors, { message: error.message, code: error.code ?? null, time: Date.now() }, 200);
  $('status-text').textContent = `subscription rejected: ${error.message}`;
});
client.connect().then(() => {
  test.ready = true;
});
