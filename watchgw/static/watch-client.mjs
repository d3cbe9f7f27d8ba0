// The browser client as an ES module: import { WatchClient } from "/watch-client.mjs".
// The implementation is watch-client.js (one copy for the classic script, this module and the
// SharedWorker); imported here for its effect, it defines globalThis.WatchClient. Types:
// watch-client.d.ts (watch-client.d.mts for this file's name).
import "./watch-client.js";

const WatchClient = globalThis.WatchClient;
// The shared worker runs watch-client.js, which lies beside this file. A bundler that copies
// this module elsewhere leaves no file there: pass { workerUrl } (without one the worker cannot
// start, and each page keeps a stream of its own).
WatchClient.workerUrl = new URL("./watch-client.js", import.meta.url).href;

export { WatchClient };
