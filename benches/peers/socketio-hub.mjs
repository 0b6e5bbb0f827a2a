// A Socket.IO v4 hub with one room per topic, a fan-out benchmark peer.
//
//   node socketio-hub.mjs --port P
//   Socket.IO on /socket.io/ (default parser, WebSocket transport allowed, no compression)
//   client event "join" with a topic   joins the room of that name, then calls the ack if given
//   POST /publish?topic=T (body)       does io.to(T).emit("event", body), then replies 204
//
// The load generator speaks Engine.IO v4 over a raw WebSocket: `40` to connect,
// `421["join","T"]` acknowledged with `431[]`, deliveries as `42["event","<payload>"]`.

import http from "node:http";

import { Server } from "socket.io";

import { HOST, exitOnSignal, listen, parsePort, readBody, requireTopic, sendError } from "./common.mjs";

const port = parsePort("socketio-hub.mjs");

const server = http.createServer(async (req, res) => {
  // Socket.IO handles its own path before this handler runs.
  const url = new URL(req.url, `http://${HOST}`);
  if (url.pathname !== "/publish") {
    sendError(res, 404, `no route for ${req.method} ${url.pathname}: use POST /publish?topic=T or Socket.IO on /socket.io/`);
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
  let body;
  try {
    body = await readBody(req);
  } catch (error) {
    console.error(`socketio-hub: failed to read a publish body for topic ${topic}: ${error.message}`);
    return;
  }
  // A string goes out as a text packet; a Buffer would become a binary attachment.
  io.to(topic).emit("event", body.toString("utf8"));
  res.writeHead(204).end();
});

const io = new Server(server, {
  serveClient: false,
  perMessageDeflate: false,
  httpCompression: false,
});

io.on("connection", (socket) => {
  socket.on("join", (topic, ack) => {
    if (typeof topic !== "string" || topic === "") {
      console.error(`socketio-hub: ignored join from ${socket.id} with topic ${JSON.stringify(topic)}: expected a non-empty string`);
      return;
    }
    socket.join(topic);
    if (typeof ack === "function") {
      ack();
    }
  });
});

listen("socketio-hub", server, port);
exitOnSignal("socketio-hub");
