// A hand-rolled WebSocket broadcast hub on the `ws` package, the fan-out benchmark's baseline
// for what a Node user would write instead of running hubcast.
//
//   node ws-hub.mjs --port P
//   WebSocket upgrade on /sub?topic=T   subscribes that socket to T
//   POST /publish?topic=T (body)        sends the body as one text message to every subscriber
//                                       of T, then replies 204

import http from "node:http";

import { WebSocket, WebSocketServer } from "ws";

import { HOST, exitOnSignal, listen, parsePort, readBody, requireTopic, sendError } from "./common.mjs";

/**
 * Bytes a socket may have queued in user space before the hub closes it as too slow. Without a
 * bound, one stalled subscriber would grow the process until it runs out of memory.
 */
const MAX_BUFFERED_BYTES = 8 << 20;

const port = parsePort("ws-hub.mjs");

/** Subscribed sockets by topic. */
const topics = new Map();

function subscribe(topic, socket) {
  let sockets = topics.get(topic);
  if (!sockets) {
    sockets = new Set();
    topics.set(topic, sockets);
  }
  sockets.add(socket);
  socket.on("close", () => {
    sockets.delete(socket);
    if (sockets.size === 0 && topics.get(topic) === sockets) {
      topics.delete(topic);
    }
  });
  socket.on("error", (error) => console.error(`ws-hub: socket error on topic ${topic}: ${error.message}`));
}

let slowClosed = 0;

function publish(topic, payload) {
  const sockets = topics.get(topic);
  if (!sockets) {
    return;
  }
  for (const socket of sockets) {
    if (socket.readyState !== WebSocket.OPEN) {
      continue;
    }
    if (socket.bufferedAmount > MAX_BUFFERED_BYTES) {
      slowClosed += 1;
      if (slowClosed === 1 || slowClosed % 1000 === 0) {
        console.error(`ws-hub: closed ${slowClosed} subscribers with more than ${MAX_BUFFERED_BYTES} bytes queued`);
      }
      socket.terminate();
      continue;
    }
    // The Buffer goes out as is in a text frame, so it is not re-encoded once per subscriber.
    socket.send(payload, { binary: false });
  }
}

const server = http.createServer(async (req, res) => {
  const url = new URL(req.url, `http://${HOST}`);
  if (url.pathname !== "/publish") {
    sendError(res, 404, `no route for ${req.method} ${url.pathname}: use POST /publish?topic=T or a WebSocket upgrade on /sub?topic=T`);
    return;
  }
  if (req.method !== "POST") {
    sendError(res, 405, `${req.method} /publish is not allowed: use POST`);
    return;
  }
  const topic = requireTopic(url, res);
  if (topic === null) {
    return;
  }
  let payload;
  try {
    payload = await readBody(req);
  } catch (error) {
    console.error(`ws-hub: failed to read a publish body for topic ${topic}: ${error.message}`);
    return;
  }
  publish(topic, payload);
  res.writeHead(204).end();
});

const wss = new WebSocketServer({ noServer: true, perMessageDeflate: false });

server.on("upgrade", (req, socket, head) => {
  const url = new URL(req.url, `http://${HOST}`);
  const topic = url.searchParams.get("topic");
  if (url.pathname !== "/sub" || !topic) {
    socket.end(
      "HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\n" +
        `invalid upgrade target ${url.pathname}${url.search}: use /sub?topic=NAME\n`,
    );
    return;
  }
  wss.handleUpgrade(req, socket, head, (ws) => subscribe(topic, ws));
});

listen("ws-hub", server, port);
exitOnSignal("ws-hub");
