// An Express API with the bypass corpus's routes, routed by Express itself (its defaults:
// case-insensitive, non-strict, percent-decoded; GET handlers answer HEAD). It counts what it
// served at GET /__served. Run with NODE_PATH pointing at packages/node_modules; prints
// "listening http://127.0.0.1:<port>".
const express = require("express");

const app = express();
let served = 0;
const serve = (_req, res) => {
  served += 1;
  res.send("served");
};
app.post("/v1/chat", serve);
app.get("/v1/report", serve);
app.get("/v1/models/:id", serve);
app.post("/v1/files/:name", serve);
app.get("/:tenant/report", serve);
app.get("/__served", (_req, res) => res.json({ served }));
const server = app.listen(0, "127.0.0.1", () => {
  console.log(`listening http://127.0.0.1:${server.address().port}`);
});
