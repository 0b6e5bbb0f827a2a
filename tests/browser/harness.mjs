// Shared pieces of the browser tests: hubcast servers on loopback, the device simulator, and
// Chromium (playwright-core) or Firefox ESR (puppeteer-core over WebDriver BiDi) behind one
// small page interface.

import { spawn } from 'node:child_process';
import dgram from 'node:dgram';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

export const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');
export const ARTIFACTS = path.join(ROOT, 'test-artifacts');
const SERVER_BINARY = path.join(ROOT, 'target', 'debug', 'hubcast');
const SIMULATOR_BINARY = path.join(ROOT, 'target', 'debug', 'examples', 'simulator');
const CHROMIUM = process.env.HUBCAST_CHROMIUM || '/usr/bin/chromium';
const FIREFOX = process.env.HUBCAST_FIREFOX || '/usr/bin/firefox-esr';

// Chromium flags: no sandbox (tests run as root), no GPU, and no traffic to Google services.
// QUIC stays enabled because WebTransport runs on it.
const CHROMIUM_ARGS = [
  '--no-sandbox',
  '--disable-gpu',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
  '--disable-dev-shm-usage',
  '--no-proxy-server',
];

// A closed loopback port: Firefox services that cannot be switched off by a boolean are pointed
// here, so no request leaves the machine.
const NOWHERE = 'http://127.0.0.1:9/';

// Firefox ESR preferences for a quiet, offline profile: no remote settings, DNS over HTTPS,
// captive portal or connectivity checks, safe browsing, telemetry, updates or prefetching.
const FIREFOX_PREFS = {
  'services.settings.server': NOWHERE,
  'extensions.webservice.discoverURL': NOWHERE,
  'datareporting.healthreport.documentServerURI': NOWHERE,
  'network.trr.mode': 5,
  'network.trr.uri': '',
  'network.captive-portal-service.enabled': false,
  'captivedetect.canonicalURL': '',
  'network.connectivity-service.enabled': false,
  'network.connectivity-service.IPv4.url': '',
  'network.connectivity-service.IPv6.url': '',
  'browser.safebrowsing.malware.enabled': false,
  'browser.safebrowsing.phishing.enabled': false,
  'browser.safebrowsing.downloads.enabled': false,
  'browser.safebrowsing.downloads.remote.enabled': false,
  'browser.safebrowsing.blockedURIs.enabled': false,
  'browser.safebrowsing.provider.google.updateURL': '',
  'browser.safebrowsing.provider.google4.updateURL': '',
  'browser.safebrowsing.provider.mozilla.updateURL': '',
  'toolkit.telemetry.enabled': false,
  'toolkit.telemetry.unified': false,
  'toolkit.telemetry.archive.enabled': false,
  'toolkit.telemetry.server': NOWHERE,
  'datareporting.healthreport.uploadEnabled': false,
  'datareporting.policy.dataSubmissionEnabled': false,
  'browser.ping-centre.telemetry': false,
  'app.normandy.enabled': false,
  'app.shield.optoutstudies.enabled': false,
  'app.update.enabled': false,
  'app.update.auto': false,
  'extensions.update.enabled': false,
  'extensions.blocklist.enabled': false,
  'extensions.getAddons.cache.enabled': false,
  'browser.search.update': false,
  'browser.region.update.enabled': false,
  'browser.region.network.url': '',
  'geo.provider.network.url': '',
  'media.gmp-manager.url': NOWHERE,
  'media.gmp-gmpopenh264.enabled': false,
  'security.OCSP.enabled': 0,
  'security.remote_settings.crlite_filters.enabled': false,
  'security.remote_settings.intermediates.enabled': false,
  'network.dns.disablePrefetch': true,
  'network.prefetch-next': false,
  'network.http.speculative-parallel-limit': 0,
  'network.proxy.type': 0,
  'browser.newtabpage.enabled': false,
  'browser.startup.page': 0,
  'browser.shell.checkDefaultBrowser': false,
};

/** Throws an error naming each missing binary and the command that builds it. */
export function requireBuilt() {
  for (const [file, command] of [
    [SERVER_BINARY, 'cargo build'],
    [SIMULATOR_BINARY, 'cargo build --example simulator'],
  ]) {
    if (!fs.existsSync(file)) {
      throw new Error(`missing ${file}: run \`${command}\` first (scripts/browser-tests.sh does)`);
    }
  }
}

export function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

// Temporary directories of this test process, removed when it exits.
const temporaryDirs = [];
process.on('exit', () => {
  for (const dir of temporaryDirs) fs.rmSync(dir, { recursive: true, force: true });
});

export function tempDir(prefix) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), `hubcast-${prefix}-`));
  temporaryDirs.push(dir);
  return dir;
}

