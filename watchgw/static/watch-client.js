// watchgw browser client: one EventSource per tab, any number of channel subscriptions.
//
//   const wc = new WatchClient({ baseUrl: "", basePath: "/api/watch" });
//   const off = wc.watch({ resourceType: "api/v1/secrets", projectId: "p" }, (objects, event) => render(objects));
//   off(); // unsubscribe
//
// It keeps each channel's objects (namespace/name -> object) by applying the events as
// PROTOCOL.md section 4 says. EventSource reconnects by itself and sends Last-Event-ID; when the
// gateway cannot resume ("resumed": false), every channel is subscribed again with the last
// resourceVersion it reached, so only what changed is sent.
//
// Behind a load balancer in front of several replicas, the stream and the subscribes must reach
// the same replica. When a subscribe is answered by another replica than the one named by the
// stream's "connected" (or "unknown_client" while the stream is up), or a stream is "resumed" by
// another replica than before, the client starts over: a new EventSource (no Last-Event-ID), which
// goes where the load balancer routes the client now, and every channel subscribed again. A
// subscribe or unsubscribe that fails on the way (network error, 502/503/504, 429 rate_limited)
// is sent again later; the channel stays wanted. An EventSource closed for good (an HTTP error
// while every replica was down) is opened again, with backoff.
(function (global) {
  "use strict";

  function objectKey(obj) {
    const meta = (obj && obj.metadata) || {};
    return meta.namespace ? meta.namespace + "/" + meta.name : meta.name;
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

  class WatchClient {
    constructor(options) {
      const opts = options || {};
      this.baseUrl = opts.baseUrl || "";
      this.basePath = opts.basePath || "/api/watch";
      this.clientId = opts.clientId || randomId();
      this.keySegments = opts.keySegments || 8;
      this.channels = new Map(); // key -> {fields, objects: Map, synced, rv, listeners: Set}
      this.pending = new Set(); // channel keys asked for while the stream was not connected
      this.unwanted = new Set(); // channels given up whose unsubscribe did not get through
      this.connected = false;
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
      this.onstatus({ state: "reconnecting", replica: this.replica });
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
        this.onstatus({ state: "connected", resumed: d.resumed, replica: d.replica });
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
      });
      on("subscribed", () => {});
      on("watch", (d) => {
        const ch = this.channels.get(d.channel);
        if (!ch) return;
        if (d.type === "ADDED" || d.type === "MODIFIED") ch.objects.set(objectKey(d.object), d.object);
        else if (d.type === "DELETED") ch.objects.delete(objectKey(d.object));
        // Only a complete state (after "synced") has a version to resume from.
        if (ch.synced) ch.rv = d.resourceVersion;
        if (ch.synced && d.type !== "BOOKMARK") this._emit(ch, d);
      });
      on("synced", (d) => {
        const ch = this.channels.get(d.channel);
        if (!ch) return;
        ch.synced = true;
        ch.rv = d.resourceVersion;
        this._emit(ch, d);
      });
      on("resync", (d) => {
        const ch = this.channels.get(d.channel);
        if (!ch) return;
        ch.objects.clear();
        ch.synced = false;
        ch.rv = "";
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
        this.onstatus({ state: "reconnecting" });
      });
      source.onerror = () => {
        this.connected = false;
        this.onstatus({ state: "disconnected" });
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
      for (const fn of ch.listeners) fn(ch.objects, data, kind || "change");
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

    // Subscribe to a channel; listener(objects, event, kind) runs after every change once synced.
    // Returns a function that unsubscribes.
    watch(fields, listener) {
      const key = channelKey(fields, this.keySegments);
      const existing = this.channels.get(key);
      if (existing) {
        existing.listeners.add(listener);
        if (existing.synced) listener(existing.objects, { channel: key }, "change");
      } else {
        const ch = { fields, objects: new Map(), synced: false, rv: "", listeners: new Set([listener]) };
        this.channels.set(key, ch);
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
    }
  }

  global.WatchClient = WatchClient;
})(typeof window !== "undefined" ? window : globalThis);
