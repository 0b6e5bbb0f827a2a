// The origin behind Pushpin in the fan-out benchmark: it replies to every subscription with GRIP
// headers, so Pushpin keeps the client's response open as an SSE stream on the topic's channel
// and the origin's part ends with this reply.
//
//   node pushpin-origin.mjs --port P
//   GET /sub?topic=T   200 text/event-stream, Grip-Hold: stream, Grip-Channel: T
//
// Events are published to Pushpin's HTTP control port, not to this server.

import http from "node:http";

import { HOST, exitOnSignal, listen, parsePort, requireTopic, sendError } from "./common.mjs";

/** SSE comment that every stream starts with, so a client sees the subscription is open. */
const INITIAL_BODY = ": subscribed\n\n";

/**
 * Characters that Grip-Channel cannot carry in a channel name: it separates channels with
 * commas and parameters with semicolons.
 */
const INVALID_CHANNEL = /[,;\s\x00-\x1f\x7f]/;

const port = parsePort("pushpin-origin.mjs");

const server = http.createServer((req, res) => {
  const url = new URL(req.url, `http://${HOST}`);
  if (url.pathname !== "/sub") {
    sendError(res, 404, `no route for ${req.method} ${url.pathname}: use GET /sub?topic=T`);
    return;
  }
  if (req.method !== "GET") {
    sendError(res, 405, `${req.method} /sub is not allowed: use GET`);
    return;
  }
  const topic = requireTopic(url, res);
  if (topic === null) {
    return;
  }
  if (INVALID_CHANNEL.test(topic)) {
    sendError(res, 400, `invalid topic ${JSON.stringify(topic)}: a Grip-Channel name may not contain commas, semicolons, whitespace or control characters`);
    return;
  }
  res.writeHead(200, {
    "Content-Type": "text/event-stream",
    "Cache-Control": "no-cache",
    "Grip-Hold": "stream",
    "Grip-Channel": topic,
    "Content-Length": Buffer.byteLength(INITIAL_BODY),
  });
  res.end(INITIAL_BODY);
});

listen("pushpin-origin", server, port);
exitOnSignal("pushpin-origin");