/** Binds `port` (0 for any) on `host`, releases it and returns it, or null when it is taken. */
function probePort(kind, host, port) {
  return new Promise((resolve) => {
    if (kind === 'tcp') {
      const server = net.createServer();
      server.once('error', () => resolve(null));
      server.listen(port, host, () => {
        const bound = server.address().port;
        server.close(() => resolve(bound));
      });
    } else {
      const socket = dgram.createSocket(host.includes(':') ? 'udp6' : 'udp4');
      socket.once('error', () => resolve(null));
      socket.bind(port, host, () => {
        const bound = socket.address().port;
        socket.close(() => resolve(bound));
      });
    }
  });
}

/**
 * Returns a port of `kind` that was free a moment ago on 127.0.0.1 and on ::1 alike, so a
 * page opened as `localhost` cannot reach another program listening on ::1.
 */
async function freePort(kind) {
  for (let attempt = 0; attempt < 50; attempt += 1) {
    const port = await probePort(kind, '127.0.0.1', 0);
    if (port && (await probePort(kind, '::1', port)) === port) return port;
  }
  throw new Error(`no ${kind} port was free on both 127.0.0.1 and ::1 after 50 attempts`);
}

/** Returns a TCP port and a UDP port that were free a moment ago on both loopback addresses. */
export async function freePorts() {
  return { httpPort: await freePort('tcp'), quicPort: await freePort('udp') };
}

/**
 * Starts target/debug/hubcast on the given loopback ports and waits for /healthz. The same
 * ports and certificate directory can start it again after `stop()`.
 */
