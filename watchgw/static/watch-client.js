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
      this.connected = false;
      this.onstatus = opts.onstatus || function () {};
      this.source = null;
      this._open();
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
      on("connected", (d) => {
        this.connected = true;
        this.onstatus({ state: "connected", resumed: d.resumed });
        // A resumed session still holds its subscriptions; otherwise subscribe again, from the
        // last resourceVersion reached. Channels asked for while disconnected start fresh.
        for (const [key, ch] of this.channels) {
          const fresh = this.pending.has(key);
          if (fresh || !d.resumed) this._start(key, ch, !fresh);
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
      on("reconnect", () => this.onstatus({ state: "reconnecting" }));
      source.onerror = () => {
        this.connected = false;
        this.onstatus({ state: "disconnected" });
      };
    }

    _start(key, ch, resume) {
      this._subscribe(key, ch, resume).catch((err) => this._emit(ch, { channel: key, message: String(err) }, "error"));
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
      const res = await fetch(this._url("subscribe"), {
        method: "POST",
        credentials: "include",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify(body),
      });
      const answer = await res.json();
      if (!res.ok) throw new Error(answer.error ? answer.error.code + ": " + answer.error.message : res.statusText);
      return answer.channel;
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
      return fetch(this._url("unsubscribe"), {
        method: "POST",
        credentials: "include",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ clientId: this.clientId, channel: key }),
      });
    }

    close() {
      if (this.source) this.source.close();
    }
  }

  global.WatchClient = WatchClient;
})(typeof window !== "undefined" ? window : globalThis);
