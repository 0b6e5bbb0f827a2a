// Helpers shared by the Node peer servers: the command line, request bodies and plain replies.

/** Host every peer binds to; the benchmark never leaves loopback. */
export const HOST = "127.0.0.1";

/**
 * Parses `--port P` from the command line and exits with a usage message when it is missing
 * or not a TCP port.
 */
export function parsePort(program, argv = process.argv.slice(2)) {
  const usage = `usage: node ${program} --port PORT (1-65535; run.sh uses 18000-18999)`;
  const index = argv.indexOf("--port");
  if (index === -1 || index + 1 >= argv.length) {
    fail(`missing --port\n${usage}`);
  }
  const text = argv[index + 1];
  const port = Number(text);
  if (!Number.isInteger(port) || port < 1 || port > 65535) {
    fail(`invalid --port ${JSON.stringify(text)}: expected an integer from 1 to 65535\n${usage}`);
  }
  return port;
}

function fail(message) {
  console.error(message);
  process.exit(2);
}

/** Reads a whole request body into one Buffer. */
export function readBody(req) {
  return new Promise((resolve, reject) => {
    const chunks = [];
    req.on("data", (chunk) => chunks.push(chunk));
    req.on("end", () => resolve(chunks.length === 1 ? chunks[0] : Buffer.concat(chunks)));
    req.on("error", reject);
  });
}

/** Sends a plain-text error reply with `status`. */
export function sendError(res, status, message) {
  res.writeHead(status, { "Content-Type": "text/plain; charset=utf-8" });
  res.end(`${message}\n`);
}

/**
 * Returns the `topic` query parameter of `url`, or null after sending a 400 reply when it is
 * missing or empty.
 */
export function requireTopic(url, res) {
  const topic = url.searchParams.get("topic");
  if (!topic) {
    sendError(res, 400, `missing topic query parameter in ${url.pathname}${url.search}: add ?topic=NAME`);
    return null;
  }
  return topic;
}

/** Starts `server` on HOST:port, exiting with a clear message when the port cannot be bound. */
export function listen(name, server, port) {
  server.on("error", (error) => {
    if (!server.listening) {
      console.error(`${name}: failed to listen on ${HOST}:${port}: ${error.message}; stop the process listening there or pass another --port`);
      process.exit(1);
    }
    console.error(`${name}: server error: ${error.message}`);
  });
  server.listen(port, HOST, () => console.error(`${name}: listening on ${HOST}:${port}`));
}

/** Logs SIGINT and SIGTERM and exits at once: run.sh stops a peer by its pid. */
export function exitOnSignal(name) {
  for (const signal of ["SIGINT", "SIGTERM"]) {
    process.on(signal, () => {
      console.error(`${name}: ${signal} received, exiting`);
      process.exit(0);
    });
  }
}