export async function startServer({ httpPort, quicPort, certDir, timeoutMs = 20000 } = {}) {
  requireBuilt();
  const ports = httpPort && quicPort ? { httpPort, quicPort } : await freePorts();
  const certs = certDir ?? path.join(tempDir('certs'), 'certs');
  const args = [
    '--http-listen', `127.0.0.1:${ports.httpPort}`,
    '--quic-listen', `127.0.0.1:${ports.quicPort}`,
    '--cert-dir', certs,
    '--web-dir', path.join(ROOT, 'web'),
  ];
  const child = spawn(SERVER_BINARY, args, {
    cwd: ROOT,
    env: { ...process.env, RUST_LOG: process.env.RUST_LOG || 'info', NO_COLOR: '1' },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const log = [];
  const collect = (chunk) => {
    log.push(chunk.toString());
    if (log.length > 2000) log.splice(0, log.length - 2000);
  };
  child.stdout.on('data', collect);
  child.stderr.on('data', collect);
  const exited = new Promise((resolve) => child.once('exit', (code, signal) => resolve({ code, signal })));

  const origin = `http://127.0.0.1:${ports.httpPort}`;
  const server = {
    ...ports,
    certDir: certs,
    origin,
    process: child,
    log: () => log.join(''),
    /** Stops the server with `signal`, SIGKILL after 8 s if it is still running. */
    async stop(signal = 'SIGTERM') {
      if (child.exitCode !== null || child.signalCode !== null) return;
      child.kill(signal);
      const done = await Promise.race([exited, sleep(8000).then(() => null)]);
      if (!done) {
        child.kill('SIGKILL');
        await exited;
      }
    },
  };

  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (child.exitCode !== null) {
      throw new Error(`hubcast exited with code ${child.exitCode} while starting:\n${server.log()}`);
    }
    try {
      const response = await fetch(`${origin}/healthz`, { signal: AbortSignal.timeout(1000) });
      if (response.ok) return server;
    } catch {
      // Not listening yet.
    }
    if (Date.now() > deadline) {
      await server.stop();
      throw new Error(`hubcast did not answer /healthz on ${origin} within ${timeoutMs} ms:\n${server.log()}`);
    }
    await sleep(100);
  }
}

/** Publishes through `POST /v1/publish` and returns the JSON reply. */
export async function publish(server, topic, payload, { event, kind } = {}) {
  const params = new URLSearchParams({ topic });
  if (event) params.set('event', event);
  if (kind) params.set('class', kind);
  const response = await fetch(`${server.origin}/v1/publish?${params}`, {
    method: 'POST',
    body: payload,
    signal: AbortSignal.timeout(5000),
  });
  const body = await response.text();
  if (!response.ok) throw new Error(`publish to ${topic} failed with HTTP ${response.status}: ${body}`);
  return JSON.parse(body);
}

/**
 * Runs the device simulator against `server` for a bounded time. Resolves with its exit code
 * and output; `stop()` ends it early.
 */
export async function runSimulator(server, { sensors = 3, rate = 10, duration = 20, extra = [] } = {}) {
  requireBuilt();
  const response = await fetch(`${server.origin}/v1/cert-hash`, { signal: AbortSignal.timeout(5000) });
  const info = await response.json();
  const args = [
    `https://127.0.0.1:${server.quicPort}/v1/wt`,
    '--cert-hash', info.hex,
    '--sensors', String(sensors),
    '--rate', String(rate),
    '--duration', String(duration),
    ...extra,
  ];
  const child = spawn(SIMULATOR_BINARY, args, {
    cwd: ROOT,
    env: { ...process.env, NO_COLOR: '1' },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let output = '';
  child.stdout.on('data', (chunk) => (output += chunk));
  child.stderr.on('data', (chunk) => (output += chunk));
  const finished = new Promise((resolve) => {
    child.once('exit', (code, signal) => resolve({ code, signal, output }));
  });
  return {
    finished,
    output: () => output,
    async stop() {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGTERM');
      return finished;
    },
  };
}

/**
 * Launches headless Chromium through playwright-core and returns { browser, open(url) }.
 * A browser that cannot start fails the test with the reason and the fix.
 */
export async function launchChromium() {
  if (!fs.existsSync(CHROMIUM)) {
    throw new Error(`Chromium not found at ${CHROMIUM}: install it with \`apt-get install -y chromium\``);
  }
  const { chromium } = await import('playwright-core');
  let browser;
  try {
    browser = await chromium.launch({
      executablePath: CHROMIUM,
      headless: true,
      args: CHROMIUM_ARGS,
      timeout: 60000,
    });
  } catch (error) {
    throw new Error(`failed to launch Chromium from ${CHROMIUM}: ${error.message}`);
  }
  return {
    name: 'chromium',
    /**
     * Opens `url` in a new context. `userAgent` overrides the browser's user agent string and
     * `prepare(page)` runs before navigation, for example to install request routes.
     */
    async open(url, { userAgent, prepare } = {}) {
      const context = await browser.newContext({ viewport: { width: 1400, height: 1000 }, userAgent });
      const page = await context.newPage();
      const console = [];
      page.on('console', (message) => console.push(`${message.type()}: ${message.text()}`));
      page.on('pageerror', (error) => console.push(`pageerror: ${error.message}`));
      await prepare?.(page);
      await page.goto(url, { timeout: 20000 });
      return wrapPage(page, console, () => context.close());
    },
    close: () => browser.close(),
  };
}

/**
 * Launches headless Firefox ESR through puppeteer-core over WebDriver BiDi, with a fresh
 * profile and the quiet preferences above.
 */
export async function launchFirefox() {
  if (!fs.existsSync(FIREFOX)) {
    throw new Error(`Firefox ESR not found at ${FIREFOX}: install it with \`apt-get install -y firefox-esr\``);
  }
  const puppeteer = (await import('puppeteer-core')).default;
  const profile = tempDir('firefox-profile');
  let browser;
  try {
    browser = await puppeteer.launch({
      browser: 'firefox',
      protocol: 'webDriverBiDi',
      executablePath: FIREFOX,
      headless: true,
      userDataDir: profile,
      extraPrefsFirefox: FIREFOX_PREFS,
      timeout: 60000,
    });
  } catch (error) {
    throw new Error(`failed to launch Firefox ESR from ${FIREFOX}: ${error.message}`);
  }
  return {
    name: 'firefox',
    async open(url) {
      const page = await browser.newPage();
      await page.setViewport({ width: 1400, height: 1000 });
      const console = [];
      page.on('console', (message) => console.push(`${message.type()}: ${message.text()}`));
      page.on('pageerror', (error) => console.push(`pageerror: ${error.message}`));
      await page.goto(url, { timeout: 20000 });
      return wrapPage(page, console, () => page.close());
    },
    async close() {
      await browser.close();
      fs.rmSync(profile, { recursive: true, force: true });
    },
  };
}

function wrapPage(page, console, close) {
  return {
    raw: page,
    console,
    evaluate: (fn, arg) => page.evaluate(fn, arg),
    screenshot: (file) => page.screenshot({ path: file, fullPage: true }),
    close,
    /** The page's `window.hubcastTest` without the client object. */
    state: () =>
      page.evaluate(() => {
        const { client, ...rest } = window.hubcastTest ?? {};
        return JSON.parse(JSON.stringify(rest));
      }),
  };
}

/**
 * Polls `predicate(state)` on the page's test state until it holds, or fails after `timeoutMs`
 * with `description` and a summary of the state.
 */
export async function waitForState(page, predicate, description, timeoutMs = 20000) {
  const deadline = Date.now() + timeoutMs;
  let state;
  for (;;) {
    state = await page.state();
    if (predicate(state)) return state;
    if (Date.now() > deadline) break;
    await sleep(200);
  }
  const summary = {
    state: state.state,
    transport: state.transport,
    reasons: state.reasons,
    events: state.events?.length,
    telemetryCount: state.telemetryCount,
    telemetryVia: state.telemetryVia,
    resyncs: state.resyncs,
    errors: state.errors?.slice(-5),
    statuses: state.statuses?.slice(-5),
  };
  throw new Error(
    `timed out after ${timeoutMs} ms waiting for ${description}\npage state: ${JSON.stringify(summary, null, 2)}\n` +
      `console:\n${page.console.slice(-20).join('\n')}`,
  );
}
