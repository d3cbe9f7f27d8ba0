// watchgw browser client: one EventSource for all tabs of an origin, any number of channels.
//
//   <script src="/watch-client.js"></script>     or: import { WatchClient } from "/watch-client.mjs";
//   const wc = new WatchClient({ baseUrl: "", basePath: "/api/watch" });
//   const secrets = { resourceType: "api/v1/secrets", projectId: "p" };
//   const off = wc.watch(secrets, (objects, event, kind) => render(objects));
//   off(); // unsubscribe
//   const found = await wc.waitFor(secrets, (objects) => objects.has("default/a"), { timeout: 5000 });
//   wc.onstatus = (status) => show(status); // stream and channel states, also at wc.status
//
// The whole API, with types, is watch-client.d.ts. This one file has three parts:
//
// - Stream: the protocol (PROTOCOL.md sections 3-4). It owns the EventSource and keeps each
//   channel's objects (namespace/name -> object) by applying the events. EventSource reconnects by
//   itself and sends Last-Event-ID; when the gateway cannot resume ("resumed": false), every
//   channel is subscribed again with the last resourceVersion it reached, so only what changed is
//   sent. Behind a load balancer in front of several replicas, the stream and the subscribes must
//   reach the same replica. When a subscribe is answered by another replica than the one named by
//   the stream's "connected" (or "unknown_client" while the stream is up), or a stream is
//   "resumed" by another replica than before, it starts over: a new EventSource (no
//   Last-Event-ID), which goes where the load balancer routes the client now, and every channel
//   subscribed again. A subscribe or unsubscribe that fails on the way (network error,
//   502/503/504, 429 rate_limited) is sent again later; the channel stays wanted. An EventSource
//   closed for good (an HTTP error while every replica was down) is opened again, with backoff.
//
// - Host: serves one Stream to pages over MessagePorts: "watch"/"unwatch" from the pages,
//   snapshots, events and states to them. A channel watched by several pages is subscribed once
//   (a Stream channel has any number of listeners).
//
// - WatchClient: the page's side. A browser opens at most 6 HTTP/1.1 connections per origin, so
//   seven tabs with a stream each leave the seventh hanging. By default the Host runs in a
//   SharedWorker started from this same file, and every tab of the origin shares its one stream.
//   Without SharedWorker, with { shared: false }, or when the worker cannot start, the Host runs
//   in the page itself: the same code, one stream per tab, the same API.
(function (global) {
  "use strict";

  function objectKey(obj) {
    const meta = (obj && obj.metadata) || {};
    return meta.namespace ? meta.namespace + "/" + meta.name : meta.name;
  }

  function applyEvent(objects, d) {
    if (d.type === "ADDED" || d.type === "MODIFIED") objects.set(objectKey(d.object), d.object);
    else if (d.type === "DELETED") objects.delete(objectKey(d.object));
  }

  // The channel key exactly as the gateway forms it (PROTOCOL.md section 2), so a channel can be
  // registered before the subscribe answer arrives: its first frames may come before that answer.
  // Eight segments (the last "user" for a user-scoped channel), or seven for a gateway configured
  // with the original document's keys (keySegments: 7).
  const KEY_FIELDS = ["orgId", "projectId", "namespace", "name", "labelSelector", "fieldSelector"];
  function channelKey(fields, segments) {
    const esc = (v) => String(v || "").replace(/%/g, "%25").replace(/:/g, "%3A");
    const parts = [fields.resourceType].concat(KEY_FIELDS.map((f) => esc(fields[f])));
    if (segments !== 7) parts.push(fields.userScoped ? "user" : "");
    return parts.join(":");
  }

  function failure(message, code, transient) {
    const err = new Error(message);
    err.code = code;
    err.transient = transient;
    return err;
  }

  // Worth sending again: what a load balancer answers while a replica dies or drains, watchgw's
  // own 503s (draining, authorization undecidable) and its rate limit.
  function isTransient(status, code) {
    return status === 502 || status === 503 || status === 504 || code === "rate_limited";
  }

  function randomId() {
    if (global.crypto && global.crypto.randomUUID) return global.crypto.randomUUID();
    return "c" + Math.random().toString(36).slice(2) + Date.now().toString(36);
  }

  // ------------------------------------------------------------------------------------ Stream
  // Listeners get (objects, data, kind): kind "change" after "synced" (data: the synced event, or
  // {channel} for a listener joining a synced channel) and after every watch event once synced
  // (data: that event); "state" when the channel's state changes (data: {channel, state}) and
  // once when the listener joins; "watch-error", "unsubscribed" and "error" with their data.
  class Stream {
    constructor(options) {
      const opts = options || {};
      this.baseUrl = opts.baseUrl || "";
      this.basePath = opts.basePath || "/api/watch";
      this.clientId = opts.clientId || randomId();
      this.keySegments = opts.keySegments || 8;
      this.channels = new Map(); // key -> {fields, objects: Map, synced, rv, state, listeners: Set}
      this.pending = new Set(); // channel keys asked for while the stream was not connected
      this.unwanted = new Set(); // channels given up whose unsubscribe did not get through
      this.connected = false;
      this.state = "connecting"; // connecting, connected, reconnecting, closed
      this.resumed = false;
      this.replica = null; // the replica serving the stream, from "connected"
      this.onstatus = opts.onstatus || function () {};
      this.source = null;
      this.retryMs = 2000;
      this.streak = 0; // trouble in a row (reopened streams, failed requests): the backoff grows
      this.timer = null;
      this.closed = false;
      this.restarting = false; // a start-over is under way: one at a time
      this.generation = 0; // streams connected so far (each "connected", each start-over)
      this.queues = new Map(); // channel key -> the promise of its last request (one at a time)
      this._open();
    }

    status() {
      return { state: this.state, resumed: this.resumed, replica: this.replica, clientId: this.clientId };
    }

    _setState(state, resumed) {
      const changed = state !== this.state || resumed !== this.resumed;
      this.state = state;
      this.resumed = resumed;
      if (changed) this.onstatus(this.status());
      for (const [key, ch] of this.channels) this._refresh(key, ch);
    }

    // A channel is "reconnecting" while the stream is down or its subscribe waits to be sent
    // again, "resyncing" until its (first or fresh) snapshot is complete, "connected" after.
    _channelState(ch) {
      if (!this.connected || ch.retry) return "reconnecting";
      return ch.synced && !ch.starting ? "connected" : "resyncing";
    }

    _refresh(key, ch) {
      const state = this._channelState(ch);
      if (state !== ch.state) {
        ch.state = state;
        this._emit(ch, { channel: key, state }, "state");
      }
    }

    _delay() {
      // Jittered exponential backoff from the server's retry, at most 5 s, so the clients of a
      // dead replica do not all come back in the same instant.
      const base = Math.max(this.retryMs, 100) * Math.pow(2, Math.min(this.streak, 10));
      return Math.min(5000, base) * (0.5 + Math.random() / 2);
    }

    _later(fn, delay) {
      if (this.timer !== null || this.closed) return;
      this.timer = setTimeout(() => {
        this.timer = null;
        fn();
      }, delay);
    }

    // Start over: a new EventSource sends no Last-Event-ID, so the replica the load balancer
    // picks now opens a fresh session, and "connected" (resumed: false) subscribes every channel
    // again from its last resourceVersion.
    _startOver() {
      if (this.closed) return;
      if (this.source) this.source.close();
      this.connected = false;
      this.generation++;
      this._setState("reconnecting", false);
      const delay = this.streak === 0 ? 0 : this._delay();
      this.streak++;
      if (this.timer !== null) {
        clearTimeout(this.timer);
        this.timer = null;
      }
      this._later(() => this._open(), delay);
    }

    _misrouted() {
      if (!this.restarting) {
        this.restarting = true;
        this._startOver();
      }
    }

    // Every request carries ?cid=: a load balancer in front of replicas hashes on it, so
    // subscribe and unsubscribe reach the replica that holds this client's stream.
    _url(path) {
      return this.baseUrl + this.basePath + "/" + path + "?cid=" + encodeURIComponent(this.clientId);
    }

    _open() {
      const source = new EventSource(this._url("stream"),
        { withCredentials: true });
      this.source = source;
      const on = (name, fn) => source.addEventListener(name, (e) => fn(JSON.parse(e.data)));
      source.addEventListener("open", () => {
        this.restarting = false;
      });
      on("connected", (d) => {
        this.generation++;
        if (d.resumed && d.replica && this.replica && d.replica !== this.replica) {
          // Another replica "resumed" a session of its own: what it replays says nothing about
          // what this page holds. Start over.
          this._startOver();
          return;
        }
        this.restarting = false;
        this.connected = true;
        if (d.replica) this.replica = d.replica;
        if (!d.resumed) this.unwanted.clear(); // a fresh session holds nothing
        // Unsubscribes that did not get through first (a channel wanted again is subscribed
        // after its unsubscribe, see _serial).
        for (const key of this.unwanted) this._unsubscribe(key);
        // A resumed session still holds its subscriptions; otherwise subscribe again, from the
        // last resourceVersion reached. Channels asked for while disconnected start fresh.
        for (const [key, ch] of this.channels) {
          const fresh = this.pending.has(key);
          if (fresh || !d.resumed || ch.retry) this._start(key, ch, !fresh);
        }
        this.pending.clear();
        this._setState("connected", Boolean(d.resumed));
      });
      on("subscribed", () => {});
      on("watch", (d) => {
        const ch = this.channels.get(d.channel);
        if (!ch) return;
        applyEvent(ch.objects, d);
        // Only a complete state (after "synced") has a version to resume from.
        if (ch.synced) ch.rv = d.resourceVersion;
        if (ch.synced && d.type !== "BOOKMARK") this._emit(ch, d, "change");
      });
      on("synced", (d) => {
        const ch = this.channels.get(d.channel);
        if (!ch) return;
        ch.synced = true;
        ch.starting = false;
        ch.rv = d.resourceVersion;
        this._emit(ch, d, "change");
        this._refresh(d.channel, ch);
      });
      on("resync", (d) => {
        const ch = this.channels.get(d.channel);
        if (!ch) return;
        ch.objects.clear();
        ch.synced = false;
        ch.rv = "";
        this._refresh(d.channel, ch);
      });
      on("watch-error", (d) => {
        const ch = this.channels.get(d.channel);
        if (ch) this._emit(ch, d, "watch-error");
      });
      on("unsubscribed", (d) => {
        const ch = this.channels.get(d.channel);
        if (ch && d.reason !== "client") this._emit(ch, d, "unsubscribed");
      });
      on("reconnect", (d) => {
        if (d.retryMs) this.retryMs = d.retryMs;
        this._setState("reconnecting", false);
      });
      source.onerror = () => {
        this.connected = false;
        // EventSource tries again by itself; a stream closed for good is opened again below.
        this._setState("reconnecting", false);
        if (source.readyState === EventSource.CLOSED && this.source === source) {
          // An HTTP error (e.g. 502 while no replica answered) closes an EventSource for good.
          this.streak++;
          this._later(() => this._open(), this._delay());
        }
      };
    }

    // A channel's requests go one at a time, in the order asked: an unsubscribe and a subscribe
    // of one channel in flight together could reach the server in either order (two
    // connections through a load balancer), leaving the list subscribed to nothing.
    _serial(key, fn) {
      const previous = this.queues.get(key) || Promise.resolve();
      const result = previous.then(fn);
      const done = result.then(() => {}, () => {});
      this.queues.set(key, done);
      done.then(() => {
        if (this.queues.get(key) === done) this.queues.delete(key);
      });
      return result;
    }

    _start(key, ch, resume) {
      ch.retry = false;
      ch.starting = true; // until its "synced": what it holds is not this subscription's yet
      this._refresh(key, ch);
      // Given up earlier without the server hearing of it: undo that first, or the server, still
      // holding the channel, would answer this subscribe with nothing new.
      if (this.unwanted.has(key)) this._unsubscribe(key);
      // An answer about another stream than the current one (sent before a reconnect) says
      // nothing about where the current stream's requests go: "connected" subscribes again.
      const generation = this.generation;
      const replica = this.replica;
      this._serial(key, () => (this.channels.get(key) === ch ? this._subscribe(key, ch, resume) : null))
        .then((answer) => {
          if (!answer || generation !== this.generation) return;
          if (answer.replica && replica && answer.replica !== replica) this._misrouted();
          else this.streak = 0;
        })
        .catch((err) => {
          if (this.channels.get(key) !== ch || generation !== this.generation) return;
          if (err.transient) {
            // The replica died or drains: the channel stays wanted. If the stream broke too,
            // "connected" subscribes it again; if not, send it again after a pause.
            ch.retry = true;
            this._refresh(key, ch);
            this.streak++;
            setTimeout(() => {
              if (this.channels.get(key) === ch && ch.retry && this.connected) this._start(key, ch, true);
            }, this._delay());
          } else if (err.code === "unknown_client" && this.connected) {
            ch.retry = true; // no session where the request went: start over there
            this._misrouted();
          } else {
            this._emit(ch, { channel: key, message: String(err.message || err) }, "error");
          }
        });
    }

    _emit(ch, data, kind) {
      for (const fn of ch.listeners) fn(ch.objects, data, kind);
    }

    async _subscribe(key, ch, resume) {
      const body = Object.assign({ clientId: this.clientId }, ch.fields);
      if (resume && ch.rv) body.resourceVersion = ch.rv;
      else {
        ch.objects.clear();
        ch.rv = "";
      }
      ch.synced = false;
      let res;
      try {
        res = await fetch(this._url("subscribe"), {
          method: "POST",
          credentials: "include",
          headers: { "Content-Type": "application/json" },
          body: JSON.stringify(body),
        });
      } catch (err) {
        throw failure(err.message || String(err), "network_error", true);
      }
      let answer = null;
      try {
        answer = await res.json();
      } catch (err) {
        answer = null; // a load balancer's HTML error page
      }
      if (!res.ok) {
        const code = answer && answer.error ? answer.error.code : "http_" + res.status;
        const message = answer && answer.error ? answer.error.code + ": " + answer.error.message : res.statusText;
        throw failure(message, code, isTransient(res.status, code));
      }
      return { channel: answer.channel, replica: answer.replica };
    }

    // Subscribe to a channel (listeners: see above). Returns a function that unsubscribes.
    watch(fields, listener) {
      const key = channelKey(fields, this.keySegments);
      const existing = this.channels.get(key);
      if (existing) {
        existing.listeners.add(listener);
        listener(existing.objects, { channel: key, state: existing.state }, "state");
        if (existing.synced) listener(existing.objects, { channel: key }, "change");
      } else {
        const ch = { fields, objects: new Map(), synced: false, rv: "", listeners: new Set([listener]) };
        ch.state = this._channelState(ch);
        this.channels.set(key, ch);
        listener(ch.objects, { channel: key, state: ch.state }, "state");
        if (this.connected) this._start(key, ch, false);
        else this.pending.add(key);
      }
      return () => {
        const ch = this.channels.get(key);
        if (!ch) return;
        ch.listeners.delete(listener);
        if (ch.listeners.size === 0) {
          this.channels.delete(key);
          this._unsubscribe(key);
        }
      };
    }

    _unsubscribe(key) {
      this.unwanted.add(key);
      // Sent even when the channel is wanted again meanwhile: that subscribe comes after it and
      // needs the server to have let go of the channel to answer with a snapshot.
      return this._serial(key, () => fetch(this._url("unsubscribe"), {
        method: "POST",
        credentials: "include",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ clientId: this.clientId, channel: key }),
      })).then(
        (res) => {
          // 404: not held, or no session there: gone either way. Anything transient: the next
          // "connected" sends it again (a fresh session holds nothing, so it is dropped there).
          if (res.ok || res.status === 404 || !isTransient(res.status, "")) this.unwanted.delete(key);
        },
        () => {},
      );
    }

    close() {
      this.closed = true;
      if (this.timer !== null) clearTimeout(this.timer);
      if (this.source) this.source.close();
      this.connected = false;
      this._setState("closed", false);
    }
  }

  // -------------------------------------------------------------------------------------- Host
  // Pages -> Host: arrays of {t: "watch", id, fields}, {t: "unwatch", id}, {t: "pong"},
  // {t: "bye"}: all a page asked in one turn, handled in one turn, as a Stream in the page would
  // (a watch undone in the same turn is never subscribed; see Stream._start).
  // Host -> pages: {t: "status", status} (first, and when the stream's state changes),
  // {t: "objects", id, objects: [...], event} (the whole list: after "synced", and to a watch
  // joining a synced channel), {t: "event", id, event, kind} (everything else: the page applies
  // a "change" to its copy of the list), {t: "ping"}.
  //
  // A page says "bye" on pagehide. One that crashed or froze says nothing: MessagePort has no
  // close event, so the Host pings every page and releases one that answered none of 3 pings.
  // The Host pings rather than the pages beating because a hidden page's timers are throttled
  // (to once a minute after 5 minutes in Chrome), while its messages are answered at once.
  const PING_MS = 5000;
  const MISSED_PINGS = 3;

  class Host {
    constructor(stream, pingMs) {
      this.stream = stream;
      this.tabs = new Map(); // MessagePort -> {watches: Map(id -> unwatch), missed}
      stream.onstatus = (status) => {
        for (const port of this.tabs.keys()) port.postMessage({ t: "status", status });
      };
      if (pingMs) setInterval(() => this._ping(), pingMs);
    }

    adopt(port) {
      this.tabs.set(port, { watches: new Map(), missed: 0 });
      port.onmessage = (e) => {
        for (const m of e.data) this._receive(port, m);
      };
      port.postMessage({ t: "status", status: this.stream.status() });
    }

    _receive(port, m) {
      const tab = this.tabs.get(port);
      if (!tab) return; // released: a page that is still there attaches again (WatchClient._check)
      tab.missed = 0;
      if (m.t === "watch") {
        const forward = (objects, data, kind) => this._forward(port, m.id, objects, data, kind);
        tab.watches.set(m.id, this.stream.watch(m.fields, forward));
      } else if (m.t === "unwatch") {
        const unwatch = tab.watches.get(m.id);
        tab.watches.delete(m.id);
        if (unwatch) unwatch();
      } else if (m.t === "bye") {
        this._release(port);
      }
    }

    _forward(port, id, objects, data, kind) {
      if (kind === "change" && !data.type) {
        port.postMessage({ t: "objects", id, objects: Array.from(objects.values()), event: data });
      } else {
        port.postMessage({ t: "event", id, event: data, kind });
      }
    }

    _release(port) {
      const tab = this.tabs.get(port);
      if (!tab) return;
      this.tabs.delete(port);
      for (const unwatch of tab.watches.values()) unwatch();
      port.close();
    }

    _ping() {
      for (const [port, tab] of this.tabs) {
        if (tab.missed >= MISSED_PINGS) this._release(port);
        else {
          tab.missed++;
          port.postMessage({ t: "ping" });
        }
      }
    }
  }

  // ------------------------------------------------------------------------------- WatchClient
  // A SharedWorker is one per origin, script URL and name: the name carries the protocol version
  // of this file and the stream's settings, so pages with other settings (or an older copy of
  // this file, kept alive by an old tab) get a worker of their own.
  const WORKER_NAME = "watchgw-client/1 ";

  class WatchClient {
    constructor(options) {
      const opts = options || {};
      this.keySegments = opts.keySegments || 8;
      // The worker resolves URLs against its own location, not the page's: give it absolute ones.
      const page = global.location ? global.location.href : "";
      let baseUrl = opts.baseUrl || "";
      if (page && baseUrl) baseUrl = new URL(baseUrl, page).href.replace(/\/$/, "");
      else if (page) baseUrl = global.location.origin;
      this.settings = { baseUrl, basePath: opts.basePath || "/api/watch", keySegments: this.keySegments };
      if (opts.clientId) this.settings.clientId = opts.clientId;
      this.onstatus = opts.onstatus || function () {};
      this.watches = new Map(); // id -> {id, key, fields, listener, objects, state, lastEventAt}
      this.nextId = 0;
      this.outbox = []; // messages to the Host, sent together at the end of the turn (_post)
      this.stream = { state: "connecting", resumed: false, replica: null, clientId: opts.clientId || null };
      this.port = null;
      this.local = null; // the Host in this page, when there is no shared one
      this.closed = false;
      this.workerUrl = opts.workerUrl ? String(opts.workerUrl) : WatchClient.workerUrl;
      this.shared = opts.shared !== false && typeof SharedWorker === "function" && Boolean(this.workerUrl);
      this.watchdog = null;
      if (this.shared && global.addEventListener) {
        // Leaving (closing the tab, navigating): the worker releases this page's watches now.
        // Back from the back/forward cache: attach again.
        this._onpagehide = () => this._bye();
        this._onpageshow = (e) => {
          if (e.persisted) this._attach();
        };
        global.addEventListener("pagehide", this._onpagehide);
        global.addEventListener("pageshow", this._onpageshow);
        this.watchdog = setInterval(() => this._check(), PING_MS);
      }
      this._attach();
    }

    get connected() {
      return this.stream.state === "connected";
    }

    get replica() {
      return this.stream.replica;
    }

    get clientId() {
      return this.stream.clientId;
    }

    // Watches registered now (each watch() and each waitFor() in progress).
    get listenerCount() {
      return this.watches.size;
    }

    get status() {
      const channels = {};
      let last = null;
      for (const w of this.watches.values()) {
        const seen = channels[w.key];
        const at = seen && seen.lastEventAt > w.lastEventAt ? seen.lastEventAt : w.lastEventAt;
        channels[w.key] = { state: w.state, lastEventAt: at };
        if (at !== null && (last === null || at > last)) last = at;
      }
      const s = this.stream;
      return {
        state: s.state, resumed: s.resumed, replica: s.replica, clientId: s.clientId,
        shared: this.shared, lastEventAt: last, channels,
      };
    }

    _attach() {
      if (this.closed) return;
      this._bye();
      this.heard = Date.now();
      this.greeted = false; // nothing heard from this port yet
      let port = this.shared ? this._sharedPort() : null;
      if (!port) {
        this.shared = false;
        port = this._localPort();
      }
      this.port = port;
      port.onmessage = (e) => {
        if (port === this.port) this._receive(e.data);
      };
      for (const w of this.watches.values()) this._post({ t: "watch", id: w.id, fields: w.fields });
    }

    _post(m) {
      this.outbox.push(m);
      if (this.outbox.length === 1) queueMicrotask(() => this._flush());
    }

    _flush() {
      const messages = this.outbox;
      this.outbox = [];
      if (messages.length && this.port) this.port.postMessage(messages);
    }

    _sharedPort() {
      let worker;
      try {
        worker = new SharedWorker(this.workerUrl, { name: WORKER_NAME + JSON.stringify(this.settings) });
      } catch (err) {
        return null; // e.g. a URL of another origin, a Content-Security-Policy
      }
      // The script could not be loaded or run (404, not JavaScript): this page's own stream.
      worker.onerror = () => {
        if (this.port === worker.port && !this.greeted) this._fallBack();
      };
      return worker.port;
    }

    _localPort() {
      if (!this.local) this.local = new Host(new Stream(this.settings), 0);
      const channel = new MessageChannel();
      this.local.adopt(channel.port2);
      return channel.port1;
    }

    _fallBack() {
      this.shared = false;
      clearInterval(this.watchdog);
      this._attach();
      this._notify();
    }

    _bye() {
      if (!this.port) return;
      this._post({ t: "bye" });
      this._flush(); // now: the page may be going away
      this.port.close();
      this.port = null;
    }

    // Nothing from the worker for 3 pings: it released this page (frozen meanwhile) or ended.
    // Attach again (a new worker starts if there is none); a worker that never answered at all
    // is not going to: this page's own stream.
    _check() {
      if (!this.shared || Date.now() - this.heard < MISSED_PINGS * PING_MS) return;
      if (this.greeted) this._attach();
      else this._fallBack();
    }

    _receive(m) {
      this.heard = Date.now();
      this.greeted = true;
      if (m.t === "ping") {
        this._post({ t: "pong" });
        return;
      }
      if (m.t === "unsupported") {
        this._fallBack(); // a worker without EventSource
        return;
      }
      if (m.t === "status") {
        this.stream = m.status;
        this._notify();
        return;
      }
      const w = this.watches.get(m.id);
      if (!w) return; // unwatched meanwhile
      let kind = m.kind;
      if (m.t === "objects") {
        w.objects.clear();
        for (const obj of m.objects) w.objects.set(objectKey(obj), obj);
        kind = "change";
      } else if (kind === "state") {
        w.state = m.event.state;
        this._notify();
        return;
      } else if (kind === "change") {
        applyEvent(w.objects, m.event);
      }
      w.lastEventAt = Date.now();
      w.listener(w.objects, m.event, kind);
    }

    _notify() {
      if (!this.closed) this.onstatus(this.status);
    }

    // Watch a channel: listener(objects, event, kind) runs after every change once synced (kind
    // "change"), and on "watch-error", "unsubscribed" and "error". Returns a function that
    // unwatches; the channel is unsubscribed when no page watches it any more.
    watch(fields, listener) {
      const id = ++this.nextId;
      const key = channelKey(fields, this.keySegments);
      const state = this.connected ? "resyncing" : "reconnecting";
      this.watches.set(id, { id, key, fields, listener, objects: new Map(), state, lastEventAt: null });
      this._post({ t: "watch", id, fields });
      return () => {
        if (this.watches.delete(id)) this._post({ t: "unwatch", id });
      };
    }

    // Resolve with the channel's objects once predicate(objects, event) holds (checked after
    // every change once synced), like the Python client's wait_for. Rejects with a TimeoutError
    // after `timeout` ms (5000; Infinity: none), with the signal's reason when `signal` aborts,
    // and with the error when the channel fails for good ("error", "unsubscribed"). In every
    // case its watch, timer and abort listener are gone when the promise settles.
    waitFor(fields, predicate, options) {
      const opts = options || {};
      const timeout = opts.timeout === undefined ? 5000 : opts.timeout;
      const signal = opts.signal;
      return new Promise((resolve, reject) => {
        let unwatch = null;
        let timer = null;
        let settled = false;
        const settle = (fn, value) => {
          if (settled) return;
          settled = true;
          clearTimeout(timer);
          if (signal) signal.removeEventListener("abort", aborted);
          if (unwatch) unwatch();
          fn(value);
        };
        const why = () =>
          (signal.reason !== undefined ? signal.reason : new DOMException("aborted", "AbortError"));
        const aborted = () => settle(reject, why());
        if (signal && signal.aborted) {
          reject(why());
          return;
        }
        if (signal) signal.addEventListener("abort", aborted);
        // Infinity: no timeout (setTimeout would take it for 0).
        if (timeout !== Infinity) {
          timer = setTimeout(() => {
            settle(reject, new DOMException("waitFor: no match within " + timeout + " ms", "TimeoutError"));
          }, timeout);
        }
        unwatch = this.watch(fields, (objects, event, kind) => {
          try {
            if (kind === "change" && predicate(objects, event)) settle(resolve, new Map(objects));
            else if (kind === "error") settle(reject, failure(event.message, "error", false));
            else if (kind === "unsubscribed") {
              settle(reject, failure("unsubscribed: " + event.reason, event.reason, false));
            }
          } catch (err) {
            settle(reject, err); // the predicate threw
          }
        });
      });
    }

    close() {
      if (this.closed) return;
      this._bye();
      this.closed = true;
      clearInterval(this.watchdog);
      if (this._onpagehide) {
        global.removeEventListener("pagehide", this._onpagehide);
        global.removeEventListener("pageshow", this._onpageshow);
      }
      if (this.local) this.local.stream.close();
      this.watches.clear();
      this.stream = Object.assign({}, this.stream, { state: "closed" });
    }
  }

  WatchClient.channelKey = channelKey;
  WatchClient.objectKey = objectKey;
  // The worker runs this same file: its URL is this script's (watch-client.mjs sets it from its
  // own URL; `workerUrl` overrides it, e.g. for a bundled copy).
  WatchClient.workerUrl = global.document && global.document.currentScript
    ? global.document.currentScript.src : null;
  global.WatchClient = WatchClient;

  // Started as the SharedWorker: serve the pages that connect, over one Stream.
  if (typeof SharedWorkerGlobalScope === "function" && global instanceof SharedWorkerGlobalScope &&
      global.name.startsWith(WORKER_NAME)) {
    let host = null;
    global.onconnect = (e) => {
      const port = e.ports[0];
      if (typeof EventSource !== "function") {
        port.postMessage({ t: "unsupported" }); // the page falls back to its own stream
        return;
      }
      if (!host) host = new Host(new Stream(JSON.parse(global.name.slice(WORKER_NAME.length))), PING_MS);
      host.adopt(port);
    };
  }
})(typeof window !== "undefined" ? window : globalThis);
